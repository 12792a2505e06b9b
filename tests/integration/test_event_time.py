"""Usage lands in the report interval its lines were stamped in (issue 11), end to end:
real Celery workers and beat, a real redis-server, the simulated Kubernetes API (which
stamps every line as the kubelet does) and the platform stub.

Every test compares, per (interval, tunnel), the platform's accepted records (originals
plus amendments, grouped by ``timestamp`` = interval end and subdomain, cross-checked
against the Idempotency-Key) with the lines the fake API stamped in that interval, exactly
(``sim/event_truth.py``), and checks that no Idempotency-Key was logged twice or sent with
two bodies. Intervals are 5 s and pods are read every second, so a line read in a later
interval than its stamp's (what processing-time placement did) shows as a difference.

- steady traffic on three pods;
- a 15 s outage of every worker and beat (SIGKILL), traffic going on: the backlog lands in
  the intervals where it was stamped, sealed by the watermark, no spike, no amendment;
- a container restart just before an interval ends: the previous container is drained
  into its own intervals;
- a rolling update (new pods added, old ones terminating, written to until they exit);
- a pod whose log answers 500 for longer than ``SEAL_MAX_WAIT``: the interval is sealed
  after the maximum wait, the pod's late lines arrive as amendments, each delivered once;
- the migration: a ledger written by the pre-issue-11 version (commit ``PRE11``, exported
  with ``git archive``), old and new workers committing side by side during the scraper's own
  rolling update, then new workers only: no line counted twice or lost.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.ledger import Ledger
from sim.event_truth import (
    amendment_gaps,
    delivered,
    diff,
    interval_of,
    needless_resends,
    platform_cells,
    platform_totals,
    repeated_keys,
    stamped_writer,
    stop_writer,
    table,
    truth_cells,
    truth_totals,
    write_at,
)
from sim.fake_kube import NS_PER_S, PodNotFound
from sim.procs import CeleryProcess, wait_until

RI = 5  # REPORT_INTERVAL (s): divides 86400
SCRAPER_ID = "test"
ENV = {
    "REPORT_INTERVAL": str(RI),
    "FETCH_INTERVAL": "1",
    "SCRAPER_ID": SCRAPER_ID,
    "LOG_REORDER_WINDOW": "1",
    "SEAL_CLOCK_MARGIN": "2",
}
RATE = 30  # lines a second per pod (LineMaker's mix: ~78 % tunnel lines)
ROOT = Path(__file__).resolve().parents[2]
# The scraper as deployed before issue 11 (processing-time intervals): the parent of the
# commit that made intervals event-time (eef8d93).
PRE11 = os.environ.get("TMS_PRE11_COMMIT", "72e569d")

# The sealing round's task (3755e62), unknown to workers of 72e569d (the test_tasks snapshot pins it).
SEAL_ROUND_TASK = "workers.maintenance.seal_round"


@pytest.fixture
def ev(pipeline):
    """The pipeline harness with 5 s report intervals, a read every second."""
    pipeline.env.update(ENV)
    pipeline.report_interval = RI
    pipeline.ledger = Ledger(pipeline.r, pipeline.prefix, RI)
    return pipeline


@pytest.fixture
def writers():
    started = []
    yield started
    for w in started:
        w.stop.set()
    for w in started:
        if w.thread.ident is not None:
            w.thread.join(10)


def start_writers(kube, pods, writers, seed=0, rate=RATE):
    for i, p in enumerate(pods):
        writers.append(stamped_writer(kube, p, rate, seed=seed * 100 + i))
    return writers


def running(ev, kube, platform, writers, pods, seed: int) -> None:
    """Pods, a ledger, a worker and beat, the pods logging; back once a report arrived."""
    for p in pods:
        kube.add_pod(p)
    ev.init_ledger()
    ev.worker()
    ev.beat()
    start_writers(kube, pods, writers, seed=seed)
    first_record(platform)


def stamps(writers) -> list[int]:
    out = []
    for w in writers:
        with w.lock:
            out += [s for s, *_ in w.maker.stamped]
    return out


def wait_intervals(writers, n: int, after: float | None = None, timeout: float = 60) -> None:
    """Wait until the writers' lines (stamped after ``after``, epoch s) span ``n`` intervals."""
    floor = None if after is None else int(after * 1e9)

    def spanned() -> bool:
        got = {interval_of(s, RI) for s in stamps(writers) if floor is None or s >= floor}
        return len(got) >= n

    wait_until(spanned, timeout, interval=0.1, what=f"lines stamped over {n} intervals")


def reports(platform):
    return delivered(platform.records, SCRAPER_ID, RI)


def evidence(ev, writers, platform, since=None) -> str:
    truth = truth_cells(writers, RI, since)
    got = reports(platform)
    return (f"\n{table(truth, got)}\ndiff:\n" + "\n".join(diff(truth, platform_cells(got, since))[:40])
            + f"\nrepeated keys: {repeated_keys(platform.records)}\nstats={ev.ledger.stats()}\n{ev.logs(4000)}")


def settle(ev, writers, platform, pods, timeout: float = 60, since: int | None = None) -> None:
    """Stop the writers, then wait until every pod is read to the end, nothing is open or
    due in the ledger and the platform's per-(interval, tunnel) sums equal the truth; on
    timeout, fail with the per-interval table and the differences."""
    for w in writers:
        stop_writer(w)
    truth = truth_cells(writers, RI, since)

    def done() -> bool:
        return (ev.at_end(pods) and ev.settled()
                and platform_cells(reports(platform), since) == truth)

    try:
        wait_until(done, timeout, interval=0.25, what="the platform's sums per interval to equal the truth")
    except TimeoutError as e:
        raise AssertionError(f"{e}: at_end={ev.at_end(pods)} settled={ev.settled()}"
                             + evidence(ev, writers, platform, since)) from None


def assert_exact(ev, writers, platform, since: int | None = None, kills: tuple[float, ...] = ()) -> list:
    """Per (interval, tunnel) exact, each key logged once with one body, never POSTed
    again once its answer was received (the stub deduplicates, so such a resend would
    not show in the sums) unless the worker was killed (at ``kills``) right after,
    amendments numbered 1..n; returns the parsed reports."""
    got = reports(platform)
    truth = truth_cells(writers, RI, since)
    assert diff(truth, platform_cells(got, since)) == [], evidence(ev, writers, platform, since)
    assert repeated_keys(platform.records) == {}
    resent = needless_resends(platform.attempts, kills)
    assert resent == [], [a for a in platform.attempts if a.key in resent]
    assert [a.key for a in platform.attempts if a.outcome == "mismatch"] == []  # same key, another body
    assert amendment_gaps(got) == []
    assert ev.ledger.gaps() == []
    return got


def amendments(got) -> list:
    return [d for d in got if d.amendment]


def stat(ev, name: str) -> int:
    return int(ev.ledger.stats().get(name, 0))


def first_record(platform, timeout: float = 40) -> None:
    if not platform.wait_for(lambda: platform.records, timeout):
        raise AssertionError("no report reached the platform")


# Steady traffic ---------------------------------------------------------------------------


def test_steady_traffic_lands_in_the_interval_of_its_stamp(ev, kube, platform, writers):
    """Three pods logging steadily, one on a kubelet older than 1.19 (stamps with the
    fraction's trailing zeros trimmed), one on a node stamping in +08:00; and a fourth
    whose lines are stamped on the last nanosecond of an interval and the first of the
    next, three times: each lands on its side of the boundary."""
    pods = ["traefik-a", "traefik-b", "traefik-c", "traefik-edge"]
    kube.add_pod("traefik-a")
    kube.add_pod("traefik-b", old_kubelet=True)
    for p in pods[2:]:
        kube.add_pod(p)
        kube.configure_log(p, zone="+08:00")
    ev.init_ledger()
    ev.worker()
    ev.beat()
    start_writers(kube, pods[:3], writers, seed=1)
    edge = stamped_writer(kube, "traefik-edge", RATE, seed=19, start=False)
    writers.append(edge)
    for _ in range(3):
        boundary = (int(time.time()) // RI + 1) * RI
        wait_until(lambda b=boundary: time.time() > b - 0.3, RI + 1, interval=0.01)
        write_at(edge, boundary * NS_PER_S - 1, n=4)
        write_at(edge, boundary * NS_PER_S, n=4)
        wait_until(lambda b=boundary: time.time() > b + 0.1, 2, interval=0.01)
    wait_intervals(writers, 4)
    settle(ev, writers, platform, pods)
    got = assert_exact(ev, writers, platform)
    assert len({d.start for d in got}) >= 4
    assert amendments(got) == [] and stat(ev, "amendments") == 0  # nothing was late
    assert stat(ev, "seal_forced") == 0


# An outage of every worker ------------------------------------------------------------------


def test_backlog_after_an_outage_of_every_worker_lands_where_it_was_stamped(ev, kube, platform, writers, capsys):
    """Workers and beat SIGKILLed for 15 s while the pods keep logging; restarted, they
    read the backlog and the watermark seals its intervals as it catches up: each interval
    gets exactly what was stamped in it (no spike in the interval of the catch-up), with no
    amendment and no forced seal (every pod was readable). traefik-b's container restarts
    halfway through the outage: the first half of its backlog is read from the previous
    container. Reads are capped at 64 KiB, so the backlog takes several reads cut at
    ``limitBytes``: a cut read did not reach the end of the log and moves the watermark
    only by its highest stamp."""
    ev.env.update(FETCH_MAX_BYTES="65536", LOG_LINE_MAX_BYTES="16384")
    pods = ["traefik-a", "traefik-b"]
    running(ev, kube, platform, writers, pods, seed=2)
    for proc in list(ev.procs):
        os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait()
    down = time.time()
    # The outage: 15 s during which nothing reaches the platform (a request cut by the
    # kill may still complete in the stub within its first second).
    wait_until(lambda: time.time() >= down + 1, 2)
    seen = len(platform.records)
    assert not platform.wait_for(lambda: len(platform.records) > seen, timeout=down + 7 - time.time())
    kube.restart("traefik-b")  # half its backlog is in the previous container
    assert not platform.wait_for(lambda: len(platform.records) > seen, timeout=down + 15 - time.time())
    up = time.time()
    after = ev.worker(name="after")
    ev.beat()
    wait_intervals(writers, 2, after=time.time())
    settle(ev, writers, platform, pods, timeout=90)
    got = assert_exact(ev, writers, platform, kills=(down,))
    outage = sorted({s for s in (d.start for d in got) if down <= s and s + RI <= up})
    assert len(outage) >= 2, outage  # whole intervals stamped while no worker ran...
    truth = truth_cells(writers, RI)
    for s in outage:  # ...each reported with its own traffic
        assert sum(v[2] for c, v in truth.items() if c[0] == s) > 0
    assert amendments(got) == [] and stat(ev, "amendments") == 0
    assert stat(ev, "seal_forced") == 0
    assert "'cut': True" in after.output()  # the backlog was read in several cut reads
    with capsys.disabled():
        print(f"\noutage {time.strftime('%H:%M:%S', time.gmtime(down))}-{time.strftime('%H:%M:%S', time.gmtime(up))}"
              f" UTC\n{table(truth, got)}")


# A container restart ------------------------------------------------------------------------


def test_container_restart_drains_the_previous_container_into_its_intervals(ev, kube, platform, writers):
    """The container restarts 0.5 s before an interval ends, with lines of the old one not
    read yet: they are read from the previous container (``previous=true``) and land in
    the interval they were stamped in, which waits for them."""
    pods = ["traefik-a", "traefik-b"]
    running(ev, kube, platform, writers, pods, seed=3)
    wait_until(lambda: RI - 0.6 < time.time() % RI < RI - 0.4, RI + 1, interval=0.01, what="0.5 s before a boundary")
    kube.restart("traefik-a")
    wait_intervals(writers, 3, after=time.time())
    settle(ev, writers, platform, pods)
    got = assert_exact(ev, writers, platform)
    assert any(q.get("previous") == "true" for _, path, q in kube.requests if path.endswith("/traefik-a/log"))
    assert amendments(got) == [] and stat(ev, "seal_forced") == 0


# A rolling update of Traefik ----------------------------------------------------------------


def test_rolling_update_of_traefik(ev, kube, platform, writers):
    """maxSurge 1: a new pod is added, the old one terminates and keeps logging its
    in-flight requests until its container exits; its object (and log) goes a second
    later. The pod watcher reads a terminating pod at once."""
    live = ["traefik-a-0", "traefik-a-1"]
    for p in live:
        kube.add_pod(p)
    ev.init_ledger()
    ev.worker()
    ev.beat()
    ev.watcher()
    by_pod = {}
    for i, p in enumerate(live):
        by_pod[p] = stamped_writer(kube, p, RATE, seed=400 + i)
        writers.append(by_pod[p])
    first_record(platform)
    for i in (0, 1):
        old, new = f"traefik-a-{i}", f"traefik-b-{i}"
        kube.add_pod(new)
        by_pod[new] = stamped_writer(kube, new, RATE, seed=410 + i)
        writers.append(by_pod[new])
        live.append(new)
        kube.terminate(old, grace_seconds=30)
        live.remove(old)
        wait_intervals([by_pod[old]], 2, after=time.time())  # draining across a boundary
        stop_writer(by_pod[old])
        kube.exit_container(old)
        wait_until(lambda o=old: _gone(kube, o), 10, what=f"{old} to be removed")
    wait_intervals(writers, 2, after=time.time())
    settle(ev, writers, platform, live, timeout=90)
    got = assert_exact(ev, writers, platform)
    assert amendments(got) == [] and stat(ev, "seal_forced") == 0


def _gone(kube, name: str) -> bool:
    try:
        kube.pod_uid(name)
    except PodNotFound:
        return True
    return False


# A pod that cannot be read ------------------------------------------------------------------


def test_unreadable_pod_past_the_max_wait_reports_amendments(ev, kube, platform, writers):
    """traefik-b's log answers 500 for 20 to 25 s (SEAL_MAX_WAIT is 5 s): the intervals
    are sealed once the maximum wait has passed, with traefik-a's lines; traefik-b's lines
    arrive when its log can be read again, as amendments of the same (interval, tunnel),
    each under its own key, logged once. The platform's answers to the first three reports
    after that are lost: they are sent again with the same key and body. The sums per
    interval end up exact."""
    max_wait = 5
    ev.env["SEAL_MAX_WAIT"] = str(max_wait)
    # The fake's injected 500s fail new requests only: a follow stream opened before them
    # would read on. Polled reads here (test_follow.py::test_a_stream_dropped_during_an_
    # apiserver_outage_hands_the_pod_back_to_the_rounds: a followed pod goes back to them).
    ev.env["FOLLOW_MAX_PODS"] = "0"
    pods = ["traefik-a", "traefik-b"]
    running(ev, kube, platform, writers, pods, seed=5)
    path = "/pods/traefik-b/log"
    kube.fail_next(10**9, status=500, path_contains=path)
    broken = time.time()
    first_blind = math.ceil(broken / RI) * RI  # traefik-b unreadable for the whole interval

    def sealed_without_b() -> bool:
        return any(d.start >= first_blind and not d.amendment for d in reports(platform))

    wait_until(sealed_without_b, RI + max_wait + 20, interval=0.2, what="an interval sealed without traefik-b")
    wait_until(lambda: time.time() >= first_blind + 4 * RI, 5 * RI + 1, interval=0.2)  # 20-25 s unreadable
    kube.clear_failures(path)
    healed = time.time()
    platform.drop_next(3)  # logged, answer lost: sent again by the same key and body
    wait_intervals(writers, 2, after=healed)
    settle(ev, writers, platform, pods, timeout=90)
    got = assert_exact(ev, writers, platform)
    late = amendments(got)
    assert late, evidence(ev, writers, platform)
    assert platform.duplicates_deduped >= 1  # the dropped answers' reports were sent again
    assert all(d.start + RI <= healed for d in late)  # only intervals sealed while traefik-b was unreadable
    # Every interval traefik-b could not be read to the end of: held back until its reads
    # had failed for the maximum wait, then sealed (before it could be read again), and
    # amended with its lines. Sealing needs the interval's end + margin + W behind, and
    # a round (1 s) to see it: 4 s of slack before the healing.
    held = [s for s in range(first_blind - RI, int(healed), RI) if max(broken + max_wait, s + RI + 3) + 4 < healed]
    assert len(held) >= 3, held
    originals = {d.start: d.received_at for d in got if not d.amendment}
    for s in held:
        assert broken + max_wait - 0.5 <= originals[s] < healed, (s, originals[s] - broken)
    assert {d.start for d in late} >= set(held)
    assert stat(ev, "amendments") == len(late)
    assert stat(ev, "seal_forced") >= len({d.start for d in late})
    warned = [line for line in ev.logs(10**7).splitlines() if "WARN" in line and "traefik-b" in line]
    assert warned, ev.logs()


# Migration from the processing-time ledger ---------------------------------------------------


@pytest.fixture(scope="session")
def pre11_tree(tmp_path_factory) -> Path:
    """The pre-issue-11 tree (``PRE11``), exported with ``git archive`` into this session's
    own temporary directory. It was a ``git worktree`` at a fixed path shared by every
    clone on the machine: one whose clone was deleted left it pointing at a missing
    ``.git``, and every later run failed there."""
    tree = tmp_path_factory.mktemp("pre11")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PRE11], check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, capture_output=True)
    return tree


def old_process(ev, tree: Path, role: str, name: str) -> CeleryProcess:
    """A worker or beat of the old tree, on the same Redis, prefix and settings."""
    env = {**ev.env, "PYTHONPATH": str(tree)}
    if role == "worker":
        args = ["-Q", "fetch,report", "-c", "2", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
                "--loglevel", "INFO"]
    else:
        args = ["--schedule", str(ev.dir / f"{name}-schedule"), "--loglevel", "INFO"]
    return ev._start(CeleryProcess(role, env, args, log_path=ev.dir / f"{name}.log", cwd=str(tree)))


def test_migration_from_a_processing_time_ledger(ev, kube, platform, writers, pre11_tree):
    """The pre-11 version writes the ledger and reports a few intervals; then the
    scraper's own rolling update: its beat is replaced by the new one and new workers
    join while the old ones still commit, for two report intervals; then the old workers
    stop. A pod that cannot be read for a while during the overlap may make amendments
    while old workers still run. Over all records every line is counted once (totals per
    tunnel exact, no key logged twice, none with two bodies); every interval that starts
    after the last old worker stopped is exact per (interval, tunnel)."""
    ev.env["SEAL_MAX_WAIT"] = "5"
    pods = ["traefik-a", "traefik-b", "traefik-c"]
    for p in pods:
        kube.add_pod(p)
    code = ("import redis, sys; from app.ledger import Ledger; "
            "sys.exit(0 if Ledger(redis.Redis.from_url(sys.argv[1]), sys.argv[2], int(sys.argv[3])).initialise(0) else 1)")
    subprocess.run([sys.executable, "-c", code, ev.redis_url, ev.prefix, str(RI)], cwd=str(pre11_tree),
                   env={**ev.env, "PYTHONPATH": str(pre11_tree)}, check=True)
    old_worker = old_process(ev, pre11_tree, "worker", "old-worker")
    old_beat = old_process(ev, pre11_tree, "beat", "old-beat")
    start_writers(kube, pods, writers, seed=6)
    wait_until(lambda: len({d.start for d in reports(platform)}) >= 2, 40, interval=0.2,
               what="two intervals reported by the old version")
    old_beat.stop()
    new_worker = ev.worker(name="new-worker")
    ev.beat()
    both = time.time()
    old_before, new_before = committed(old_worker), committed(new_worker)
    # Old and new side by side for 16 s; traefik-c cannot be read for the first 8 (past
    # SEAL_MAX_WAIT), so amendments are made while old workers still take report tasks
    # (when a new worker is the first to read traefik-c again; an old one places its
    # lines by processing time, so there may be none).
    path = "/pods/traefik-c/log"
    kube.fail_next(10**9, status=500, path_contains=path)
    wait_until(lambda: time.time() >= both + 8, 9, interval=0.2)
    kube.clear_failures(path)
    wait_until(lambda: time.time() >= both + 16, 9, interval=0.2)
    old_log = old_worker.output()  # before the stop (SIGTERM to its process group kills a running task)
    old_worker.stop()
    assert committed(old_worker) > old_before and committed(new_worker) > new_before  # both committed lines
    stopped = time.time()
    since = math.ceil(stopped / RI) * RI
    wait_intervals(writers, 2, after=since)
    settle(ev, writers, platform, pods, timeout=90, since=since)
    got = assert_exact(ev, writers, platform, since=since)
    assert platform_totals(got) == truth_totals(writers), evidence(ev, writers, platform)
    assert any(d.start < both for d in got)  # the old version did report
    # From there on nothing is sealed ahead of the watermark: no amendment.
    assert [d.key for d in amendments(got) if d.start >= since] == []
    assert "Traceback" not in new_worker.output(), new_worker.output()[-4000:]
    # An old worker does not know the sealing round's task (added after it): Celery logs
    # "Received unregistered task" with a KeyError traceback and drops the message, and
    # that interval is sealed by the next regular round (README, "Upgrading"). Nothing
    # else may fail in it.
    unknown = old_log.count(f"KeyError: '{SEAL_ROUND_TASK}'")
    assert old_log.count("Traceback") == unknown, old_log[-4000:]


def committed(worker: CeleryProcess) -> int:
    """Fetches of this worker that committed lines (the task's result, in its log)."""
    return len(re.findall(r"workers\.fetch\.fetch\[[^]]+\] succeeded in [^:]+: \{[^}]*'consumed': [1-9]", worker.output()))


# The sealing round ----------------------------------------------------------------------


def test_each_interval_gets_a_round_of_its_own_at_its_sealing_point(ev, kube, platform, writers):
    """With rounds as far apart as the intervals (``FETCH_INTERVAL`` = ``REPORT_INTERVAL``)
    and not aligned with them, the plan before each interval's sealing point (its end +
    ``SEAL_CLOCK_MARGIN`` + ``LOG_REORDER_WINDOW``) sends a round of its own for just
    after it (app/pace.py): every interval's sealing round runs (``round:seal:<end>``
    claimed), no interval is sealed before its point, and the sums stay exact."""
    ev.env.update({"FETCH_INTERVAL": str(RI), "FETCH_MIN_INTERVAL": str(RI)})
    pods = ["traefik-a", "traefik-b"]
    running(ev, kube, platform, writers, pods, seed=7)
    lead = float(ENV["SEAL_CLOCK_MARGIN"]) + float(ENV["LOG_REORDER_WINDOW"])
    r, ledger = ev.r, ev.ledger
    rounds: set[int] = set()
    sealed: dict[int, float] = {}

    def seen() -> bool:
        rounds.update(int(k.decode().rsplit(":", 1)[1]) for k in r.scan_iter(ledger.k("round", "seal", "*")))
        for raw, at in r.zrangebyscore(ledger.k("sealed"), "-inf", "+inf", withscores=True):
            sealed.setdefault(int(raw), at)
        return len(rounds) >= 4

    wait_until(seen, 8 * RI, interval=0.2, what="four sealing rounds")
    for end in sorted(rounds)[:-1]:  # the last one may not have sealed yet
        start = end - RI
        wait_until(lambda s=start: (seen(), s in sealed)[1], 3 * RI, interval=0.2, what=f"interval {start} sealed")
    for start, at in sealed.items():
        assert at >= start + RI + lead, f"interval {start} sealed at {at}, before its sealing point"
    assert {end - RI for end in sorted(rounds)[:-1]} <= set(sealed)
    settle(ev, writers, platform, pods)
    assert_exact(ev, writers, platform)
