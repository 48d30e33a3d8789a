import shutil
import subprocess
from pathlib import Path

import pytest

# promtool is a process of its own, on the real clock.
pytestmark = pytest.mark.real_clock

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run `make system-deps` (Debian package prometheus)"
    return subprocess.run([binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid():
    result = promtool("check", "rules", *sorted(str(p.relative_to(PROMETHEUS)) for p in (PROMETHEUS / "rules").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", *sorted(str(p.relative_to(PROMETHEUS)) for p in (PROMETHEUS / "tests").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_scrape_configurations_are_valid_and_load_the_rules(config):
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules/herald.yml" in result.stdout


def test_herald_run_points_the_shipped_configuration_at_the_stack(tmp_path):
    import yaml

    from herald.cli import prometheus_config

    targets = {name: f"127.0.0.1:{9200 + i}" for i, name in enumerate(["ingress", "router", "email", "sms", "push", "inapp"])}
    config = prometheus_config(targets, "127.0.0.1:9399")
    herald = next(job for job in config["scrape_configs"] if job["job_name"] == "herald")
    assert {s["labels"]["service"]: s["targets"] for s in herald["static_configs"]} == {k: [v] for k, v in targets.items()}
    assert all(Path(p).is_absolute() for p in config["rule_files"])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0 and "SUCCESS: 9 rules found" in result.stdout, result.stdout + result.stderr
