"""The Celery app: ``celery -A app worker -Q fetch,report`` and ``celery -A app beat``.

Settings are loaded (and checked) when this module is imported, so a worker or beat
with a bad variable stops at start with one line naming it (exit status 2).
"""

from __future__ import annotations

import gc
import logging
import sys

import redis
from celery import Celery, signals
from kombu import Queue as KombuQueue

from app import brokerfix, health, logs, runtime
from app.queues import Queue
from app.settings import ConfigError, celery_url, settings_or_exit
from beat_schedule import build_schedule

log = logging.getLogger(__name__)

settings = settings_or_exit()

# kombu's Redis transport can kill a worker when Redis restarts (app/brokerfix.py).
brokerfix.apply()
# ... and builds a Redis client for every delivered and every acknowledged message.
brokerfix.reuse_clients()

app = Celery(
    "traefik_metrics_scraper",
    broker=celery_url(settings.broker_url, "virtual_host"),
    backend=celery_url(settings.result_backend, "db"),
    include=["workers.fetch", "workers.report", "workers.rounds"],
)

_transport = {
    # Longer than the longest task and the longest countdown, or Redis redelivers.
    "visibility_timeout": settings.visibility_timeout,
}

app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options=_transport,
    result_backend_transport_options=_transport,
    broker_connection_retry_on_startup=True,
    # Results are written only for fetch, the chord's header (every other task ignores
    # its result); an hour covers any chord, and they are a few hundred bytes a pod a round.
    result_expires=3600,
    task_create_missing_queues=False,
    # The two queues, and the file source's host queues (fetch.<host>; LOG_SOURCE=file).
    task_queues=[KombuQueue(q, routing_key=q) for q in dict.fromkeys([*map(str, Queue), *settings.file_queue_names])],
    task_default_queue=Queue.FETCH.value,
    # Task events only when asked for (TASK_EVENTS): Flower turns the workers' events on
    # by itself while it runs. No STARTED state: no one reads it, and it is one more
    # result-backend write per task.
    worker_send_task_events=settings.task_events,
    task_send_sent_event=settings.task_events,
    task_track_started=False,
    worker_hijack_root_logger=True,
    worker_log_format="[%(levelname)s] %(message)s",
    worker_task_log_format="[%(levelname)s] %(message)s",
    timezone="UTC",
    enable_utc=True,
    beat_schedule=build_schedule(settings),
)
# Probes that mean something: worker pings through its own direct queue, beat ticks.
health.install(app)
# LOG_FORMAT (human or json) for Celery's records and ours, secrets masked (app/logs.py).
logs.install(settings)


@signals.celeryd_init.connect
def _check_queues(options: dict | None = None, **_: object) -> None:
    """At worker start, before Celery selects the ``-Q`` queues: a queue that is not
    declared (``task_create_missing_queues`` is off) stops the worker with one line that
    says which variable declares it, rather than Celery's traceback, whose advice (turn
    ``task_create_missing_queues`` on) would strand messages on a queue no one reads."""
    wanted = (options or {}).get("queues") or []
    if isinstance(wanted, str):
        wanted = wanted.split(",")
    declared = [q.name for q in app.conf.task_queues]
    unknown = [q for q in wanted if q not in declared]  # "" too: "-Q fetch," or -Q ""
    if unknown:
        print(f"config error: worker -Q {', '.join(map(repr, unknown))}: no such queue (declared: {', '.join(declared)}); "
              "a file source's host queue (fetch.<host>) is declared by FILE_QUEUE (that host's worker) "
              "or FILE_QUEUES (beat), with LOG_SOURCE=file", file=sys.stderr)
        raise SystemExit(2)


@signals.worker_init.connect
def _check_worker(sender, **_: object) -> None:
    """At worker start: a report worker needs the secret; a fetch worker of the
    Kubernetes source needs a Kubernetes config (in the cluster, or KUBECONFIG): it would
    otherwise start, and fail every round; the ledger's Redis must not evict or lose
    writes."""
    consumes = sender.app.amqp.queues.consume_from or sender.app.amqp.queues
    # Inherited by a prefork pool's children (forked after this): only a worker that reads
    # logs creates a log source in them (runtime.init_process), so a report worker's
    # children do not import the Kubernetes client (a review: ~8 MB each, more with a config).
    global _fetches
    _fetches = any(q == Queue.FETCH.value or q.startswith(Queue.FETCH.value + ".") for q in consumes)
    try:
        if Queue.REPORT.value in consumes:
            settings.require_secret()
        if _fetches and settings.log_source == "kubernetes":  # fetch, or a fetch.<host> queue
            runtime.check_kube_config()
        runtime.check_ledger_identity()
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    check_redis(runtime.redis_client())
    runtime.reset()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_level(logger, **_: object) -> None:
    """LOG_LEVEL rules, as in the original (celery's -l default is WARNING)."""
    logger.setLevel(settings.log_level)


@signals.worker_init.connect
def _freeze_heap(**_: object) -> None:
    """Before a prefork pool forks its children: move everything imported so far out of
    the garbage collector's reach (``gc.freeze``), so a child's collections do not write
    to the parent's pages and copy them (copy-on-write). Measured with the fetch worker
    (prefork, one child) idle: 124 MiB of PSS summed over both processes without it,
    111 MiB with it (bench/fetch_memory.py). Those objects live as long as the process
    anyway; in a process that does not fork it changes nothing else."""
    gc.collect()
    gc.freeze()


_fetches = True  # whether this worker consumes a fetch queue: set at worker_init


@signals.worker_process_init.connect
def _init_process(**_: object) -> None:
    runtime.init_process(fetches=_fetches)


@signals.beat_init.connect
def _check_beat(**_: object) -> None:
    try:
        runtime.check_ledger_identity()
    except ConfigError as e:
        print(str(e), file=sys.__stderr__)  # beat has redirected sys.stderr to its logger by now
        raise SystemExit(2) from None
    check_redis(runtime.redis_client())
    runtime.reset()


def check_redis(r) -> None:
    """WARN when the ledger's Redis could evict keys or lose acknowledged writes."""
    try:
        conf = {**r.config_get("maxmemory-policy"), **r.config_get("appendonly"), **r.config_get("appendfsync")}
    except redis.RedisError as e:
        log.warning("cannot read the ledger Redis config (%s); make sure it runs with "
                    "maxmemory-policy noeviction, appendonly yes, appendfsync always", type(e).__name__)
        return
    if conf.get("maxmemory-policy") != "noeviction":
        log.warning("ledger Redis has maxmemory-policy %s: set noeviction, or keys of the ledger may be evicted",
                    conf.get("maxmemory-policy"))
    if conf.get("appendonly") != "yes" or conf.get("appendfsync") != "always":
        log.warning("ledger Redis runs appendonly=%s appendfsync=%s: use appendonly yes and appendfsync always, "
                    "or a crash can roll a cursor back and bill lines twice",
                    conf.get("appendonly"), conf.get("appendfsync"))
