"""What beat runs. Run exactly one beat.

Beat's interval schedules are not aligned to the wall clock; report interval
boundaries come from Redis ``TIME`` inside the tasks, not from when beat fires.
``expires`` drops copies that waited in a backlog past their usefulness, so a
backlog never runs a stale round.
"""

from __future__ import annotations

from app.queues import Queue
from app.settings import Settings


def build_schedule(settings: Settings) -> dict:
    every = settings.fetch_every
    sweep_every = 3 * every
    # The file source plans on the host that holds the files: one plan per host queue
    # (FILE_QUEUES; one host: FILE_QUEUE, by default the fetch queue as for Kubernetes),
    # and sweeps on the first (it reads no file).
    plan_queues = settings.file_plan_queues if settings.log_source == "file" else [Queue.FETCH.value]
    plans = {
        ("plan" if queue == Queue.FETCH else f"plan {queue}"): {
            "task": "workers.maintenance.plan",
            "schedule": float(every),
            "options": {"queue": queue, "expires": float(every)},
        }
        for queue in plan_queues
    }
    return {
        **plans,
        "sweep": {
            "task": "workers.maintenance.sweep",
            "schedule": float(sweep_every),
            "options": {"queue": plan_queues[0], "expires": float(sweep_every)},
        },
    }
