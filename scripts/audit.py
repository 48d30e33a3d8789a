"""`make audit`: known vulnerabilities in requirements.lock (pip-audit), failing only where it is fair to.

The run fails when the lock file changed in this submission and a dependency in it has a known
vulnerability with a fixed version (the change should have taken the fix). Otherwise it reports and
passes, so CI does not turn red on the day an advisory is published for an unchanged lock. When the
vulnerability service cannot be reached, it says so and passes.

"This submission" is what differs from the base: ``HERALD_AUDIT_BASE`` (a commit), else the merge base
with ``origin/main`` when HEAD is ahead of it. Without a base (a clean clone of main itself) it reports only.

    python scripts/audit.py [--pip-audit PATH] [--base COMMIT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = "requirements.lock"


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    vuln: str
    fixes: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    findings: list[Finding]
    audited: int
    skipped: int
    unreachable: str | None = None  # why the service could not be asked


def read_report(document: dict) -> Report:
    """pip-audit's JSON (``--format json``) as findings and counts."""
    findings, audited, skipped = [], 0, 0
    for dep in document.get("dependencies", []):
        if dep.get("skip_reason"):
            skipped += 1
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            findings.append(Finding(dep["name"], dep.get("version", "?"), vuln.get("id", "?"), tuple(vuln.get("fix_versions", []))))
    unreachable = None
    if audited == 0 and skipped:
        unreachable = f"none of the {skipped} dependencies could be looked up (the vulnerability service answered nothing)"
    return Report(findings, audited, skipped, unreachable)


def verdict(report: Report, *, lock_changed: bool | None) -> tuple[int, list[str]]:
    """The exit code and the lines to print."""
    lines: list[str] = []
    if report.unreachable:
        return 0, [f"audit: the vulnerability service could not be reached: {report.unreachable}; nothing was checked"]
    fixable = [f for f in report.findings if f.fixes]
    for f in report.findings:
        fix = f"fixed in {', '.join(f.fixes)}" if f.fixes else "no fix yet"
        lines.append(f"audit: {f.package} {f.version}: {f.vuln} ({fix})")
    summary = f"audit: {report.audited} dependencies checked, {len(report.findings)} known vulnerabilities, {len(fixable)} with a fix"
    if report.skipped:
        summary += f"; {report.skipped} could not be looked up"
    lines.append(summary)
    if lock_changed is None:
        lines.append("audit: no base to compare requirements.lock with (HERALD_AUDIT_BASE, origin/main): reporting only")
        return 0, lines
    if fixable and lock_changed:
        lines.append(f"audit: requirements.lock changed in this submission and {len(fixable)} vulnerabilities have a fix: take the fixed versions")
        return 1, lines
    if fixable:
        lines.append("audit: requirements.lock is unchanged in this submission: reported, not failed")
    return 0, lines


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def find_base(cwd: Path = ROOT) -> str | None:
    """The commit this submission is compared with, or None."""
    if os.environ.get("HERALD_AUDIT_BASE"):
        return os.environ["HERALD_AUDIT_BASE"]
    try:
        base = git("merge-base", "HEAD", "origin/main", cwd=cwd)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    return None if base == git("rev-parse", "HEAD", cwd=cwd) else base


def lock_changed(base: str | None, cwd: Path = ROOT) -> bool | None:
    if base is None:
        return None
    return subprocess.run(["git", "diff", "--quiet", base, "HEAD", "--", LOCK], cwd=cwd).returncode != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pip-audit", default=str(ROOT / ".venv-audit" / "bin" / "pip-audit"))
    parser.add_argument("--base", help="the commit to compare requirements.lock with (default: HERALD_AUDIT_BASE, origin/main)")
    args = parser.parse_args(argv)
    command = [args.pip_audit, "-r", str(ROOT / LOCK), "--disable-pip", "--no-deps", "--format", "json", "--progress-spinner", "off"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    try:
        report = read_report(json.loads(result.stdout))
    except json.JSONDecodeError:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        report = Report([], 0, 0, unreachable=last[:300])
    base = args.base or find_base()
    code, lines = verdict(report, lock_changed=lock_changed(base))
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
