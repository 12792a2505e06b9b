"""What the wheel holds, read from pyproject.toml (no build): the product (app/ with its
Lua scripts, workers/, beat_schedule.py) and no development code (sim/, tests/, bench/).

Every importable directory under a shipped package must be listed in
``[tool.setuptools] packages``: one that is not (a new data directory like app/lua) is
silently left out of the wheel and makes setuptools warn at every install.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVELOPMENT = {"sim", "tests", "bench"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _importable_dirs(top: str) -> set[str]:
    """``top`` and every directory below it that Python could import as a package."""
    found = {top}
    for path in (ROOT / top).rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_dir() and "__pycache__" not in rel.parts and all(p.isidentifier() for p in rel.parts):
            if any(child.is_file() for child in path.iterdir()):
                found.add(".".join(rel.parts))
    return found


def test_only_the_product_is_packaged():
    config = _setuptools()
    packages = set(config["packages"])
    tops = {p.split(".")[0] for p in packages} | set(config.get("py-modules", []))
    assert tops == {"app", "workers", "beat_schedule"}
    assert not tops & DEVELOPMENT


def test_every_package_directory_is_listed():
    packages = set(_setuptools()["packages"])
    for top in ("app", "workers"):
        missing = _importable_dirs(top) - packages
        assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_lua_scripts_are_package_data():
    """app.ledger loads them with importlib.resources: each must match a package-data
    pattern of a listed package (relative to that package's directory)."""
    config = _setuptools()
    scripts = sorted((ROOT / "app" / "lua").glob("*.lua"))
    assert scripts
    for script in scripts:
        rel = script.relative_to(ROOT)
        assert any(
            package in config["packages"]
            and rel.parent.parts[: len(package.split("."))] == tuple(package.split("."))
            and any(
                fnmatch.fnmatch(rel.relative_to(Path(*package.split("."))).as_posix(), p)
                for p in patterns
            )
            for package, patterns in config.get("package-data", {}).items()
        ), f"{rel} is not package data"
