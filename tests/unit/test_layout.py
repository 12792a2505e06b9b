"""Layering rules import-linter cannot express (see .importlinter and docs/design.md,
"Code layout")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("celery", "kombu", "kubernetes", "redis", "requests")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_beat_schedule_imports_only_the_product():
    # A module, not a package, so import-linter cannot take it as a root.
    names = imported_modules(ROOT / "beat_schedule.py") - {"__future__"}
    assert names and all(n == "app" or n.startswith("app.") for n in names), names


def test_scan_through_the_cli_loads_no_celery_kubernetes_or_redis(tmp_path):
    """The path users run (``traefik-metrics-scraper scan``), not only ``app.scan``."""
    log = tmp_path / "access.log"
    log.write_text('{"DownstreamContentSize":2,"DownstreamStatus":200,"RequestContentSize":1,'
                   '"RequestHost":"a.t.lum.tools","StartUTC":"2026-11-24T01:50:22Z"}\n')
    probe = (
        "import sys\n"
        "from app.cli import main\n"
        f"rc = main(['scan', {str(log)!r}, '--json'])\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "raise SystemExit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"a"' in proc.stdout
    assert "HEAVY []" in proc.stderr


def test_test_modules_have_unique_names_outside_packages():
    """pytest's default import mode imports a test module by its basename when its folder
    is not a package (tests/unit, tests/integration): two of the same name stop the whole
    run at collection (``make test-unit`` alone would not notice)."""
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
