"""A worker's start checks, with a real redis-server: a report worker without the secret
stops at start (exit 2, one line), before it consumes anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_settings import clean_env

ROOT = Path(__file__).resolve().parents[2]


def test_report_worker_without_secret_exits_2(redis_url):
    env = clean_env(REDIS_URL=redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app", "worker", "-Q", "report", "--pool", "solo", "-l", "WARNING"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("a report worker without PLATFORM_INTERNAL_SECRET kept running")
    assert proc.returncode == 2, err[-2000:]
    assert "PLATFORM_INTERNAL_SECRET" in err
    assert "Traceback" not in out + err
    assert "ready." not in out + err


