"""The dependency floors pyproject.toml declares are the versions `make test-floors` installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(pyproject: Path) -> dict[str, str]:
    """Each dependency's floor: every runtime dependency must have one (``name>=version``)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out: dict[str, str] = {}
    for dep in deps:
        if dep == "lockkit" or dep.startswith("lockkit-"):
            continue  # this repository's own packages
        m = _FLOOR.match(dep)
        assert m is not None, f"{pyproject.relative_to(ROOT)}: {dep!r} declares no floor (name>=version)"
        out[_name(m.group(1))] = m.group(2)
    return out


def _pinned() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[_name(name)] = version.strip()
    return out


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:  # "42" and "42.0.0" are one release
        parts.pop()
    return tuple(parts)


def test_the_floors_tested_are_the_floors_declared() -> None:
    declared, pinned = _declared(ROOT / "pyproject.toml"), _pinned()
    assert set(pinned) == set(declared)
    for name, floor in declared.items():
        assert _release(pinned[name]) == _release(floor), (name, floor, pinned[name])


def test_no_provider_declares_a_floor_below_lockkits() -> None:
    """A provider installed beside lockkit cannot run on less than lockkit itself needs."""
    declared = _declared(ROOT / "pyproject.toml")
    for pyproject in sorted((ROOT / "providers").glob("*/pyproject.toml")):
        for name, floor in _declared(pyproject).items():
            if name in declared:
                assert _release(floor) >= _release(declared[name]), (pyproject.parent.name, name, floor)
