"""pip-audit of the installed environment, wherever a vulnerability service answers
(docs/threats.md, "Storage, secrets, headers and dependencies").

pip-audit asks PyPI's per-release JSON (or OSV) about every installed release. On a machine that
reaches only a package index (as this project's build machines do: the index answers 404 for a
release's JSON and OSV does not resolve), it would report each release as "not found on PyPI"
and still exit 0; this test then skips, saying so, and test_advisories.py's vendored list is the
check that ran. With a service, `--strict` makes any skipped package a failure too.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

# A release with published advisories: a service that knows about it can audit.
PROBE = "https://pypi.org/pypi/starlette/0.39.0/json"


def _service_answers() -> str | None:
    """None when PyPI's vulnerability data answers, else why not."""
    try:
        r = httpx.get(PROBE, timeout=5.0)
    except httpx.HTTPError as exc:
        return f"{PROBE}: {type(exc).__name__}"
    if r.status_code != 200:
        return f"{PROBE} answered {r.status_code}"
    try:
        vulns = r.json().get("vulnerabilities")
    except ValueError:
        return f"{PROBE} is not JSON"
    return None if vulns else f"{PROBE} lists no vulnerabilities for a release that has some"


def test_pip_audit_finds_nothing_in_the_installed_environment() -> None:
    why = _service_answers()
    if why is not None:
        pytest.skip(
            f"pip-audit cannot audit here ({why}); the vendored advisories "
            "(test_advisories.py) were checked instead"
        )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--strict",
            "--skip-editable",
            "--progress-spinner",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
