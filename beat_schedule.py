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
    return {
        "plan": {
            "task": "workers.maintenance.plan",
            "schedule": float(every),
            "options": {"queue": Queue.FETCH.value, "expires": float(every)},
        },
        "sweep": {
            "task": "workers.maintenance.sweep",
            "schedule": float(sweep_every),
            "options": {"queue": Queue.FETCH.value, "expires": float(sweep_every)},
        },
    }
