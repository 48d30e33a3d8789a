"""`make audit`: fails only when the lock changed in the submission and a vulnerability has a fix; says when it could not look."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("herald_audit_script", ROOT / "scripts" / "audit.py")
audit = sys.modules["herald_audit_script"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)

VULNERABLE = {
    "dependencies": [
        {"name": "jinja2", "version": "3.1.0", "vulns": [{"id": "GHSA-1", "fix_versions": ["3.1.5"]}]},
        {"name": "somelib", "version": "1.0", "vulns": [{"id": "PYSEC-2", "fix_versions": []}]},
        {"name": "httpx", "version": "0.28.1", "vulns": []},
    ]
}


def test_a_fixable_vulnerability_fails_only_when_the_lock_changed():
    report = audit.read_report(VULNERABLE)
    assert (report.audited, len(report.findings)) == (3, 2)
    code, lines = audit.verdict(report, lock_changed=True)
    assert code == 1 and "jinja2 3.1.0: GHSA-1 (fixed in 3.1.5)" in "\n".join(lines) and "take the fixed versions" in lines[-1]
    code, lines = audit.verdict(report, lock_changed=False)
    assert code == 0 and "reported, not failed" in lines[-1]
    code, lines = audit.verdict(report, lock_changed=None)
    assert code == 0 and "reporting only" in lines[-1]


def test_a_vulnerability_without_a_fix_is_reported_not_failed():
    only = {"dependencies": [VULNERABLE["dependencies"][1]]}
    code, lines = audit.verdict(audit.read_report(only), lock_changed=True)
    assert code == 0 and "PYSEC-2 (no fix yet)" in lines[0]


def test_an_unreachable_service_is_said_and_passes():
    nothing = {"dependencies": [{"name": "jinja2", "skip_reason": "Dependency not found on PyPI and could not be audited"}] * 3}
    code, lines = audit.verdict(audit.read_report(nothing), lock_changed=True)
    assert code == 0 and lines == ["audit: the vulnerability service could not be reached: none of the 3 dependencies could be looked up (the vulnerability service answered nothing); nothing was checked"]


def test_the_lock_counts_as_changed_against_the_base_commit(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "requirements.lock").write_text("jinja2==3.1.0\n")
    git("add", ".")
    git("commit", "-qm", "base")
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "README").write_text("x")
    git("add", ".")
    git("commit", "-qm", "other")
    assert audit.lock_changed(base, cwd=tmp_path) is False
    (tmp_path / "requirements.lock").write_text("jinja2==3.1.5\n")
    git("commit", "-qam", "bump")
    assert audit.lock_changed(base, cwd=tmp_path) is True
    assert audit.lock_changed(None, cwd=tmp_path) is None
    monkeypatch.setenv("HERALD_AUDIT_BASE", base)
    assert audit.find_base(cwd=tmp_path) == base
    monkeypatch.delenv("HERALD_AUDIT_BASE")
    assert audit.find_base(cwd=tmp_path) is None  # no origin/main: no base
