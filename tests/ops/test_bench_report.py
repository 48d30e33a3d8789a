"""`make bench`'s report: the figures it prints, and a regression against the stored baseline flagged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("herald_bench_script", ROOT / "scripts" / "bench.py")
bench = sys.modules["herald_bench_script"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def result(throughput: float, p99: float, cpu: float) -> dict:
    latency = [{"events_per_s": 50.0, "fraction_of_capacity": 0.25, "p50_ms": 40.0, "p95_ms": 60.0, "p99_ms": p99, "max_ms": p99 + 5, "hops_mean_ms": {"queue/email": 12.5}}]
    return {
        "machine": {"date": "2026-12-04"},
        "herald": {
            "notifications_per_s": throughput, "runs": [throughput], "cpu_ms_per_notification": {"email": cpu, "broker": 0.5},
            "latency": latency, "peak_rss_mb": {"email": 120.0}, "idle_cpu_percent": {"broker": 20.0},
        },
        "broadcast": {"users": 1000, "decided_s": 1.0, "inapp_stored_s": 2.0, "email_sent_by_then": 10},
    }


def test_a_figure_more_than_a_fifth_worse_than_the_baseline_is_flagged_and_a_better_one_is_not():
    baseline = result(1000.0, 100.0, 1.0)
    worse = "\n".join(bench.report(result(700.0, 100.0, 1.0), baseline))
    assert "herald notifications/s: 700.00 (baseline 1,000.00, -30%)  <- worse" in worse
    assert "p99 ms at 25% of capacity: 100.00 (baseline 100.00, +0%)\n" in worse + "\n"
    slower = "\n".join(bench.report(result(1000.0, 130.0, 1.0), baseline))
    assert "p99 ms at 25% of capacity: 130.00 (baseline 100.00, +30%)  <- worse" in slower
    better = "\n".join(bench.report(result(1300.0, 70.0, 0.5), baseline))
    assert "<- worse" not in better
    heavier = "\n".join(bench.report(result(1000.0, 100.0, 1.5), baseline))
    assert "herald CPU ms/notification: 2.00 (baseline 1.50, +33%)  <- worse" in heavier


def test_the_report_shows_every_figure_the_run_measured():
    text = "\n".join(bench.report(result(812.0, 90.0, 1.25), None))
    assert "Herald: 812 notifications/s" in text
    assert "email 1.25, broker 0.50; all 1.75" in text
    assert "latency at 50 events/s: p50 40 ms, p95 60, p99 90, max 95" in text
    assert "queue/email 12.5" in text
    assert "peak RSS MB: email 120" in text
    assert "broadcast to 1,000: decided in 1.0 s, in-app stored in 2.0 s" in text


def test_the_stored_baseline_is_a_result_the_report_reads():
    baseline = json.loads((ROOT / "docs" / "bench-baseline.json").read_text())
    lines = bench.report(baseline, baseline)
    assert any(line.startswith("Celery: ") for line in lines)
    assert sum("(baseline" in line for line in lines) >= 5
