"""Every benchmark module imports, the way ``bench/run.py`` runs them (``python
bench/<name>.py``: the bench folder first on the path): a name moved out of
``bench/harness.py`` fails here, not in the middle of ``make bench``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def test_every_benchmark_module_imports():
    names = sorted(p.stem for p in BENCH.glob("*.py"))
    assert {"run", "harness", "parse", "backlog"} <= set(names)
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:  # report every module, not the first\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
