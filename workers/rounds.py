"""Plan, merge and sweep tasks (queue ``fetch``: they are quick and must not wait
behind report retries). The rules are in ``app/rounds.py``; these tasks dispatch
what it returns.

The task names keep their first module's name (``workers.maintenance.*``): a worker
discards a message whose task name it does not know, so renaming one would strand
queued messages.
"""

from __future__ import annotations

import logging

from celery import chord, group

from app import pace, rounds, runtime
from app.celery import app, settings
from app.errors import KubeError
from app.queues import Queue
from workers.fetch import fetch, fetch_file
from workers.report import enqueue_reports

log = logging.getLogger(__name__)


@app.task(name="workers.maintenance.plan", queue=Queue.FETCH, expires=float(settings.fetch_every), ignore_result=True)
def plan() -> dict:
    """List the Traefik pods and send chord(fetch per pod, merge). With the file source,
    list this host's access-log files and send chord(fetch_file per file, merge), each
    fetch_file to this host's queue. With pods, the round before an interval's sealing
    point also sends a round of its own for just after that point (app/pace.py)."""
    if settings.log_source == "file":
        # Everything of a file round stays on the host's queue: where the files are, and
        # off the fetch queue a Kubernetes reader may consume beside it (docker-compose.yml).
        out = rounds.plan_files(runtime.ledger(), settings)
        if out.dispatch:
            if out.files:
                fetches = group(fetch_file.s(f.path, f.identity).set(queue=out.queue) for f in out.files)
                chord(fetches, merge.si().set(queue=out.queue)).apply_async()
            else:
                merge.apply_async(queue=out.queue)
        return out.summary()
    sealing = pace.seal_countdown(runtime.ledger(), settings)
    if sealing is not None:
        countdown, end = sealing
        seal_round.apply_async((end,), countdown=countdown, expires=countdown + settings.fetch_every)
    return _pod_round(None)


@app.task(name="workers.maintenance.seal_round", queue=Queue.FETCH, ignore_result=True)
def seal_round(end: int) -> dict:
    """A round of its own just after the sealing point of the interval ending at ``end``
    (epoch seconds), sent by the plan before that point (app/pace.py): its merge seals
    the interval without waiting for the next regular round."""
    return _pod_round(f"seal:{end}")


def _pod_round(claim: str | None) -> dict:
    """List the Traefik pods and send chord(fetch per pod, merge); ``claim`` names a round
    outside the regular ones (app/rounds.plan)."""
    try:
        source = runtime.log_source()
    except KubeError as e:
        source = e
    out = rounds.plan(runtime.ledger(), source, settings, claim=claim)
    if out.dispatch:
        if out.pods:
            chord(group(fetch.s(p.name, p.uid) for p in out.pods), merge.si()).apply_async()
        else:
            merge.apply_async()
    return out.summary()


@app.task(name="workers.maintenance.merge", queue=Queue.FETCH, acks_late=True, ignore_result=True)
def merge() -> dict:
    """The chord callback: seal ended intervals and send their reports."""
    out = rounds.merge(runtime.ledger(), settings)
    enqueue_reports(out.reports)
    return {"sealed": out.sealed, "reports": len(out.reports)}


@app.task(name="workers.maintenance.sweep", queue=Queue.FETCH, acks_late=True, expires=float(3 * settings.fetch_every),
          ignore_result=True)
def sweep() -> dict:
    source = None  # the file source has no pods to check
    if settings.log_source != "file":
        try:
            source = runtime.log_source()
        except KubeError as e:
            log.warning("sweep: not checking gone pods: %s", e)
    summary, keys = rounds.sweep(runtime.ledger(), source, settings)
    enqueue_reports(keys)
    return summary
