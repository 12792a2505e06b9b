"""README.md's configuration table is the one docs/settings_table.py generates from the
settings model (field docstrings, defaults, app.settings.EXPECTED): it cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from app.settings import EXPECTED, Settings

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "docs" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert gen.readme_table(readme) == gen.table(), (
        "README.md's configuration table differs from the settings model: run `make docs`"
    )


def test_every_setting_is_documented():
    rows = gen.rows()
    assert [v for v, *_ in rows] == [f"`{name.upper()}`" for name in Settings.model_fields]
    for variable, default, meaning, accepted in rows:
        assert default and meaning and accepted, f"{variable}: add a field docstring and an EXPECTED entry"
    assert set(EXPECTED) == set(Settings.model_fields)


def test_no_secret_default_is_shown():
    (row,) = [r for r in gen.rows() if r[0] == "`PLATFORM_INTERNAL_SECRET`"]
    assert row[1] == "*(none)*"


def test_a_stale_table_is_found_and_rewritten():
    current = gen.with_table((ROOT / "README.md").read_text())
    stale = current.replace("| `LOG_LEVEL` | `INFO` |", "| `LOG_LEVEL` | `DEBUG` |")
    assert stale != current
    assert gen.readme_table(stale) != gen.table()
    assert gen.with_table(stale) == current
    # Only the table changes: the text around the markers is kept as it is.
    assert current.split(gen.START)[0] == stale.split(gen.START)[0]
    assert current.split(gen.END)[1] == stale.split(gen.END)[1]
