"""Liveness and readiness of workers and beat, for probes that mean something.

A worker process that is alive may still have stopped consuming (celery/celery#10205:
a worker that stays up after a connection reset and takes no more messages), and a
Redis outage must not restart every worker at once (a restart does not bring Redis
back). So each process writes small files under ``HEALTH_DIR`` (default
``/tmp/health``), each holding one integer: the unix time until which the process
counts as alive, or ready. A probe only compares it with the clock, in ``sh``, with no
Python started per probe (``LIVE_PROBE``, ``READY_PROBE``, ``BEAT_PROBE``)::

    test "$(date +%s)" -lt "$(cat /tmp/health/live)"

A missing or empty file fails the probe (``test`` cannot compare).

Workers (``live``, ``ready``). A thread of the worker's main process (``Pinger``), every
``HEALTH_INTERVAL`` seconds, opens its own broker connection and

- when it connects, writes ``ready`` (valid for ``ready_budget``); once the worker is
  consuming, it sends the task ``app.health.ping`` to the worker's own direct queue
  (``<nodename>.dq2``, Celery's ``worker_direct``; declared by the worker itself and
  consumed by nobody else), unless a ping is already waiting there;
- when it cannot connect, removes ``ready`` (the probe fails at once) and *extends*
  ``live``: the broker is down, which is not this worker's fault.

The ping task, run by the pool like any task, extends ``live`` by ``live_budget``. So
``live`` stays valid exactly while pings sent through the broker come back through the
worker's consumer and pool, or while the broker cannot be reached. A worker whose
consumer stopped while Redis is up lets it expire: its liveness fails and it is
restarted. The budget covers the longest task the worker may be running when the ping
arrives (prefetch is 1, so the ping waits for it): twice ``HEALTH_INTERVAL``, plus the
longest a task of the queues it consumes can run (``hard_limit``), plus 10 s.

The direct queue is a declared kombu ``Queue`` object passed as the destination, so it
works with ``task_create_missing_queues=False`` (Celery's router accepts a ``Queue``
instance without looking it up in ``task_queues``). A ping is sent without a
``task-sent`` event and the task sends no events, so Flower does not list them.

Beat (``beat``). ``HealthScheduler`` (``beat_scheduler``) extends ``beat`` after every
pass of the scheduler loop: beat passes at least every ``FETCH_INTERVAL`` (the plan
entry), so a beat that stopped scheduling (a stuck loop, SIGSTOP) lets it expire within
``beat_budget``. A broker outage does not stop the loop (a failed send is logged and
beat goes on), so it does not fail beat's liveness either.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
from celery import Celery, signals
from celery.beat import PersistentScheduler
from celery.utils.nodenames import worker_direct
from kombu.exceptions import ChannelError, KombuError

from app.queues import Queue
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

PING_TASK = "app.health.ping"
LIVE, READY, BEAT = "live", "ready", "beat"
# Seconds ``live`` stays valid once a warm shutdown begins: running tasks may finish
# (terminationGracePeriodSeconds bounds it), and no ping is consumed meanwhile.
SHUTDOWN_GRACE = 900

# The probe commands, with the default HEALTH_DIR (the manifests use exactly these).
_PROBE = 'test "$(date +%s)" -lt "$(cat {path})"'
LIVE_PROBE = _PROBE.format(path="/tmp/health/" + LIVE)
READY_PROBE = _PROBE.format(path="/tmp/health/" + READY)
BEAT_PROBE = _PROBE.format(path="/tmp/health/" + BEAT)

# What a failed broker connection raises (redis-py's errors are OSError's siblings).
_BROKER_ERRORS = (KombuError, OSError, redis.RedisError)


def probe_command(health_dir: str, name: str) -> str:
    """The shell test a probe runs for file ``name`` under ``health_dir``."""
    return _PROBE.format(path=f"{health_dir}/{name}")


# Budgets ---------------------------------------------------------------------------


def hard_limit(settings: Settings, queue: str) -> int:
    """The longest a task on ``queue`` can run (workers/*.py set the limits). A fetch: on
    prefork the hard limit, FETCH_TIME_LIMIT + 10; on the thread pool the read stops
    itself at FETCH_TIME_LIMIT, but a stream that stalls just before it is noticed only
    when the read timeout (KUBE_REQUEST_TIMEOUT at most) runs out, so that is added."""
    if queue == Queue.REPORT:
        return settings.report_time_limit + 5
    return settings.fetch_time_limit + math.ceil(settings.kube_request_timeout) + 10


def live_budget(settings: Settings, queues: list[str]) -> int:
    """Seconds ``live`` stays valid after a ping ran (see the module docstring)."""
    longest = max((hard_limit(settings, q) for q in queues), default=hard_limit(settings, Queue.FETCH))
    return 2 * settings.health_interval + longest + 10


def ready_budget(settings: Settings) -> int:
    """Seconds ``ready`` stays valid after the broker was last reached."""
    return 3 * settings.health_interval


def beat_budget(settings: Settings) -> int:
    """Seconds ``beat`` stays valid after a pass of the scheduler loop: beat passes at
    least every FETCH_INTERVAL; three of them, and 15 s for a slow send (a failed one
    gives up after Celery's publish retries, about 3 s)."""
    return 3 * settings.fetch_every + 15


# Files --------------------------------------------------------------------------------


def write_deadline(health_dir: str, name: str, seconds: float) -> None:
    """Write ``now + seconds`` (unix time, whole seconds) to ``health_dir/name``, atomically."""
    os.makedirs(health_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=health_dir, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{int(time.time() + seconds)}\n")
        os.replace(tmp, os.path.join(health_dir, name))
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove(health_dir: str, name: str) -> None:
    Path(health_dir, name).unlink(missing_ok=True)


def valid(health_dir: str, name: str) -> bool:
    """What the probe answers, in Python (for tests and ``status``)."""
    try:
        return time.time() < int(Path(health_dir, name).read_text())
    except (OSError, ValueError):
        return False


# Worker --------------------------------------------------------------------------------


class Pinger(threading.Thread):
    """The worker's health thread (see the module docstring)."""

    def __init__(self, app: Celery, hostname: str, settings: Settings, queues: list[str]) -> None:
        super().__init__(name="health-pinger", daemon=True)
        self.app = app
        self.hostname = hostname
        self.dir = settings.health_dir
        self.interval = settings.health_interval
        self.live = live_budget(settings, queues)
        self.ready = ready_budget(settings)
        self.queue = worker_direct(hostname)
        self.consuming = threading.Event()  # set at worker_ready
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.once()
            self.stopping.wait(self.interval)

    def once(self) -> None:
        timeout = max(1.0, min(5.0, self.interval / 2))
        try:
            with self.app.connection_for_write(
                transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout}
            ) as conn:
                conn.connect()
                write_deadline(self.dir, READY, self.ready)
                if self.consuming.is_set() and not self.stopping.is_set():
                    self.send_ping(conn)
        except _BROKER_ERRORS as e:
            remove(self.dir, READY)
            # Not this worker's fault: keep it alive while the broker is away.
            write_deadline(self.dir, LIVE, self.live)
            log.debug("health: broker unreachable (%s); not ready", type(e).__name__)

    def send_ping(self, conn) -> None:
        """Send one ping to this worker's direct queue, unless one is already waiting."""
        try:
            if self.queue(conn.default_channel).queue_declare(passive=True).message_count:
                return
        except ChannelError:
            pass  # 404: no such queue here, so nothing waiting (Redis drops an empty list)
        amqp = self.app.amqp
        # create_sent_event=False: no task-sent event, so monitors do not list pings.
        message = amqp.create_task_message(
            uuid.uuid4().hex, PING_TASK, (self.hostname, self.live), {}, expires=float(self.live),
            create_sent_event=False, ignore_result=True,
        )
        amqp.send_task_message(amqp.Producer(conn, auto_declare=False), PING_TASK, message, queue=self.queue,
                               retry=False)

    def stop(self) -> None:
        self.stopping.set()


_pinger: dict[str, Pinger] = {}


def _ping(self, hostname: str, budget: int) -> str:
    """Run by the pool: the ping made it through the broker and the consumer."""
    if self.request.hostname != hostname:
        return "not mine"  # a misrouted ping proves nothing about this worker
    write_deadline(get_settings().health_dir, LIVE, budget)
    return "ok"


def _on_worker_init(sender, **_: object) -> None:
    settings = get_settings()
    app = sender.app
    queues = [q for q in (app.amqp.queues.consume_from or app.amqp.queues) if not q.endswith(".dq2")]
    pinger = Pinger(app, sender.hostname, settings, queues)
    # Until the first ping comes back: time to connect and start.
    write_deadline(settings.health_dir, LIVE, pinger.live)
    remove(settings.health_dir, READY)
    _pinger["worker"] = pinger
    pinger.start()


def _on_worker_ready(**_: object) -> None:
    pinger = _pinger.get("worker")
    if pinger is not None:
        pinger.consuming.set()


def _on_worker_shutting_down(**_: object) -> None:
    pinger = _pinger.get("worker")
    if pinger is not None:
        pinger.stop()
        write_deadline(pinger.dir, LIVE, SHUTDOWN_GRACE)


def _on_worker_shutdown(**_: object) -> None:
    """Remove the direct queue (its binding and any ping left), best effort: a
    replacement pod has another name, and would never consume it."""
    pinger = _pinger.pop("worker", None)
    if pinger is None:
        return
    pinger.stop()
    try:
        with pinger.app.connection_for_write(transport_options={"socket_connect_timeout": 2, "socket_timeout": 2}) as conn:
            pinger.queue(conn.default_channel).delete()
    except _BROKER_ERRORS as e:
        log.debug("health: could not delete %s: %s", pinger.queue.name, type(e).__name__)


# Beat ------------------------------------------------------------------------------------


class HealthScheduler(PersistentScheduler):
    """Celery's default scheduler that extends ``beat`` after every pass of its loop."""

    def tick(self, *args, **kwargs):
        delay = super().tick(*args, **kwargs)
        settings = get_settings()
        try:
            write_deadline(settings.health_dir, BEAT, beat_budget(settings))
        except OSError as e:  # a full /tmp must not stop scheduling; the probe will tell
            log.warning("health: cannot write %s/%s: %s", settings.health_dir, BEAT, e)
        return delay


def _on_beat_init(**_: object) -> None:
    settings = get_settings()
    # Until the first pass: loading the schedule and connecting.
    write_deadline(settings.health_dir, BEAT, beat_budget(settings) + 60)


# Wiring ------------------------------------------------------------------------------------


class _QuietPings(logging.Filter):
    """Drop Celery's "received" and "succeeded" lines of pings (two every interval)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return PING_TASK + "[" not in record.getMessage()


def install(app: Celery) -> None:
    """Register the ping task, the worker's direct queue, beat's scheduler and the
    signal handlers. Called once by ``app/celery.py``."""
    app.conf.worker_direct = True
    app.conf.beat_scheduler = "app.health:HealthScheduler"
    app.task(
        name=PING_TASK,
        bind=True,
        queue=Queue.FETCH,  # nominal: a ping is always sent to one worker's direct queue
        ignore_result=True,
        track_started=False,
        send_events=False,
        time_limit=30,
        soft_time_limit=20,
    )(_ping)
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).addFilter(_QuietPings())
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
    signals.beat_init.connect(_on_beat_init, weak=False)

