"""Prometheus metrics of the pipeline, read from Redis at each scrape
(``traefik-metrics-scraper metrics``).

Everything comes from the ledger (and the broker's queue lists), never from the
exporter's own memory, so the numbers are right across any number of worker processes
and survive their restarts. Names follow Prometheus conventions: the
``traefik_metrics_scraper_`` prefix, base units (seconds, bytes), ``_total`` on counters.
Labels are bounded: reasons, outcomes, states, queue names and pod names; never a tunnel.

Counters (the ledger's ``stats`` hash):

- ``log_lines_total{outcome, reason}``: every line read, by outcome (``counted``,
  ``ignored``, ``rejected``) and reason (``tunnel`` for counted lines; the parser's
  reasons, plus ``before_start`` and ``no_timestamp``). Their sum is
  ``log_lines_read_total``.
- ``counted_bytes_total{direction="in"|"out"}``, ``counted_requests_total``: what is
  billed.
- ``unmetered_requests_total``: counted requests that were upgraded connections
  (WebSocket...), logged with 0 bytes whatever went through them; no tunnel label
  (``status`` lists them per tunnel).
- ``amendments_total`` (amendment reports: lines of sealed intervals),
  ``seal_forced_total`` (intervals sealed past a source unreadable for ``SEAL_MAX_WAIT``),
  ``seal_forced_by_total{pod}`` (the same per source: a pod, a log file's path, a listing),
  ``listings_dropped_total`` (stale listings: a plan not renewed for ``SEAL_MAX_WAIT`` while
  others were),
  ``lines_expired_total`` (requests of intervals older than ``INTERVAL_RETENTION``, not
  reported).
- ``follow_started_total`` and ``follows_ended_total{reason}``: follow streams
  (``app/follow.py``) started, and ended by reason (``idle``, ``stopped``,
  ``stopped_container``, ``gone``, ``new_container``, ``conflict``, ``broken``,
  ``kube_error``...).
- ``gaps_total`` (log spans that may be lost), ``no_progress_reads_total``,
  ``fetch_conflicts_total``, ``fetch_restarts_total``, ``fetch_errors_total{kind}``,
  ``reports_total{outcome="delivered"|"skipped"|"parked"|"dead"|"written_off"}``; any other counter as
  ``<name>_total``.

Per Traefik pod (``pod`` label; pods fetched within three rounds of the newest fetch,
not known gone; ``podfetch`` records written by every fetch task):

- ``pod_lag_seconds``: seconds since a read of the pod last reached the end of its log
  (Redis time); since its first fetch when none has yet.
- ``pod_last_read_at_end_timestamp_seconds``, ``pod_fetch_duration_seconds`` (a summary:
  ``_count``, ``_sum``), ``pod_last_fetch_duration_seconds``,
  ``pod_fetch_errors_total{kind}``.

Gauges: ``sealed_up_to_timestamp_seconds`` (the mark: every interval starting before it
is sealed), ``seal_held_back_seconds{pod}`` (sources behind what sealing the next
interval needs, by how many seconds, at the last merge), ``min_pod_lag_seconds`` (seconds since any read of any pod reached the end of its
log; since the ledger was initialised when none has), ``fetch_interval_seconds``,
``report_interval_seconds``, ``intervals{state="open"|"sealed"}``,
``undelivered_reports{state="pending"|"queued"|"due"|"dead"}``,
``oldest_undelivered_report_age_seconds`` (since it was made: its interval sealed, or
the amendment made, as ``REPORT_MAX_AGE`` counts; 0 when none),
``reports_in_retry`` (waiting for a Celery retry now), ``dead_letters``, ``followed_pods``,
``queue_messages{queue="fetch"|"report"|"fetch.<host>"}`` (the last with ``LOG_SOURCE=file``;
messages waiting in the broker's lists, all
priorities), ``broker_unacked_messages`` (delivered to a worker, not acknowledged: running,
or held for a retry countdown), ``ledger_initialised``, ``redis_up``,
``redis_memory_used_bytes{redis}``, ``redis_memory_max_bytes{redis}`` and
``redis_memory_headroom_ratio{redis}`` (``ledger``, and ``broker`` when it is another
Redis: with ``noeviction`` a full Redis refuses the ledger's commits).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from app.ledger import Ledger
from app.model import ReportState
from app.queues import Queue
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

NS = "traefik_metrics_scraper"
# kombu's Redis transport keeps one list per priority step: the queue's own name for
# priority 0, ``<queue>\x06\x16<step>`` for the others (``_q_for_pri``, PRIORITY_STEPS).
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages
REPORT_OUTCOMES = ("delivered", "skipped", "parked", "dead", "written_off")
UNDELIVERED = (ReportState.PENDING, ReportState.QUEUED, ReportState.DUE)
# Counters of the stats hash with their own metric (the rest: <name>_total).
NAMED = {
    "gaps": ("gaps", "Log spans that may be lost (rotation past the cursor, previous log gone)"),
    "no_progress": ("no_progress_reads", "Reads that could not get past one second of log (raise FETCH_MAX_BYTES)"),
    "fetch_conflicts": ("fetch_conflicts", "Fetches that lost the cursor race to another fetch (nothing committed)"),
    "fetch_restarted": ("fetch_restarts", "Fetches that saw the container change during the read (nothing committed)"),
    "pods_without_access_lines": ("pods_without_access_lines", "Pods warned about for showing no access-log lines"),
    "pods_with_bad_timestamps": ("pods_with_bad_timestamps",
                                 "Pods warned about for log lines whose timestamp cannot be read"),
    "unmetered_requests": ("unmetered_requests", "Tunnel requests that were upgraded connections (WebSocket...): "
                           "counted as requests with 0 bytes, their traffic is not in Traefik's access log"),
    "amendments": ("amendments", "Amendment reports made: lines read after their interval was sealed"),
    "seal_forced": ("seal_forced", "Intervals sealed without a source unreadable for over SEAL_MAX_WAIT"),
    "listings_dropped": ("listings_dropped", "Stale listings dropped: a plan (file host, pod listing) not renewed for "
                         "SEAL_MAX_WAIT while others were; their sources no longer hold sealing back"),
    "lines_expired": ("lines_expired", "Tunnel requests stamped in intervals older than INTERVAL_RETENTION: "
                      "not reported"),
    "follow_behind": ("follow_behind", "Follow streams that fell over 5 s behind their pod's log with bytes waiting "
                      "(a stream a whole log file behind loses that file unrecorded)"),
}


def queue_keys(queue: str) -> list[str]:
    """The broker's Redis lists holding the messages of ``queue``."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def _f(value: str | None, default: float = 0.0) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


class LedgerCollector(Collector):
    """Reads the ledger (and the broker's lists) at each scrape."""

    def __init__(self, ledger: Ledger, settings: Settings | None = None, broker: redis.Redis | None = None) -> None:
        self.ledger = ledger
        self.s = settings or get_settings()
        if broker is None and self.s.broker_url != self.s.redis_url:
            broker = redis.Redis.from_url(self.s.broker_url, socket_timeout=10, socket_connect_timeout=5)
        self.broker = broker if broker is not None else ledger.r

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{NS}_fetch_interval_seconds", "Configured FETCH_INTERVAL: seconds between log reads",
                                value=self.s.fetch_every)
        yield GaugeMetricFamily(f"{NS}_report_interval_seconds", "Configured REPORT_INTERVAL: seconds per report interval",
                                value=self.s.report_interval)
        try:
            families = list(self._ledger_families()) + list(self._broker_families()) + list(self._memory_families())
        except redis.RedisError as e:
            log.warning("metrics: Redis: %s", type(e).__name__)
            yield GaugeMetricFamily(f"{NS}_redis_up", "1 when the ledger and broker Redis answered this scrape", value=0)
            return
        yield GaugeMetricFamily(f"{NS}_redis_up", "1 when the ledger and broker Redis answered this scrape", value=1)
        yield from families

    # The ledger -------------------------------------------------------------------------

    def _ledger_families(self) -> Iterator[Metric]:
        ledger = self.ledger
        now = ledger.now()
        init = ledger.init_record()
        yield GaugeMetricFamily(f"{NS}_ledger_initialised", "1 when the ledger has its initialisation record",
                                value=1 if init else 0)
        yield from self._counters(ledger.stats())
        yield from self._pods(now, init)
        counts = ledger.metric_counts()
        intervals = GaugeMetricFamily(f"{NS}_intervals", "Report intervals with counts, by state", labels=["state"])
        intervals.add_metric(["open"], counts["open"])
        intervals.add_metric(["sealed"], counts["sealed"])
        yield intervals
        states, oldest = ledger.report_states()
        reports = GaugeMetricFamily(f"{NS}_undelivered_reports", "Reports not delivered, by state (dead: dead "
                                    "letters)", labels=["state"])
        for state in UNDELIVERED:
            reports.add_metric([state.value], states.pop(state.value, 0))
        for state, n in sorted(states.items()):  # a state the code does not expect here
            reports.add_metric([state], n)
        reports.add_metric([ReportState.DEAD.value], counts["dead"])
        yield reports
        age = max(0.0, now - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily(f"{NS}_oldest_undelivered_report_age_seconds",
                                "Seconds since the oldest undelivered report was made (its interval sealed, or the "
                                "amendment made: what REPORT_MAX_AGE counts from; 0: none)", value=age)
        yield GaugeMetricFamily(f"{NS}_reports_in_retry", "Reports waiting for a Celery retry now",
                                value=counts["retrying"])
        yield GaugeMetricFamily(f"{NS}_dead_letters", "Reports in the dead-letter store (see `deadletters`)",
                                value=counts["dead"])
        uids = ledger.r.smembers(ledger.k("followed"))  # a member whose lease expired: its follower died
        with ledger.r.pipeline(transaction=False) as pipe:
            for uid in uids:
                pipe.exists(ledger.k("follow", uid.decode()))
            followed = sum(pipe.execute()) if uids else 0
        yield GaugeMetricFamily(f"{NS}_followed_pods", "Pods whose log a fetch worker holds open (follow=true; "
                                "FOLLOW_MAX_PODS per fetch worker process)", value=followed)
        yield from self._sealing(now)

    def _sealing(self, now: float) -> Iterator[Metric]:
        """The watermark as the last merge saw it (``sealstate``)."""
        state = self.ledger.seal_state()
        yield GaugeMetricFamily(f"{NS}_sealed_up_to_timestamp_seconds", "Every report interval starting before this "
                                "is sealed (0: none yet)", value=self.ledger.sealed_to())
        held = GaugeMetricFamily(f"{NS}_seal_held_back_seconds", "Seconds by which a source (pod, or log file) is "
                                 "behind what sealing the next interval needs, as the last merge saw it (-1: never "
                                 "read past anything)", labels=["pod"])
        for name, seconds in sorted(state.get("held_by", {}).items()):
            if seconds < 0 or seconds > 0:
                held.add_metric([name], float(seconds))
        yield held

    def _counters(self, stats: dict[str, int]) -> Iterator[Metric]:
        lines = CounterMetricFamily(f"{NS}_log_lines", "Log lines read, by outcome and reason",
                                    labels=["outcome", "reason"])
        lines.add_metric(["counted", "tunnel"], stats.get("lines_counted", 0))
        errors = CounterMetricFamily(f"{NS}_fetch_errors", "Fetches that failed and will be retried next round, by kind",
                                     labels=["kind"])
        reports = CounterMetricFamily(f"{NS}_reports", "Report outcomes (parked: waiting for the sweep)",
                                      labels=["outcome"])
        forced_by = CounterMetricFamily(f"{NS}_seal_forced_by", "Intervals sealed without this source (a pod, a log "
                                        "file, or a listing) unreadable for over SEAL_MAX_WAIT", labels=["pod"])
        follows_ended = CounterMetricFamily(f"{NS}_follows_ended", "Follow streams ended (the pod went back to the "
                                            "rounds), by reason", labels=["reason"])
        for outcome in REPORT_OUTCOMES:
            reports.add_metric([outcome], stats.get(f"reports_{outcome}", 0))
        byte_count = CounterMetricFamily(f"{NS}_counted_bytes", "Body bytes counted for tunnels (in: RequestContentSize, "
                                         "out: DownstreamContentSize)", labels=["direction"])
        byte_count.add_metric(["in"], stats.get("bytes_in", 0))
        byte_count.add_metric(["out"], stats.get("bytes_out", 0))
        yield byte_count
        yield CounterMetricFamily(f"{NS}_counted_requests", "Tunnel requests counted", value=stats.get("requests", 0))
        yield CounterMetricFamily(f"{NS}_log_lines_read", "Log lines read (the sum of log_lines_total)",
                                  value=stats.get("lines_read", 0))
        done = {"lines_counted", "lines_read", "bytes_in", "bytes_out", "requests"}
        done |= {f"reports_{o}" for o in REPORT_OUTCOMES}
        for name, (metric, doc) in NAMED.items():
            yield CounterMetricFamily(f"{NS}_{metric}", doc, value=stats.get(name, 0))
            done.add(name)
        for key, value in sorted(stats.items()):
            if key in done:
                continue
            head, _, label = key.partition(":")
            if head in ("ignored", "rejected") and label:
                lines.add_metric([head, label], value)
            elif head == "fetch_errors" and label:
                errors.add_metric([label], value)
            elif head == "seal_forced_by" and label:
                forced_by.add_metric([label], value)
            elif head == "follow_ended" and label:
                follows_ended.add_metric([label], value)
            elif not label:
                yield CounterMetricFamily(f"{NS}_{key}", key.replace("_", " "), value=value)
        yield lines
        yield errors
        yield reports
        yield forced_by
        yield follows_ended

    def _pods(self, now: float, init: dict[str, str] | None) -> Iterator[Metric]:
        records = self.ledger.pod_fetches()
        gone = {uid.decode() for uid, state in self.ledger.r.hgetall(self.ledger.k("podstate")).items()
                if json.loads(state).get("gone_at")}
        newest = max((_f(r.get("last_at")) for r in records.values()), default=0.0)
        window = max(3 * self.s.fetch_every, 30)
        current: dict[str, dict] = {}  # pod name -> its newest record (a replaced pod keeps its name)
        for uid, rec in records.items():
            if uid in gone or _f(rec.get("last_at")) < newest - window:
                continue
            name = rec.get("name", uid)
            if name not in current or _f(rec.get("last_at")) > _f(current[name].get("last_at")):
                current[name] = rec

        lag = GaugeMetricFamily(f"{NS}_pod_lag_seconds", "Seconds since a read of the pod's log last reached its end "
                                "(Redis time); since its first fetch when none has", labels=["pod"])
        at_end = GaugeMetricFamily(f"{NS}_pod_last_read_at_end_timestamp_seconds",
                                   "When a read of the pod's log last reached its end (unix time)", labels=["pod"])
        duration = SummaryMetricFamily(f"{NS}_pod_fetch_duration_seconds", "Time of one fetch task of the pod",
                                       labels=["pod"])
        last = GaugeMetricFamily(f"{NS}_pod_last_fetch_duration_seconds", "Time of the pod's last fetch task",
                                 labels=["pod"])
        errors = CounterMetricFamily(f"{NS}_pod_fetch_errors", "Failed fetches of the pod, by kind",
                                     labels=["pod", "kind"])
        for name, rec in sorted(current.items()):
            end = rec.get("end_at")
            lag.add_metric([name], max(0.0, now - _f(end if end is not None else rec.get("since"), now)))
            if end is not None:
                at_end.add_metric([name], _f(end))
            duration.add_metric([name], count_value=int(_f(rec.get("fetches"))), sum_value=_f(rec.get("seconds_sum")))
            last.add_metric([name], _f(rec.get("last_seconds")))
            for field, value in sorted(rec.items()):
                if field.startswith("err:"):
                    errors.add_metric([name, field[4:]], _f(value))
        yield from (lag, at_end, duration, last, errors)

        ends = [_f(r["end_at"]) for r in records.values() if "end_at" in r]
        if ends:
            newest_end = max(ends)
        elif init is not None:
            newest_end = _f(init.get("created_at"), now)
        else:
            newest_end = now
        yield GaugeMetricFamily(f"{NS}_min_pod_lag_seconds", "Seconds since a read of any pod last reached the end of "
                                "its log (since the ledger was initialised when none has)",
                                value=max(0.0, now - newest_end))

    # Redis memory ----------------------------------------------------------------------------

    def _memory_families(self) -> Iterator[Metric]:
        """used_memory against maxmemory of the ledger's Redis (and the broker's when it is
        another): with noeviction, a full Redis refuses the ledger's commits."""
        servers = [("ledger", self.ledger.r)]
        if self.broker is not self.ledger.r:
            servers.append(("broker", self.broker))
        used = GaugeMetricFamily(f"{NS}_redis_memory_used_bytes", "Redis used_memory (INFO memory)", labels=["redis"])
        limit = GaugeMetricFamily(f"{NS}_redis_memory_max_bytes", "Redis maxmemory (0: no limit)", labels=["redis"])
        headroom = GaugeMetricFamily(f"{NS}_redis_memory_headroom_ratio", "Share of maxmemory still free "
                                     "(1 - used_memory / maxmemory; absent without a limit): at 0 a noeviction "
                                     "Redis refuses writes", labels=["redis"])
        for name, client in servers:
            info = client.info("memory")
            used.add_metric([name], info.get("used_memory", 0))
            limit.add_metric([name], info.get("maxmemory", 0))
            if info.get("maxmemory"):
                headroom.add_metric([name], max(0.0, 1 - info.get("used_memory", 0) / info["maxmemory"]))
        yield from (used, limit, headroom)

    # The broker -------------------------------------------------------------------------------

    def _broker_families(self) -> Iterator[Metric]:
        # The file source's per-host queues (fetch.<host>) too, when it is the source.
        extra = self.s.file_queue_names if self.s.log_source == "file" else []
        queues = list(dict.fromkeys([*(q.value for q in Queue), *extra]))
        with self.broker.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in queue_keys(queue):
                    pipe.llen(key)
            pipe.hlen(UNACKED)
            sizes = pipe.execute()
        waiting = GaugeMetricFamily(f"{NS}_queue_messages", "Messages waiting in a Celery queue (the broker's lists, "
                                    "every priority); not those delivered to a worker", labels=["queue"])
        steps = len(PRIORITY_STEPS)
        for i, queue in enumerate(queues):
            waiting.add_metric([queue], sum(sizes[i * steps:(i + 1) * steps]))
        yield waiting
        yield GaugeMetricFamily(f"{NS}_broker_unacked_messages", "Messages delivered to workers and not acknowledged "
                                "(running, or held for a retry countdown)", value=sizes[-1])
