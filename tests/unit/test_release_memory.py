"""``app.runtime.release_free_memory``: the fetch worker hands a read's freed heap back to
the OS (glibc ``malloc_trim``), so its footprint after a read is what it holds, not the
read's high-water mark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import runtime

ROOT = Path(__file__).resolve().parents[2]

# In a fresh process (this one's heap already has room from earlier tests): 60 MB of
# line-sized objects freed around a few kept ones, as a read's lines are around its
# cursor's window. RSS in MiB before, with the heap still mapped, and after the release.
PROBE = """
import json
from app import runtime
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS:"))
before = rss()
lines = [bytes(1500) + i.to_bytes(4, "little") for i in range(40_000)]
kept = lines[::100]
del lines
held = rss()
runtime.release_free_memory()
print(json.dumps([before, held, rss(), len(kept)]))
"""


@pytest.mark.skipif(runtime._malloc_trim is None, reason="no glibc malloc_trim here")
def test_freed_lines_go_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    before, held, after, kept = json.loads(out.stdout)
    assert kept == 400
    assert held - before > 40, (before, held, after)  # freed, still mapped
    assert held - after > 30, (before, held, after)  # handed back


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(runtime, "_malloc_trim", None)
    assert runtime.release_free_memory() is None
