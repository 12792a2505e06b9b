"""The Prometheus exporter (app/metrics.py) reads everything from Redis: right across
processes (two real workers committing), with conventional names and bounded labels."""

from __future__ import annotations

import re
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.ledger import Ledger
from app.metrics import NS, LedgerCollector, queue_keys
from app.model import ReportKey
from app.settings import Settings
from tests.traffic import TRAEFIK_TEXT, Traffic


def scrape(ledger: Ledger, **settings: object) -> dict[tuple[str, tuple], float]:
    """One scrape: {(sample name, sorted labels): value}."""
    s = Settings(**{"redis_url": "redis://127.0.0.1:1/0", "report_interval": 60, "fetch_interval": 10, **settings})
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger, s, broker=ledger.r))
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(f"{NS}_{name}", tuple(sorted(labels.items())))]


def test_counters_and_gauges_from_the_ledger(r):
    ledger = Ledger(r, "m", 60)
    ledger.initialise(0)
    ledger.incr({"lines_read": 7, "lines_counted": 4, "ignored:other_host": 2, "rejected:invalid_json": 1,
                 "bytes_in": 10, "bytes_out": 20, "requests": 4, "reports_delivered": 3, "gaps": 1,
                 "no_progress": 2, "fetch_errors:kube": 2, "something_new": 5})
    now = ledger.now()
    start = int(now // 60 * 60) - 600  # an interval that ended 9 to 10 minutes ago
    # Made 9 to 10 minutes ago (sealed_at); an amendment of an older interval made now,
    # and a report made by a version without sealed_at (its interval's end counts).
    r.hset(f"m:rep:{start}:tun-a", mapping={"state": "due", "bytes_in": 1, "bytes_out": 1, "requests": 1,
                                             "sealed_at": str(start + 60)})
    r.hset(f"m:rep:{start - 3600}:tun-a:a1", mapping={"state": "pending", "bytes_in": 1, "bytes_out": 1, "requests": 1,
                                                      "sealed_at": str(int(now))})
    r.zadd("m:due", {f"{start - 3600}:tun-a:a1": 0})
    r.zadd("m:due", {f"{start}:tun-a": now + 100})
    r.hset(f"m:rep:{start + 60}:tun-b", mapping={"state": "pending", "bytes_in": 1, "bytes_out": 1, "requests": 1})
    r.zadd("m:due", {f"{start + 60}:tun-b": 0})
    r.zadd("m:dead", {"100:tun-c": now, "160:tun-c": now})
    r.zadd("m:retrying", {f"{start}:tun-a": now + 30, "1:old": now - 30})
    r.zadd("m:open", {str(start + 600): start + 600})
    r.zadd("m:sealed", {str(start): now, str(start - 60): now})
    r.rpush("report", "m1", "m2")
    r.rpush("report\x06\x163", "m3")
    r.rpush("fetch\x06\x169", "m4")
    r.hset("unacked", "tag", "x")

    s = scrape(ledger)
    assert value(s, "log_lines_total", outcome="counted", reason="tunnel") == 4
    assert value(s, "log_lines_total", outcome="ignored", reason="other_host") == 2
    assert value(s, "log_lines_total", outcome="rejected", reason="invalid_json") == 1
    assert value(s, "log_lines_read_total") == 7
    assert value(s, "counted_bytes_total", direction="in") == 10
    assert value(s, "counted_bytes_total", direction="out") == 20
    assert value(s, "counted_requests_total") == 4
    assert value(s, "reports_total", outcome="delivered") == 3
    assert value(s, "reports_total", outcome="dead") == 0
    assert value(s, "gaps_total") == 1
    assert value(s, "no_progress_reads_total") == 2
    assert value(s, "fetch_errors_total", kind="kube") == 2
    assert value(s, "something_new_total") == 5
    assert value(s, "undelivered_reports", state="due") == 1
    assert value(s, "undelivered_reports", state="pending") == 2
    assert value(s, "undelivered_reports", state="queued") == 0
    assert value(s, "undelivered_reports", state="dead") == 2
    assert value(s, "dead_letters") == 2
    assert 540 <= value(s, "oldest_undelivered_report_age_seconds") <= 600 + 5
    assert value(s, "reports_in_retry") == 1
    assert value(s, "intervals", state="open") == 1
    assert value(s, "intervals", state="sealed") == 2
    assert value(s, "queue_messages", queue="report") == 3
    assert value(s, "queue_messages", queue="fetch") == 1
    assert value(s, "broker_unacked_messages") == 1
    assert value(s, "fetch_interval_seconds") == 10
    assert value(s, "report_interval_seconds") == 60
    assert value(s, "ledger_initialised") == 1
    assert value(s, "redis_up") == 1


def test_queue_keys_are_kombus():
    """kombu's Redis transport: the queue's name for priority 0, then <name>\\x06\\x16<step>."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    channel = Channel.__new__(Channel)
    channel.priority_steps = PRIORITY_STEPS
    assert queue_keys("report") == [channel._q_for_pri("report", p) for p in PRIORITY_STEPS]


def test_pod_metrics_lag_and_the_pods_that_count(r):
    ledger = Ledger(r, "p", 60)
    ledger.initialise(0)
    ledger.note_fetch("uid-a", "traefik-a", 0.25, reached_end=True)
    ledger.note_fetch("uid-a", "traefik-a", 0.75, reached_end=False, error="kube_error")
    ledger.note_fetch("uid-b", "traefik-b", 0.5, reached_end=False, error="no_progress")  # never at the end
    ledger.note_fetch("uid-gone", "traefik-gone", 0.1, reached_end=True)
    ledger.update_pod_state("uid-gone", gone_at=ledger.now())
    r.hset("p:podfetch:uid-old", mapping={"name": "traefik-a", "last_at": "1", "since": "1", "end_at": "1",
                                          "fetches": "1", "seconds_sum": "1", "last_seconds": "1"})
    r.zadd("p:podfetch", {"uid-old": ledger.now()})  # a replaced pod under the same name, fetched long ago
    time.sleep(1.1)
    s = scrape(ledger)
    pods = {dict(labels)["pod"] for (name, labels) in s if name == f"{NS}_pod_lag_seconds"}
    assert pods == {"traefik-a", "traefik-b"}, "gone pods and stale records are not exported"
    assert 1 <= value(s, "pod_lag_seconds", pod="traefik-a") < 5
    assert 1 <= value(s, "pod_lag_seconds", pod="traefik-b") < 5  # since its first fetch
    assert value(s, "pod_fetch_duration_seconds_count", pod="traefik-a") == 2
    assert value(s, "pod_fetch_duration_seconds_sum", pod="traefik-a") == 1.0
    assert value(s, "pod_last_fetch_duration_seconds", pod="traefik-a") == 0.75
    assert value(s, "pod_fetch_errors_total", pod="traefik-a", kind="kube_error") == 1
    assert value(s, "pod_fetch_errors_total", pod="traefik-b", kind="no_progress") == 1
    assert (f"{NS}_pod_last_read_at_end_timestamp_seconds", (("pod", "traefik-b"),)) not in s
    assert 1 <= value(s, "min_pod_lag_seconds") < 5
    ledger.forget_pod("uid-a")
    assert "uid-a" not in ledger.pod_fetches()


def test_redis_down_is_a_gauge_not_an_error():
    import redis

    ledger = Ledger(redis.Redis(port=1, socket_connect_timeout=0.5), "x", 60)
    s = scrape(ledger)
    assert value(s, "redis_up") == 0
    assert value(s, "fetch_interval_seconds") == 10


def test_metrics_right_across_two_workers(pipeline, kube):
    """Two real worker processes fetch and report; the exporter, reading only Redis,
    matches what the platform received and what was written, per pod too."""
    pods = [f"traefik-{i}" for i in range(4)]
    for p in pods:
        kube.add_pod(p)
    traffic = Traffic(seed=11)
    pipeline.init_ledger()
    workers = [pipeline.worker(concurrency=1, name="wa"), pipeline.worker(concurrency=1, name="wb")]
    pipeline.beat()
    written = 0
    end = time.monotonic() + 6
    while time.monotonic() < end:
        for p in pods:
            kube.write_many(p, traffic.lines(10))
            kube.write(p, TRAEFIK_TEXT)
            written += 11
        time.sleep(0.2)
    pipeline.wait_quiescent(pods)
    # Both processes committed fetches.
    for w in workers:
        assert re.search(r"Task workers\.fetch\.fetch\[[^]]+\] succeeded", w.output()), w.log_path.name
    time.sleep(1.5)  # at least one more round: every pod read to the end since quiescence
    s = scrape(pipeline.ledger, report_interval=2, fetch_interval=1)
    truth = traffic.expected()
    assert value(s, "counted_requests_total") == sum(t["requests"] for t in truth.values())
    assert value(s, "counted_bytes_total", direction="in") == sum(t["bytes_in"] for t in truth.values())
    assert value(s, "counted_bytes_total", direction="out") == sum(t["bytes_out"] for t in truth.values())
    lines = {dict(labels)["reason"]: v for (name, labels), v in s.items() if name == f"{NS}_log_lines_total"}
    assert sum(lines.values()) == value(s, "log_lines_read_total") == written
    assert lines["tunnel"] == sum(t["requests"] for t in truth.values())
    assert lines["not_access_log"] == written // 11
    assert value(s, "reports_total", outcome="delivered") == len(pipeline.platform.records)
    assert pipeline.delivered() == truth
    for state in ("pending", "queued", "due", "dead"):
        assert value(s, "undelivered_reports", state=state) == 0
    assert value(s, "oldest_undelivered_report_age_seconds") == 0
    for p in pods:
        assert value(s, "pod_fetch_duration_seconds_count", pod=p) >= 1
        assert value(s, "pod_lag_seconds", pod=p) < 3, p
        assert (f"{NS}_pod_fetch_errors_total", (("kind", "kube_error"), ("pod", p))) not in s
    assert value(s, "min_pod_lag_seconds") < 3
    assert value(s, "gaps_total") == 0
    assert value(s, "queue_messages", queue="report") == 0


def test_every_metric_the_rules_and_dashboard_use_is_served(r):
    """A scrape with every kind of data present serves each name the alert rules and the
    Grafana dashboard use (tests/unit/test_monitoring.py checks their PromQL)."""
    from tests.unit.test_monitoring import dashboard_exprs, metric_names, rule_exprs

    ledger = Ledger(r, "n", 60)
    ledger.initialise(0)
    ledger.incr({"lines_read": 3, "lines_counted": 1, "ignored:other_host": 1, "rejected:invalid_json": 1,
                 "gaps": 1, "no_progress": 1, "fetch_errors:kube": 1})
    ledger.note_fetch("uid-a", "traefik-a", 0.5, reached_end=True, error="kube_error")
    # The headroom ratio is served only for a Redis with a maxmemory, as the shipped one has.
    before = r.config_get("maxmemory")["maxmemory"]
    r.config_set("maxmemory", 1 << 30)
    try:
        served = {name for name, _labels in scrape(ledger)}
    finally:
        r.config_set("maxmemory", before)
    used = metric_names(rule_exprs()) | metric_names(dashboard_exprs())
    assert used, "no metric names found"
    assert used <= served, f"not served: {sorted(used - served)}"


def test_the_report_key_shape_the_lua_parses():
    """REPORT_STATES_LUA takes the interval start from ``<start>:<sub>``."""
    assert str(ReportKey(1795485000, "my-tunnel")).split(":")[0] == "1795485000"


def test_unmetered_requests_are_a_total_without_a_tunnel_label(r):
    ledger = Ledger(r, "mu", 60)
    ledger.initialise(0)
    s = scrape(ledger)
    assert value(s, "unmetered_requests_total") == 0  # served before any upgraded connection
    res = ledger.commit("uid/traefik", "", "cid|1|1", {"tun-a": [0, 0, 2], "tun-b": [5, 6, 1]},
                        {"requests": 3, "unmetered_requests": 3}, unmetered={"tun-a": 2, "tun-b": 1})
    assert res.status.value == "ok"
    s = scrape(ledger)
    assert value(s, "unmetered_requests_total") == 3
    assert not [key for key in s if key[0] == f"{NS}_unmetered_requests_total" and key[1]]  # no labels


def test_file_source_host_queues_are_counted_too(r):
    ledger = Ledger(r, "fileq", 60)
    ledger.initialise(0)
    for key, n in (("fetch.host-a", 2), (queue_keys("fetch.host-b")[3], 1), ("report", 4)):
        r.rpush(key, *[b"{}"] * n)
    files = scrape(ledger, log_source="file", log_files="/var/log/traefik/access.log*",
                   file_queues="fetch.host-a,fetch.host-b")
    assert value(files, "queue_messages", queue="fetch.host-a") == 2
    assert value(files, "queue_messages", queue="fetch.host-b") == 1
    assert value(files, "queue_messages", queue="report") == 4
    pods = scrape(ledger)  # the Kubernetes source: only fetch and report
    assert {labels for name, labels in pods if name == f"{NS}_queue_messages"} == {
        (("queue", "fetch"),), (("queue", "report"),)}


def test_redis_memory_headroom(r):
    """used_memory against maxmemory: the headroom a noeviction Redis has before it
    refuses the ledger's commits."""
    ledger = Ledger(r, "mem", 60)
    before = r.config_get("maxmemory")["maxmemory"]
    r.config_set("maxmemory", str(1 << 30))
    try:
        s = scrape(ledger)
        used = value(s, "redis_memory_used_bytes", redis="ledger")
        assert 0 < used < 1 << 30
        assert value(s, "redis_memory_max_bytes", redis="ledger") == 1 << 30
        assert value(s, "redis_memory_headroom_ratio", redis="ledger") == pytest.approx(1 - used / (1 << 30), abs=0.01)
        r.config_set("maxmemory", "0")
        s = scrape(ledger)
        assert value(s, "redis_memory_max_bytes", redis="ledger") == 0
        assert not [k for k in s if k[0] == f"{NS}_redis_memory_headroom_ratio"]  # no limit: no headroom
    finally:
        r.config_set("maxmemory", before)


def test_sealing_metrics_name_the_pod_holding_back_and_count_amendments(r):
    from app.ledger import Partial
    from app.rounds import merge
    from app.settings import Settings

    ledger = Ledger(r, "seal-m", 60)
    ledger.initialise(0)
    now = ledger.now()
    ledger.note_listing("pods", now, {"uid-a": ("traefik-a", "cid-a"), "uid-b": ("traefik-b", "cid-b")})
    ledger.commit("uid-a/traefik", "", "cid-a|1|1", source="uid-a", record=Ledger.read_record("cid-a", now, 0))
    # traefik-b was never read: it holds sealing back, and the merge says so.
    merge(ledger, Settings())
    start = int(now) // 60 * 60 - 600
    ledger.r.set(ledger.k("sealedto"), start + 60)
    ledger.commit("uid-a/traefik", "cid-a|1|1", "cid-a|2|1", parts={start: Partial({"tun": [1, 2, 3]})})
    got = scrape(ledger)
    assert got[("traefik_metrics_scraper_amendments_total", ())] == 1
    assert got[("traefik_metrics_scraper_seal_forced_total", ())] == 0
    assert got[("traefik_metrics_scraper_sealed_up_to_timestamp_seconds", ())] == start + 60
    held = {labels: v for (name, labels), v in got.items() if name == "traefik_metrics_scraper_seal_held_back_seconds"}
    assert held == {(("pod", "traefik-b"),): -1.0}


def test_a_forced_seal_names_the_pod_it_sealed_without(r):
    """seal_forced_by_total{pod}: how many intervals were sealed without each source
    unreadable for over SEAL_MAX_WAIT (the total alone does not say which pod)."""
    from app.rounds import merge
    from app.settings import Settings

    ledger = Ledger(r, "seal-f", 60)
    ledger.initialise(0)
    now = ledger.now()
    ledger.note_listing("pods", now, {"uid-a": ("traefik-a", "cid-a"), "uid-b": ("traefik-b", "cid-b")})
    ledger.commit("uid-a/traefik", "", "cid-a|1|1", source="uid-a", record=Ledger.read_record("cid-a", now, 0))
    # traefik-b was read ten minutes ago and fails since: past SEAL_MAX_WAIT (180 s).
    ledger.commit("uid-b/traefik", "", "cid-b|1|1", source="uid-b", record=Ledger.read_record("cid-b", now - 600, 0))
    ledger.r.hset(ledger.k("readfail"), "uid-b", f"{now - 590:.3f}")
    ledger.r.set(ledger.k("sealedto"), int(now - 900) // 60 * 60)
    merge(ledger, Settings(report_interval=60, seal_max_wait=180))
    got = scrape(ledger)
    forced = got[("traefik_metrics_scraper_seal_forced_total", ())]
    by = {labels: v for (name, labels), v in got.items() if name == "traefik_metrics_scraper_seal_forced_by_total"}
    assert forced >= 8 and by == {(("pod", "traefik-b"),): forced}
