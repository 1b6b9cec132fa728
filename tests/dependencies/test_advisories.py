"""No installed package is a release with a known vulnerability, and no floor in pyproject.toml
admits one (docs/threats.md, "Storage, secrets, headers and dependencies"). Offline: the
advisories are vendored in advisories.toml; test_pip_audit.py asks a live service where one
answers."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ADVISORIES = tomllib.loads((HERE / "advisories.toml").read_text())["advisory"]


def _by_package() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for adv in ADVISORIES:
        out.setdefault(canonicalize_name(adv["package"]), []).append(adv)
    return out


def affected(advisory: dict, version: Version) -> bool:
    return any(
        SpecifierSet(spec).contains(version, prereleases=True) for spec in advisory["affected"]
    )


def test_the_advisory_list_is_well_formed() -> None:
    ids = [a["id"] for a in ADVISORIES]
    assert len(ids) == len(set(ids))
    for adv in ADVISORIES:
        assert adv["affected"] and adv["summary"], adv["id"]
        for spec in adv["affected"]:
            SpecifierSet(spec)  # parses
    # the releases the issue named are caught
    by = _by_package()
    for package, old in (
        ("starlette", "0.39.2"),
        ("python-multipart", "0.0.17"),
        ("h11", "0.15.0"),
    ):
        assert any(affected(a, Version(old)) for a in by[package]), package


def test_no_installed_package_is_an_affected_release() -> None:
    by = _by_package()
    found = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        for adv in by.get(name, []):
            if affected(adv, Version(dist.version)):
                found.append(f"{name} {dist.version}: {adv['id']} ({adv['summary']})")
    assert not found, "\n".join(found)


def _bounds(spec: SpecifierSet) -> tuple[Version | None, Version | None, bool]:
    """(lowest admitted, highest admitted or None, whether the highest is excluded)."""
    low = high = None
    high_excluded = False
    for s in spec:
        v = Version(s.version.replace(".*", ""))
        if s.operator in (">=", "==", "~=", "==="):
            low = v if low is None or v > low else low
        if s.operator == ">":
            low = v if low is None or v > low else low
        if s.operator in ("<", "<=", "==") and (high is None or v < high):
            high, high_excluded = v, s.operator == "<"
    return low, high, high_excluded


def _admits_an_affected_release(req: Requirement, advisory: dict) -> bool:
    low, high, high_excluded = _bounds(req.specifier)
    for spec in advisory["affected"]:
        a_low, a_high, a_high_excluded = _bounds(SpecifierSet(spec))
        # [a_low, a_high) against [low, high): empty when one ends before the other starts
        if (
            a_high is not None
            and low is not None
            and (a_high < low or (a_high == low and a_high_excluded))
        ):
            continue
        if (
            high is not None
            and a_low is not None
            and (high < a_low or (high == a_low and high_excluded))
        ):
            continue
        return True
    return False


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    raw = list(project["build-system"]["requires"]) + list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        raw += extra
    return [Requirement(r) for r in raw]


def test_no_floor_in_pyproject_admits_an_affected_release() -> None:
    by = _by_package()
    found = []
    for req in _requirements():
        for adv in by.get(canonicalize_name(req.name), []):
            if _admits_an_affected_release(req, adv):
                found.append(f"{req}: admits {adv['id']} ({', '.join(adv['affected'])})")
    assert not found, "\n".join(found)


# They parse untrusted HTTP before any of our code runs: their floors are ours to set, not left to
# whatever fastapi and uvicorn happen to allow.
PARSERS = ("starlette", "h11", "python-multipart")


def test_the_http_parsers_have_floors_of_their_own() -> None:
    direct = {canonicalize_name(r.name) for r in _requirements()}
    assert set(PARSERS) <= direct


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("starlette>=0.39", True),
        ("starlette>=0.49.1", False),
        ("pillow>=10.4", True),  # admits 11.2.x
        ("pillow>=11.3", False),
        ("protobuf>=5.29.5,<6", False),
        ("torch==2.13.0", False),
    ],
)
def test_the_floor_check_itself(requirement: str, expected: bool) -> None:
    req = Requirement(requirement)
    advisories = _by_package()[canonicalize_name(req.name)]
    assert any(_admits_an_affected_release(req, a) for a in advisories) is expected
