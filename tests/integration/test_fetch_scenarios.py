"""Fetch-side failure scenarios on real workers: the ledger equals the truth exactly.

Each test writes Traefik lines into the fake Kubernetes API, lets real Celery
workers (and beat) read them, and compares what the platform stub received with the
generated ground truth once the pipeline is quiescent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from app.model import Cursor
from sim.procs import wait_until
from tests.traffic import TRAEFIK_TEXT, Traffic

NS = 1_000_000_000
POD = "traefik-0"


def log_requests(kube, pod: str) -> int:
    return sum(1 for _, path, _ in kube.requests if path.endswith(f"/pods/{pod}/log"))


def wait_read(pipeline, pods, timeout=30):
    wait_until(lambda: pipeline.at_end(pods), timeout, interval=0.1, what=f"cursors at the end of {pods}")


def test_many_lines_sharing_one_timestamp_across_reads(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=11)
    pipeline.init_ledger()
    pipeline.worker()
    pipeline.beat()
    ts = time.time_ns()
    for _ in range(3):
        kube.write_many(POD, traffic.lines(40), ts_ns=ts)  # same nanosecond every time
        wait_read(pipeline, [POD])
    kube.write_many(POD, traffic.lines(10), ts_ns=ts + NS // 2)  # same second, later
    kube.write_many(POD, traffic.lines(10), ts_ns=ts + NS)  # next second
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.stats()["lines_counted"] == sum(v["requests"] for v in traffic.expected().values())


def test_old_kubelet_timestamps(pipeline, kube):
    kube.add_pod(POD, old_kubelet=True)
    traffic = Traffic(seed=12)
    pipeline.init_ledger()
    pipeline.worker()
    pipeline.beat()
    base = (time.time_ns() // NS) * NS
    for i, frac in enumerate([0, 100_000_000, 120_000_000, 120_000_000, 999_999_999]):
        kube.write_many(POD, traffic.lines(5), ts_ns=base + i * NS + frac)
        wait_read(pipeline, [POD])
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert "rejected:no_timestamp" not in pipeline.ledger.stats()


def test_restart_mid_interval_drains_previous_container(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=13)
    pipeline.init_ledger()
    pipeline.worker()
    pipeline.beat()
    kube.write_many(POD, traffic.lines(30))
    wait_read(pipeline, [POD])
    kube.write_many(POD, traffic.lines(30))  # written, not yet read when the container dies
    kube.restart(POD)
    kube.write_many(POD, traffic.lines(30))
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.gaps() == []


def test_restart_between_listing_and_reading(pipeline, kube):
    """The log is served after the container restarted: those lines belong to the new
    container, so nothing may be committed against the old cursor."""
    kube.add_pod(POD)
    traffic = Traffic(seed=14)
    pipeline.init_ledger()
    w = pipeline.worker()
    kube.write_many(POD, traffic.lines(20))
    pipeline.fetch(POD)
    wait_read(pipeline, [POD])
    kube.write_many(POD, traffic.lines(20))
    kube.delay(1.5)
    before = log_requests(kube, POD)
    pipeline.fetch(POD)
    wait_until(lambda: log_requests(kube, POD) > before, 10, what="the log request")
    kube.restart(POD)  # while the request waits: it will be served from the new container
    kube.write_many(POD, traffic.lines(20))
    wait_until(lambda: "the container changed during the read" in w.output(), 20, what="the restart to be noticed")
    kube.delay(0)
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.stats()["fetch_restarted"] >= 1
    assert pipeline.ledger.gaps() == []


def test_two_restarts_between_reads_record_a_gap(pipeline, kube):
    kube.add_pod(POD)
    read = Traffic(seed=15)
    pipeline.init_ledger()
    pipeline.worker()
    kube.write_many(POD, read.lines(10))
    pipeline.fetch(POD)
    wait_read(pipeline, [POD])
    lost = Traffic(seed=16)
    kube.write_many(POD, lost.lines(10))
    kube.restart(POD)
    kube.write_many(POD, lost.lines(10))
    kube.restart(POD)  # the first container's log is no longer served
    kube.write_many(POD, read.lines(10))
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == read.expected()
    gaps = pipeline.ledger.gaps()
    assert len(gaps) == 1 and gaps[0]["pod"] == POD and "restarted more than once" in gaps[0]["reason"]


def test_pod_replaced_while_old_one_terminates(pipeline, kube):
    kube.add_pod("traefik-old")
    traffic = Traffic(seed=17)
    pipeline.init_ledger()
    w = pipeline.worker()
    pipeline.beat()
    kube.write_many("traefik-old", traffic.lines(20))
    wait_read(pipeline, ["traefik-old"])
    kube.terminate("traefik-old", grace_seconds=60)
    kube.add_pod("traefik-new")
    reads = log_requests(kube, "traefik-old")
    for _ in range(3):
        kube.write_many("traefik-old", traffic.lines(10))  # last lines during the grace period
        kube.write_many("traefik-new", traffic.lines(10))
        wait_read(pipeline, ["traefik-old", "traefik-new"])
    wait_until(lambda: log_requests(kube, "traefik-old") >= reads + 2, 20, what="two reads while terminating")
    kube.delete("traefik-old")  # the grace period is over
    kube.write_many("traefik-new", traffic.lines(10))
    pipeline.wait_quiescent(["traefik-new"])
    assert pipeline.delivered() == traffic.expected()
    assert "is terminating" in w.output()


def test_limit_bytes_smaller_than_an_intervals_log(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=18)
    pipeline.init_ledger()
    pipeline.worker(FETCH_MAX_BYTES="8192", LOG_LINE_MAX_BYTES="4096")
    pipeline.beat(FETCH_MAX_BYTES="8192", LOG_LINE_MAX_BYTES="4096")
    base = time.time_ns()
    # ~85 KB at four lines a second (~3.4 KB a second): a read from floor(T) re-reads
    # at most one second, so each 8 KiB read makes progress; about 17 reads in all
    for i in range(100):
        kube.write(POD, traffic.line(), ts_ns=base + i * NS // 4)
    pipeline.wait_quiescent([POD], timeout=90)
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.stats().get("no_progress", 0) == 0


def test_no_progress_is_reported(pipeline, kube):
    kube.add_pod(POD)
    kube.add_pod("traefik-ok")
    stuck = Traffic(seed=19)
    fine = Traffic(seed=20)
    pipeline.init_ledger()
    w = pipeline.worker(FETCH_MAX_BYTES="8192", LOG_LINE_MAX_BYTES="4096")
    pipeline.beat(FETCH_MAX_BYTES="8192", LOG_LINE_MAX_BYTES="4096")
    kube.write_many(POD, stuck.lines(40), ts_ns=time.time_ns())  # ~36 KB in one nanosecond
    kube.write_many("traefik-ok", fine.lines(5))
    wait_until(lambda: pipeline.ledger.stats().get("no_progress", 0) >= 2, 30, what="no-progress reports")
    assert f"NO PROGRESS reading pod traefik/{POD}" in w.output()
    pipeline.wait_quiescent(["traefik-ok"])
    # the first read of the stuck pod consumed the complete lines within 8 KiB: those
    # are counted, once; nothing after them ever is
    consumed = Cursor.decode(pipeline.ledger.cursors()[f"{kube.pod_uid(POD)}/traefik"]).n
    assert 0 < consumed < 40
    assert pipeline.delivered() == stuck.first(consumed).merged(fine)


def test_two_fetches_of_one_pod_at_once(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=21)
    pipeline.init_ledger()
    pipeline.worker(concurrency=2)
    kube.write_many(POD, traffic.lines(50))
    kube.delay(1.0)
    before = log_requests(kube, POD)
    pipeline.fetch(POD)
    pipeline.fetch(POD)
    wait_until(lambda: log_requests(kube, POD) >= before + 2, 20, what="two reads at once")
    wait_until(lambda: pipeline.ledger.stats().get("fetch_conflicts", 0) >= 1, 20, what="the loser's conflict")
    kube.delay(0)
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()


def test_fetch_task_delivered_twice(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=22)
    pipeline.init_ledger()
    pipeline.worker(concurrency=1)
    kube.write_many(POD, traffic.lines(30))
    uid = kube.pod_uid(POD)
    for _ in range(2):  # the same message twice, as a redelivery would
        pipeline.client.send_task("workers.fetch.fetch", args=(POD, uid), queue="fetch", task_id="same-task-id")
    wait_read(pipeline, [POD])
    wait_until(lambda: log_requests(kube, POD) >= 2, 20, what="the second delivery to run")
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()


def test_pool_process_killed_mid_fetch(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=23)
    pipeline.init_ledger()
    w = pipeline.worker(concurrency=1)
    kube.write_many(POD, traffic.lines(40))
    kube.delay(3.0)
    before = log_requests(kube, POD)
    pipeline.fetch(POD)
    wait_until(lambda: log_requests(kube, POD) > before, 20, what="the fetch to be mid-read")
    children = w.pool_children()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "WorkerLostError" in w.output() or "exited with 'signal 9" in w.output(), 20, what="the loss to be seen")
    kube.delay(0)
    # task_reject_on_worker_lost requeues the fetch at once: no beat needed to finish it
    wait_read(pipeline, [POD], timeout=40)
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()


def test_rotation_past_the_cursor_is_a_gap(pipeline, kube):
    kube.add_pod(POD)
    read = Traffic(seed=24)
    lost = Traffic(seed=25)
    kept = Traffic(seed=26)
    pipeline.init_ledger()
    w = pipeline.worker()
    kube.write_many(POD, read.lines(10))
    pipeline.fetch(POD)
    wait_read(pipeline, [POD])
    cursor_t = Cursor.decode(pipeline.ledger.cursors()[f"{kube.pod_uid(POD)}/traefik"]).t_ns
    time.sleep(0.002)  # distinct timestamps for what follows
    for line in lost.lines(10):
        kube.write(POD, line)
    for line in kept.lines(10):
        kube.write(POD, line)
    kube.rotate(POD, keep_last=10)  # the cursor's lines and the ten "lost" ones are gone
    first_kept = kube.log_lines(POD)[0][0]
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == read.merged(kept)
    gaps = pipeline.ledger.gaps()
    assert len(gaps) == 1
    assert (gaps[0]["from_ns"], gaps[0]["to_ns"]) == (cursor_t, first_kept)
    assert pipeline.ledger.stats()["gaps"] == 1
    assert f"GAP in the log of pod traefik/{POD}" in w.output()


def test_merge_that_never_ran_is_recovered_by_the_sweep(pipeline, kube):
    """Fetches without their chord callback: only the sweep can merge. (The listing a
    plan records for the watermark is written here, as a plan whose merge was lost
    leaves it; fetched after it, the pod's read is then past the interval's end.)"""
    from app.ledger import Ledger

    kube.add_pod(POD)
    traffic = Traffic(seed=27)
    pipeline.init_ledger()
    pipeline.worker(FETCH_TIME_LIMIT="5")
    kube.write_many(POD, traffic.lines(30))
    led = Ledger(pipeline.r, pipeline.prefix, 1)
    pipeline.fetch(POD)
    wait_read(pipeline, [POD])
    assert pipeline.platform.records == []
    deadline = time.monotonic() + 40
    while not pipeline.settled():
        assert time.monotonic() < deadline, pipeline.logs()
        # A plan's listing (its merge lost), a fetch after it, then the sweep.
        led.note_listing("pods", led.now(), {kube.pod_uid(POD): (POD, None)})
        pipeline.fetch(POD)
        time.sleep(0.5)
        pipeline.send("workers.maintenance.sweep")
        time.sleep(1)
    assert pipeline.delivered() == traffic.expected()


def test_lost_report_message_is_resent_by_the_sweep(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=28)
    pipeline.init_ledger()
    pipeline.worker(queues="fetch")  # nobody consumes reports yet
    pipeline.beat()
    kube.write_many(POD, traffic.lines(30))
    wait_read(pipeline, [POD])
    wait_until(lambda: pipeline.r.zcard(f"{pipeline.prefix}:open") == 0 and pipeline.r.llen("report") > 0,
               20, what="the reports to be enqueued")
    pipeline.r.delete("report")  # the broker loses the messages
    pipeline.worker(queues="report", name="reporter")
    # the sweep re-enqueues them once their lease (REPORT_LEASE=6 s) ran out
    pipeline.wait_quiescent([POD], timeout=60)
    assert pipeline.delivered() == traffic.expected()


def test_ledger_lost_stops_fetching(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=29)
    pipeline.init_ledger()
    w = pipeline.worker()
    kube.write_many(POD, traffic.lines(10))
    pipeline.fetch(POD)
    wait_read(pipeline, [POD])
    pipeline.r.delete(f"{pipeline.prefix}:init")  # Redis lost data
    kube.write_many(POD, traffic.lines(10))
    cursors = pipeline.ledger.cursors()
    pipeline.fetch(POD)
    wait_until(lambda: "refusing to read logs" in w.output(), 20, what="the refusal")
    assert pipeline.ledger.cursors() == cursors
    pipeline.beat()
    wait_until(lambda: "not fetching" in w.output(), 20, what="plan to refuse")
    assert pipeline.ledger.init_record() is None
    assert pipeline.ledger.cursors() == cursors
    assert "init-ledger" in w.output()


def test_pod_without_access_lines_warns_once(pipeline, kube):
    kube.add_pod(POD)
    pipeline.init_ledger()
    w = pipeline.worker()
    pipeline.beat()
    for _ in range(5):
        kube.write(POD, TRAEFIK_TEXT)
        before = log_requests(kube, POD)
        wait_until(lambda b=before: log_requests(kube, POD) > b + 1, 20, what="another read")
    wait_until(lambda: "no access-log lines" in w.output(), 20, what="the warning")
    assert w.output().count("no access-log lines") == 1
    assert "accessLog.filePath" in w.output()


def test_rbac_forbidden_is_reported_clearly(pipeline, kube):
    kube.add_pod(POD)
    pipeline.init_ledger()
    w = pipeline.worker()
    uid = kube.pod_uid(POD)
    kube.forbid(True)
    pipeline.send("workers.fetch.fetch", POD, uid)
    wait_until(lambda: "pods/log" in w.output() or "RoleBinding" in w.output(), 20, what="the RBAC error")
    assert "Role and RoleBinding" in w.output()
    assert pipeline.ledger.stats().get("fetch_errors:forbidden", 0) >= 1


@pytest.mark.parametrize("status", [500, 503])
def test_kube_api_errors_keep_the_cursor(pipeline, kube, status):
    kube.add_pod(POD)
    traffic = Traffic(seed=30)
    pipeline.init_ledger()
    pipeline.worker()
    kube.write_many(POD, traffic.lines(10))
    kube.fail_next(3, status=status, path_contains="/log")
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.stats()["fetch_errors:kube"] >= 1


def test_restart_before_the_first_read_drains_the_previous_container(pipeline, kube):
    kube.add_pod(POD)
    traffic = Traffic(seed=31)
    pipeline.init_ledger()
    kube.write_many(POD, traffic.lines(25))
    kube.restart(POD)  # no cursor yet: the first read must start with the previous container
    kube.write_many(POD, traffic.lines(25))
    pipeline.worker()
    pipeline.beat()
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.gaps() == []


def test_zoned_stamps_and_busy_stderr_are_billed_exactly(pipeline, kube):
    """A node stamping in +08:00, and Traefik's own log busy on stderr: its reader stamps
    lines up to 0.3 s before or after the access lines around them (within
    LOG_REORDER_WINDOW), across many reads."""
    kube.add_pod(POD)
    rng = random.Random(32)
    kube.configure_log(POD, zone="+08:00", skew={"stderr": lambda: rng.uniform(-0.3, 0.3)})
    traffic = Traffic(seed=32)
    pipeline.init_ledger()
    pipeline.worker()
    pipeline.beat()
    for _ in range(5):
        for _ in range(40):
            kube.append_now(POD, traffic.line())
            for _ in range(rng.randrange(3)):
                kube.append_now(POD, TRAEFIK_TEXT, stream="stderr")
            time.sleep(rng.choice([0, 0, 0.01]))
        wait_read(pipeline, [POD])
    lines = kube.log_lines(POD)
    assert any(b < a for (a, _), (b, _) in zip(lines, lines[1:], strict=False)), "stamps never went backwards"
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.gaps() == []
    stats = pipeline.ledger.stats()
    assert not any("timestamp" in key for key in stats)
    # The fake stamps a skewed stream's line no earlier than the previous line of its
    # stream, so two of Traefik's identical stderr lines can share stamp and bytes; a
    # follow stream takes the second, met after an older line, as a repeat (not counted;
    # not billable). containerd stamps each line apart (ns).
    assert stats["lines_read"] + stats.get("follow_repeated_lines", 0) == len(lines)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_fetch_over_its_time_limit_is_a_read_failure(pipeline, kube, pool):
    """A pod whose fetches keep hitting FETCH_TIME_LIMIT (a log request that hangs) must
    count as a failed read, or it would hold sealing back with no limit (SEAL_MAX_WAIT).
    The thread pool (the fetch worker's, in compose and the manifests) enforces no Celery
    time limit: the read's own deadline stops it."""
    kube.add_pod(POD)
    pipeline.init_ledger()
    worker = pipeline.worker(FETCH_TIME_LIMIT="5", pool=pool, concurrency=1)
    kube.write_many(POD, Traffic(seed=31).lines(3))
    kube.delay(8)  # each log request answers after the soft limit
    uid = kube.pod_uid(POD)
    try:
        pipeline.fetch(POD)
        record = wait_until(lambda: (r := pipeline.ledger.read_records().get(uid)) and r.fail_since and r,
                            timeout=30, interval=0.2, what="the timed-out fetch noted as a failed read")
    finally:
        kube.delay(0)
    assert record.fail_since <= pipeline.ledger.now()
    assert "over FETCH_TIME_LIMIT (5s); nothing committed" in worker.output()
    assert pipeline.ledger.cursors() == {}


def test_a_corrupt_size_near_two_to_the_63_is_rejected_and_metering_goes_on(pipeline, kube):
    """A new user's trial: one line with ``"DownstreamContentSize":9210000000000000000``
    (under 2**63 - 1, so the parser took it) made every commit of its pod overflow
    ``commit.lua``'s 64-bit check, and nothing after it was ever metered. Sizes above
    ``app.parser.MAX_SIZE`` (2**53 - 1) are rejected as ``size_too_large`` since."""
    kube.add_pod(POD)
    traffic = Traffic(seed=31)
    pipeline.init_ledger()
    pipeline.worker()
    pipeline.beat()
    kube.write_many(POD, traffic.lines(20))
    wait_read(pipeline, [POD])
    corrupt = json.loads(Traffic(seed=32).line(traffic.tunnels[0]))  # not in the truth
    corrupt["DownstreamContentSize"] = 9_210_000_000_000_000_000
    kube.write(POD, json.dumps(corrupt, sort_keys=True, separators=(",", ":")).encode())
    kube.write_many(POD, traffic.lines(20))  # after it, in the same reads
    pipeline.wait_quiescent([POD])
    assert pipeline.delivered() == traffic.expected()
    stats = pipeline.ledger.stats()
    assert stats.get("rejected:size_too_large") == 1, stats
    assert stats["lines_read"] == 41
    assert stats["lines_counted"] == sum(v["requests"] for v in traffic.expected().values())
