"""A worker's start checks, with a real redis-server: a worker that could not do its work
stops at start (exit 2, one line naming what to set), before it consumes anything: a
report worker without the secret, a fetch worker of the Kubernetes source without a
Kubernetes config, a worker asked for a queue that is not declared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_settings import clean_env

ROOT = Path(__file__).resolve().parents[2]


def _start(queues: str, env: dict[str, str]) -> tuple[int, str]:
    """Start ``celery -A app worker -Q queues``; its exit status and its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app", "worker", "-Q", queues, "--pool", "solo", "-l", "WARNING"],
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
        pytest.fail(f"a worker of -Q {queues} that cannot work kept running")
    assert "Traceback" not in out + err
    assert "ready." not in out + err
    return proc.returncode, out + err


def test_report_worker_without_secret_exits_2(redis_url):
    rc, output = _start("report", clean_env(REDIS_URL=redis_url))
    assert rc == 2, output[-2000:]
    assert "PLATFORM_INTERNAL_SECRET" in output


@pytest.mark.parametrize("queues", ["fetch", "fetch.web1"])
def test_fetch_worker_without_a_kubernetes_config_exits_2(redis_url, tmp_path, queues):
    # Not in a cluster (no service account), no KUBECONFIG and no ~/.kube/config: it
    # started, and failed every round to list the pods (found by a new-user trial). On a
    # fetch.<host> queue too (a review: only "fetch" was checked).
    env = clean_env(REDIS_URL=redis_url, HOME=str(tmp_path), FILE_QUEUE="fetch.web1")
    env.pop("KUBECONFIG", None)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    rc, output = _start(queues, env)
    assert rc == 2, output[-2000:]
    line = output.strip().splitlines()[-1]
    assert line.startswith("config error:") and "KUBECONFIG" in line and "LOG_SOURCE=kubernetes" in line, output


def test_fetch_worker_with_a_kubeconfig_that_is_not_one_exits_2(redis_url, tmp_path):
    # A file that is YAML but not a kubeconfig: the client's loader raised TypeError, which
    # Celery's signal dispatch swallowed, and the worker started (a review's trial).
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("just a string\n")
    env = clean_env(REDIS_URL=redis_url, KUBECONFIG=str(kubeconfig))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    rc, output = _start("fetch", env)
    assert rc == 2, output[-2000:]
    line = output.strip().splitlines()[-1]
    assert line.startswith("config error:") and "KUBECONFIG: not a kubeconfig file (TypeError" in line, output


@pytest.mark.parametrize(("queues", "named"), [("fetch.web1", "'fetch.web1'"), ("fetch,", "''"), ("fetch, report", "' report'")])
def test_worker_of_an_undeclared_queue_exits_2_naming_the_variable(redis_url, queues, named):
    # A file source's host queue without FILE_QUEUE: Celery's own error was a traceback
    # advising task_create_missing_queues (found by a new-user trial); an empty name, or
    # one with a blank, too (a review).
    rc, output = _start(queues, clean_env(REDIS_URL=redis_url, LOG_SOURCE="file", LOG_FILES="/tmp/x.log"))
    assert rc == 2, output[-2000:]
    line = output.strip().splitlines()[-1]
    assert f"-Q {named}:" in line and "FILE_QUEUE" in line, output


@pytest.mark.parametrize(("variable", "value", "recorded"), [
    ("REPORT_INTERVAL", "30", "'60'"),
    ("SCRAPER_ID", "cluster-b", "'cluster-a'"),
])
def test_worker_and_beat_on_a_ledger_of_another_report_identity_exit_2(redis_url, tmp_path, variable, value, recorded):
    # A new-user trial: after REPORT_INTERVAL changed, reports made under the old value
    # (dead-lettered, then replayed) went out under new Idempotency-Keys and a new body
    # timestamp, which a platform that had the first attempt bills again.
    import redis

    from app.ledger import Ledger

    prefix = f"ident-{variable.lower()}"
    Ledger(redis.Redis.from_url(redis_url), prefix, 60).initialise(0, scraper_id="cluster-a")
    env = clean_env(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix, PLATFORM_INTERNAL_SECRET="s",
                    **{"SCRAPER_ID": "cluster-a", variable: value})
    rc, output = _start("report", env)
    assert rc == 2, output[-2000:]
    line = output.strip().splitlines()[-1]
    assert line.startswith(f"config error: {variable} is {value!r}") and f"{variable}={recorded}" in line, output
    beat = subprocess.run([sys.executable, "-m", "celery", "-A", "app", "beat", "-l", "WARNING", "-s", str(tmp_path / "schedule")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert beat.returncode == 2, beat.stderr[-2000:]
    assert beat.stderr.strip().splitlines()[-1] == line
    # The pod watcher too: it commits reads into report intervals, as a fetch worker does.
    from tests.integration.test_health import _unreachable_kubeconfig

    watcher = subprocess.run([sys.executable, "-m", "app", "watch"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env={**env, "KUBECONFIG": _unreachable_kubeconfig(tmp_path / "kubeconfig")})
    assert watcher.returncode == 2, watcher.stderr[-2000:]
    assert watcher.stderr.strip().splitlines()[-1] == line
