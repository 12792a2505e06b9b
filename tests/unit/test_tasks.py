"""The Celery wiring: task names, queues, retries, serialisation, delivery guarantees.

``app.celery`` reads the settings when it is imported, so the app is loaded in a
subprocess with a known environment, which reports what it sees as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json
from app.celery import app, settings

app.loader.import_default_modules()
tasks = {name: t for name, t in app.tasks.items() if not name.startswith("celery.")}
conf = app.conf
print(json.dumps({
    "tasks": {
        name: {
            "queue": t.queue,
            "routed": app.amqp.router.route(dict(t._get_exec_options()), name)["queue"].name,
            "max_retries": t.max_retries,
            "acks_late": t.acks_late,
            "reject_on_worker_lost": t.reject_on_worker_lost,
            "time_limit": t.time_limit,
            "soft_time_limit": t.soft_time_limit,
            "serializer": t.serializer,
        }
        for name, t in tasks.items()
    },
    "task_queues": [q.name for q in conf.task_queues],
    "task_create_missing_queues": conf.task_create_missing_queues,
    "task_default_queue": conf.task_default_queue,
    "task_serializer": conf.task_serializer,
    "result_serializer": conf.result_serializer,
    "accept_content": list(conf.accept_content),
    "result_accept_content": list(conf.result_accept_content or []),
    "task_acks_late": conf.task_acks_late,
    "task_reject_on_worker_lost": conf.task_reject_on_worker_lost,
    "worker_prefetch_multiplier": conf.worker_prefetch_multiplier,
    "broker_transport_options": conf.broker_transport_options,
    "result_backend_transport_options": conf.result_backend_transport_options,
    "beat_schedule": {
        name: {"task": e["task"], "schedule": float(e["schedule"]), "options": e.get("options", {})}
        for name, e in conf.beat_schedule.items()
    },
    "settings": {
        "report_auto_retries": settings.report_auto_retries,
        "report_retry_max_delay": settings.report_retry_max_delay,
        "visibility_timeout": settings.visibility_timeout,
        "fetch_every": settings.fetch_every,
    },
}))
"""

ENV = {
    "REDIS_URL": "redis://127.0.0.1:1/0",  # never contacted: the app is only built
    "REPORT_AUTO_RETRIES": "7",
    "REPORT_RETRY_MAX_DELAY": "90",
    "REPORT_INTERVAL": "60",
    "FETCH_INTERVAL": "15",
}


def _wiring(**extra: str) -> dict:
    names = [n.upper() for n in Settings.model_fields] + ["POD_NAMESPACE"]
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(ENV, **extra)
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wiring() -> dict:
    return _wiring()


def test_registered_tasks_and_their_queues(wiring):
    assert {name: t["queue"] for name, t in wiring["tasks"].items()} == {
        "workers.fetch.fetch": "fetch",
        # The file source's fetch: plan sends it to the file's host queue (FILE_QUEUE).
        "workers.fetch.fetch_file": "fetch",
        "workers.maintenance.plan": "fetch",
        "workers.maintenance.merge": "fetch",
        "workers.maintenance.sweep": "fetch",
        # A round of its own at an interval's sealing point (app/pace.py).
        "workers.maintenance.seal_round": "fetch",
        "workers.report.report": "report",
        # Nominal: always sent to one worker's own direct queue (app/health.py).
        "app.health.ping": "fetch",
    }


def test_every_task_is_routed_to_a_declared_queue(wiring):
    assert wiring["task_create_missing_queues"] is False
    assert sorted(wiring["task_queues"]) == ["fetch", "report"]
    assert wiring["task_default_queue"] in wiring["task_queues"]
    for name, t in wiring["tasks"].items():
        assert t["queue"] in wiring["task_queues"], name
        assert t["routed"] == t["queue"], name


def test_report_max_retries_is_set_on_the_task_from_settings(wiring):
    assert wiring["settings"]["report_auto_retries"] == 7
    assert wiring["tasks"]["workers.report.report"]["max_retries"] == 7


def test_beat_entries_expire_and_target_the_fetch_queue(wiring):
    schedule = wiring["beat_schedule"]
    assert {e["task"] for e in schedule.values()} == {"workers.maintenance.plan", "workers.maintenance.sweep"}
    for name, entry in schedule.items():
        assert entry["task"] in wiring["tasks"], name
        expires = entry["options"].get("expires")
        assert expires is not None and 0 < expires <= entry["schedule"], name
        assert entry["options"].get("queue") == "fetch", name
    plan = next(e for e in schedule.values() if e["task"] == "workers.maintenance.plan")
    assert plan["schedule"] == wiring["settings"]["fetch_every"] == 15


def test_json_is_the_only_serializer(wiring):
    assert wiring["task_serializer"] == "json"
    assert wiring["result_serializer"] == "json"
    assert wiring["accept_content"] == ["json"]
    assert wiring["result_accept_content"] == ["json"]
    for name, t in wiring["tasks"].items():
        assert t["serializer"] == "json", name


def test_acks_late_and_reject_on_worker_lost(wiring):
    assert wiring["task_acks_late"] is True
    assert wiring["task_reject_on_worker_lost"] is True
    assert wiring["worker_prefetch_multiplier"] == 1
    for name, t in wiring["tasks"].items():
        assert t["acks_late"] is True, name
        assert t["reject_on_worker_lost"] is True, name


def test_visibility_timeout_exceeds_every_countdown_and_time_limit(wiring):
    vt = wiring["broker_transport_options"]["visibility_timeout"]
    assert vt == wiring["settings"]["visibility_timeout"]
    assert wiring["result_backend_transport_options"]["visibility_timeout"] == vt
    # The longest countdown a report retry can ask for (Retry-After included).
    assert vt > wiring["settings"]["report_retry_max_delay"] == 90
    limits = [t["time_limit"] for t in wiring["tasks"].values() if t["time_limit"]]
    assert {"workers.fetch.fetch", "workers.report.report"} <= {
        n for n, t in wiring["tasks"].items() if t["time_limit"]
    }
    assert vt > max(limits)
    for name, t in wiring["tasks"].items():
        if t["soft_time_limit"]:
            assert t["soft_time_limit"] < t["time_limit"], name


def test_the_report_task_name_sent_by_replay_is_registered(wiring):
    from app.queues import REPORT_TASK

    assert REPORT_TASK in wiring["tasks"]


def test_file_source_host_queues_are_declared_and_planned_by_beat():
    """LOG_SOURCE=file on several hosts: every host queue (FILE_QUEUES, and this host's
    FILE_QUEUE) is declared (task_create_missing_queues is off), beat sends one plan to
    each, and the sweep to the first; the Kubernetes schedule is unchanged (above)."""
    wiring = _wiring(LOG_SOURCE="file", FILE_QUEUE="fetch.web1", FILE_QUEUES="fetch.web1,fetch.web2")
    assert sorted(wiring["task_queues"]) == ["fetch", "fetch.web1", "fetch.web2", "report"]
    schedule = wiring["beat_schedule"]
    plans = {e["options"]["queue"] for e in schedule.values() if e["task"] == "workers.maintenance.plan"}
    assert plans == {"fetch.web1", "fetch.web2"}
    assert schedule["sweep"]["options"]["queue"] == "fetch.web1"
    for entry in schedule.values():
        assert 0 < entry["options"]["expires"] <= entry["schedule"]
    # One host: everything on the fetch queue, as with Kubernetes.
    one = _wiring(LOG_SOURCE="file", LOG_FILES="/var/log/traefik/access.log*")
    assert sorted(one["task_queues"]) == ["fetch", "report"]
    assert {e["options"]["queue"] for e in one["beat_schedule"].values()} == {"fetch"}
