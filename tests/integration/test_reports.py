"""Report delivery under platform failure, end to end and exact.

Real Celery worker and beat subprocesses, a real redis-server, the fake Kubernetes API
and the platform stub (tests/pipeline.py). Every test compares what the platform
billed (plus, where a report is meant to stay undelivered, the dead-letter store) with
the generated ground truth, exactly, and then checks the evidence of its scenario:
what the platform saw (attempt statuses, Idempotency-Keys, bodies), the ledger's
counters and report records, and the worker's log lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from app.ledger import Report, iso
from app.model import ReportKey, ReportOutcome, ReportState
from app.reporting import idempotency_key, report_body
from sim.platform_stub import ENDPOINT_PATH
from sim.procs import wait_until
from tests.traffic import Traffic

ROOT = Path(__file__).resolve().parents[2]
SCRAPER_ID = "test"  # the harness's SCRAPER_ID
SECRET = "s3cret-value"  # the platform fixture's secret


# Helpers --------------------------------------------------------------------------


def start(pipeline, kube, n_pods: int = 2, beat: bool = True, **worker_env: str):
    """Pods, ledger, one worker (and beat); returns (pods, worker)."""
    pods = [f"traefik-{i}" for i in range(n_pods)]
    for p in pods:
        kube.add_pod(p)
    pipeline.init_ledger()
    worker = pipeline.worker(**worker_env)
    if beat:
        pipeline.beat()
    return pods, worker


def drive(kube, pods: list[str], traffic: Traffic, seconds: float = 2.5, lines: int = 8) -> None:
    """Write access lines to every pod for a while (spans at least one 2 s interval
    boundary, so reports of several intervals are made)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in pods:
            kube.write_many(p, traffic.lines(lines))
        time.sleep(0.2)  # pacing the traffic, not waiting for an outcome


def wait(pipeline, condition, timeout: float, what: str):
    """``wait_until`` that shows the processes' logs when it times out."""
    try:
        return wait_until(condition, timeout, interval=0.05, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}\nstats={pipeline.ledger.stats()}\n{pipeline.logs()}") from None


def capture_bodies(platform) -> list[tuple[str | None, bytes]]:
    """Record (Idempotency-Key, raw body) of every request the stub reads, faulted ones
    included (the stub's own ledger keeps bodies of accepted reports only)."""
    seen: list[tuple[str | None, bytes]] = []
    read_body = platform._read_body

    def spy(handler):
        raw, problem = read_body(handler)
        seen.append((handler.headers.get("Idempotency-Key"), raw))
        return raw, problem

    platform._read_body = spy
    return seen


def ledger_reports(pipeline) -> dict[ReportKey, Report]:
    """Every report record in the ledger, by key."""
    out: dict[ReportKey, Report] = {}
    for key in pipeline.ledger.report_keys():
        rep = pipeline.ledger.report(key)
        if rep is not None:
            out[key] = rep
    return out


def key_of(pipeline, key: ReportKey) -> str:
    """The Idempotency-Key of a report, as the contract defines it."""
    return idempotency_key(SCRAPER_ID, key.start, pipeline.ledger.ri, key.subdomain)


def attempts_by_key(platform) -> dict[str | None, list]:
    out: dict[str | None, list] = defaultdict(list)
    for a in sorted(platform.attempts, key=lambda a: a.received_at):
        out[a.key].append(a)
    return out


def sums(reports) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in reports:
        t = out.setdefault(r.subdomain, {"bytes_in": 0, "bytes_out": 0, "requests": 0})
        t["bytes_in"] += r.bytes_in
        t["bytes_out"] += r.bytes_out
        t["requests"] += r.requests
    return out


def add(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {s: dict(v) for s, v in a.items()}
    for s, v in b.items():
        t = out.setdefault(s, {"bytes_in": 0, "bytes_out": 0, "requests": 0})
        for k, n in v.items():
            t[k] += n
    return out


def assert_delivered_once(platform) -> None:
    """Each Idempotency-Key was billed once, and nothing was sent after it was answered
    with success (no replays: only a lost answer may cause one)."""
    keys = Counter(r.key for r in platform.records + platform.skipped)
    assert all(n == 1 for n in keys.values()), keys
    for key, attempts in attempts_by_key(platform).items():
        final = [i for i, a in enumerate(attempts) if a.status in (200, 201)]
        assert final, f"{key}: never answered with success: {[(a.status, a.outcome) for a in attempts]}"
        assert final[0] == len(attempts) - 1, f"{key} sent again after delivery: {[(a.status, a.outcome) for a in attempts]}"


def replay_in_process(pipeline, keys: list[ReportKey]) -> None:
    """What ``traefik-metrics-scraper replay`` does: revive, claim, enqueue."""
    for key in keys:
        assert pipeline.ledger.revive(key)
    claimed = pipeline.ledger.claim(keys, 6)
    assert sorted(claimed) == sorted(keys)
    for key in claimed:
        pipeline.send("workers.report.report", key.start, key.subdomain, queue="report")


def cli(pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], env=pipeline.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


# 1. 5xx then recovery -------------------------------------------------------------


def test_500s_then_recovery_same_key_and_body(pipeline, kube, platform):
    bodies = capture_bodies(platform)
    platform.fail_next(5, status=500)
    pods, _ = start(pipeline, kube)
    traffic = Traffic(seed=11)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)

    assert pipeline.delivered() == traffic.expected()
    attempts = platform.attempts
    assert [a.status for a in attempts].count(500) == 5
    # Every report billed once; only the five 500s were extra requests.
    assert len(attempts) == len(platform.records) + 5
    assert platform.duplicates_deduped == 0
    assert_delivered_once(platform)

    reports = ledger_reports(pipeline)
    assert {r.state for r in reports.values()} == {ReportState.DELIVERED}
    assert sum(r.attempts for r in reports.values()) == len(attempts)
    by_key = {key_of(pipeline, m): r for m, r in reports.items()}
    assert set(by_key) == {r.key for r in platform.records}

    # Every request of a report carried the key of its (interval, subdomain) and the
    # very same body: the contract's body with the interval's end as timestamp.
    sent: dict[str | None, set[bytes]] = defaultdict(set)
    for key, raw in bodies:
        sent[key].add(raw)
    assert set(sent) == set(by_key)
    for key, raws in sent.items():
        assert len(raws) == 1, f"{key} sent with different bodies: {raws}"
        assert json.loads(next(iter(raws))) == report_body(by_key[key], pipeline.ledger.ri)
    retried = {k for k, atts in attempts_by_key(platform).items() if atts[0].status == 500}
    assert retried
    for key in retried:
        assert [a.status for a in attempts_by_key(platform)[key]][-1] == 201
        assert len([raw for k, raw in bodies if k == key]) >= 2


# 2. Retry-After -----------------------------------------------------------------


def test_retry_after_is_honoured_and_capped(pipeline, kube, platform):
    platform.fail_next(1, status=429, retry_after=2)
    platform.fail_next(1, status=503, retry_after=30)
    # Jittered backoff for a first retry is 0.5-1 s; Retry-After 2 s stretches it to 2 s,
    # and Retry-After 30 s is capped by REPORT_RETRY_MAX_DELAY.
    pods, worker = start(pipeline, kube, REPORT_RETRY_MAX_DELAY="3")
    traffic = Traffic(seed=12)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)

    assert pipeline.delivered() == traffic.expected()
    assert_delivered_once(platform)
    out = worker.output()
    assert re.search(r"HTTP 429: .*; retry 1 in 2\.0s", out), out[-4000:]
    assert re.search(r"HTTP 503: .*; retry \d+ in 3\.0s", out), out[-4000:]
    by_key = attempts_by_key(platform)
    for status, wait_s in ((429, 2.0), (503, 3.0)):
        [key] = [a.key for a in platform.attempts if a.status == status]
        atts = by_key[key]
        i = next(i for i, a in enumerate(atts) if a.status == status)
        gap = atts[i + 1].received_at - atts[i].received_at
        assert gap >= wait_s - 0.2, f"HTTP {status}: next attempt after {gap:.2f}s, Retry-After asked {wait_s}s"


# 3. Outage longer than the automatic retries ------------------------------------------


def parked_now(pipeline) -> list[tuple[ReportKey, float, float]]:
    """Reports parked in the due set: (key, due score, next_at), read atomically."""
    due = pipeline.ledger.k("due")
    keys = [ReportKey.parse(m) for m in pipeline.r.zrange(due, 0, -1)]
    if not keys:
        return []
    with pipeline.r.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.zscore(due, str(key))
            pipe.hmget(pipeline.ledger.rep_key(key), "state", "next_at")
        res = pipe.execute()
    out = []
    for key, score, (state, next_at) in zip(keys, res[::2], res[1::2], strict=True):
        if score is not None and state == ReportState.DUE.encode():
            out.append((key, float(score), float(next_at)))
    return out


def test_outage_longer_than_auto_retries_is_parked_then_swept(pipeline, kube, platform):
    platform.error_rate = 1.0
    pods, worker = start(pipeline, kube, REPORT_AUTO_RETRIES="1")
    traffic = Traffic(seed=13)
    drive(kube, pods, traffic)

    # Parked: in the due set with its next attempt time as score, state "due".
    parked = wait(pipeline, lambda: parked_now(pipeline), 30, "a parked report")
    now = pipeline.ledger.now()
    for _member, score, next_at in parked:
        assert abs(score - next_at) < 0.01
        assert next_at <= now + 2 + 0.01  # REPORT_DUE_MAX_DELAY
    # The sweep re-enqueued a parked report: it got past 1 + REPORT_AUTO_RETRIES attempts.
    wait(pipeline, lambda: max(Counter(a.key for a in platform.attempts).values(), default=0) >= 3, 30,
         "a parked report attempted again by the sweep")
    assert "sweep: re-enqueueing" in worker.output()
    stats = pipeline.ledger.stats()
    assert stats["reports_parked"] > 0
    assert pipeline.delivered() == {}

    platform.error_rate = 0.0
    pipeline.wait_quiescent(pods, timeout=60)
    assert pipeline.delivered() == traffic.expected()
    assert_delivered_once(platform)
    assert platform.duplicates_deduped == 0
    assert pipeline.ledger.dead_letters() == []
    assert {r.state for r in ledger_reports(pipeline).values()} == {ReportState.DELIVERED}


def test_a_report_parked_with_nothing_else_sent_is_probed_not_left_to_its_backoff(pipeline, kube, platform):
    """One report, refused eight times in a row with no automatic retries: parked eight
    times, with nothing else sent whose success would wake it. Its backoff alone would
    wait at least 127.5 s (0.5 + 1 + ... + 64) before the ninth attempt; the sweep's probe
    (REPORT_PROBE_INTERVAL=1) sends it again within a sweep of each park."""
    platform.fail_next(8, status=503)
    pods, worker = start(pipeline, kube, n_pods=1, REPORT_AUTO_RETRIES="0", REPORT_DUE_MAX_DELAY="900",
                         REPORT_PROBE_INTERVAL="1")
    traffic = Traffic(seed=15, tunnels=1)
    kube.write_many(pods[0], [traffic.line("tun-0") for _ in range(5)])
    pipeline.wait_quiescent(pods, timeout=75)
    assert pipeline.delivered() == traffic.expected()
    assert [a.status for a in platform.attempts] == [503] * 8 + [201]
    assert len({a.key for a in platform.attempts}) == 1
    assert pipeline.ledger.stats()["reports_parked"] == 8
    assert "to probe the platform" in worker.output()


# 4. Answer lost after the platform committed --------------------------------------------


def test_drop_after_commit_is_deduplicated_by_key(pipeline, kube, platform):
    platform.drop_next(1)
    platform.drop_after_commit = 0.5
    pods, _ = start(pipeline, kube)
    traffic = Traffic(seed=14)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)

    assert pipeline.delivered() == traffic.expected()
    assert Counter(r.key for r in platform.records).most_common(1)[0][1] == 1
    by_key = attempts_by_key(platform)
    dropped = {a.key for a in platform.attempts if a.outcome == "dropped"}
    assert dropped
    assert platform.duplicates_deduped >= len(dropped) > 0
    for key in dropped:
        outcomes = [a.outcome for a in by_key[key]]
        # Lost answer, then the retry with the same key got the first answer back.
        assert outcomes[0] == "dropped" and outcomes[-1] == "replayed", outcomes
        assert "logged" not in outcomes
    assert {r.state for r in ledger_reports(pipeline).values()} == {ReportState.DELIVERED}


# 5. 401: dead letters, fix, replay -------------------------------------------------------


def test_wrong_secret_dead_letters_then_replay(pipeline, kube, platform):
    pods, bad = start(pipeline, kube, PLATFORM_INTERNAL_SECRET="wrong")
    traffic = Traffic(seed=15)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)  # settles: every report is a dead letter

    assert pipeline.delivered() == {}
    attempts = platform.attempts
    assert {a.status for a in attempts} == {401}
    dead = pipeline.ledger.dead_letters()
    assert sums(dead) == traffic.expected()  # nothing lost: all of it is parked
    assert len(attempts) == len(dead)  # rejected at once, no retries
    failed_keys = {a.key for a in attempts}
    assert failed_keys == {key_of(pipeline, r.key) for r in dead}
    assert all(r.reason.startswith("rejected: HTTP 401") and r.attempts == 1 for r in dead)
    assert pipeline.ledger.stats()["reports_dead"] == len(dead)

    listed = cli(pipeline, "deadletters")
    assert listed.returncode == 0, listed.stderr
    for r in dead:
        line = next(ln for ln in listed.stdout.splitlines() if ln.startswith(f"{r.key} "))
        assert r.subdomain in line and "HTTP 401" in line and str(r.bytes_out) in line
    assert SECRET not in listed.stdout + listed.stderr

    listed_json = json.loads(cli(pipeline, "deadletters", "--json").stdout)
    assert {d["idempotency_key"] for d in listed_json} == failed_keys

    bad.stop()
    pipeline.worker(name="fixed")
    # One by its Idempotency-Key, as the platform's log shows it; another scraper's is refused.
    first = sorted(failed_keys)[0]
    foreign = cli(pipeline, "replay", "someone-else" + first[first.index(":"):])
    assert foreign.returncode == 2 and "SCRAPER_ID='someone-else'" in foreign.stderr, foreign.stderr
    one = cli(pipeline, "replay", first)
    assert one.returncode == 0, one.stderr
    assert "replayed 1 report(s)" in one.stdout
    replayed = cli(pipeline, "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(dead) - 1} report(s)" in replayed.stdout
    # A START:SUBDOMAIN off the interval grid is looked up (a dead letter of an earlier
    # REPORT_INTERVAL would be found), and the answer says it is off the grid.
    odd = cli(pipeline, "replay", f"{dead[0].key.start + 1}:{dead[0].key.subdomain}")
    assert odd.returncode == 1 and "not a dead letter" in odd.stderr and "nor an interval start" in odd.stderr, odd.stderr
    pipeline.wait_quiescent(pods)

    assert pipeline.delivered() == traffic.expected()
    assert {r.key for r in platform.records} == failed_keys  # the same keys as the 401s
    assert_delivered_once(platform)
    assert pipeline.ledger.dead_letters() == []
    assert cli(pipeline, "deadletters").stdout.strip() == "no dead letters"


# 6. 3xx: never followed ------------------------------------------------------------------


def dead_then_replay(pipeline, platform, pods, traffic, n_dead: int) -> list[Report]:
    """Let the pipeline settle with ``n_dead`` reports rejected; check they are dead
    letters after one attempt each and that billed + dead is exact; replay them."""
    pipeline.wait_quiescent(pods)
    dead = pipeline.ledger.dead_letters()
    assert len(dead) == n_dead
    assert add(pipeline.delivered(), sums(dead)) == traffic.expected()
    by_key = attempts_by_key(platform)
    for r in dead:
        assert r.state == ReportState.DEAD and r.attempts == 1
        assert len(by_key[key_of(pipeline, r.key)]) == 1  # not retried
    assert pipeline.ledger.stats()["reports_dead"] == n_dead
    assert len(platform.attempts) == len(platform.records) + n_dead

    replay_in_process(pipeline, [r.key for r in dead])
    pipeline.wait_quiescent(pods)
    assert pipeline.delivered() == traffic.expected()
    assert_delivered_once(platform)
    return dead


def test_redirect_is_a_dead_letter_and_not_followed(pipeline, kube, platform):
    port = platform.url.rsplit(":", 1)[1]
    # Points back at the stub under another name and path: a followed redirect would
    # show up there (and would carry x-internal-secret to it).
    location = f"http://localhost:{port}/moved/away?token=abc"
    platform.redirect_next(1, status=307, location=location)
    platform.redirect_next(1, status=301, location=location)
    pods, _ = start(pipeline, kube)
    traffic = Traffic(seed=16)
    drive(kube, pods, traffic)
    dead = dead_then_replay(pipeline, platform, pods, traffic, n_dead=2)

    reasons = sorted(r.reason for r in dead)
    assert reasons == [
        "rejected: HTTP 301 redirect to host localhost (not followed)",
        "rejected: HTTP 307 redirect to host localhost (not followed)",
    ]
    assert all("/moved" not in r and "token" not in r for r in reasons)
    assert {a.path for a in platform.attempts} == {ENDPOINT_PATH}
    assert [a.outcome for a in platform.attempts].count("redirect") == 2


# 7. 422 / 400: dead at once ----------------------------------------------------------------


def test_422_and_400_are_dead_letters_at_once(pipeline, kube, platform):
    platform.fail_next(1, status=422)
    platform.fail_next(1, status=400, body="bad request: nope")
    pods, worker = start(pipeline, kube)
    traffic = Traffic(seed=17)
    drive(kube, pods, traffic)
    dead = dead_then_replay(pipeline, platform, pods, traffic, n_dead=2)

    reasons = sorted(r.reason for r in dead)
    assert reasons[0] == "rejected: HTTP 400: bad request: nope"
    assert reasons[1].startswith("rejected: HTTP 422: ")
    assert not re.search(r"HTTP 4\d\d: .*; retry", worker.output())
    assert not re.search(r"HTTP 4\d\d: .*; parked, next", worker.output())


# 8. 200 "skipped" -----------------------------------------------------------------------------


def test_skipped_is_final_and_not_retried(pipeline, kube, platform):
    platform.skip = {"tun-1"}
    pods, worker = start(pipeline, kube)
    traffic = Traffic(seed=18)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)

    expected = traffic.expected()
    skipped_truth = expected.pop("tun-1")
    assert pipeline.delivered() == expected
    assert sums(platform.skipped) == {"tun-1": skipped_truth}
    reports = ledger_reports(pipeline)
    states = {m: r.state for m, r in reports.items()}
    skipped = [m for m, s in states.items() if s == ReportState.SKIPPED]
    assert skipped and all(m.subdomain == "tun-1" for m in skipped)
    assert all(s == ReportState.DELIVERED for m, s in states.items() if m.subdomain != "tun-1")
    assert all(reports[m].attempts == 1 for m in skipped)
    by_key = attempts_by_key(platform)
    for m in skipped:
        assert [(a.status, a.outcome) for a in by_key[key_of(pipeline, m)]] == [(200, "skipped")]
    stats = pipeline.ledger.stats()
    assert stats["reports_skipped"] == len(skipped) == len(platform.skipped)
    assert "skipped by the platform" in worker.output()

    # Sent again by hand: still final, nothing goes on the wire. (Report results are not
    # kept: the worker says what it did.)
    before = len(platform.attempts)
    pipeline.client.send_task("workers.report.report", args=(skipped[0].start, skipped[0].subdomain), queue="report")
    noop = f"report {skipped[0].subdomain} ({iso(skipped[0].start)}): already skipped; nothing sent"
    wait(pipeline, lambda: noop in worker.output(), 20, "the copy to be dropped")
    assert len(platform.attempts) == before
    assert pipeline.ledger.report(skipped[0]).state == ReportState.SKIPPED


# 9. The secret never appears ---------------------------------------------------------------


def redis_dump(r) -> bytes:
    """Every key and value of the Redis database, whatever its type."""
    parts: list[bytes] = []
    for key in r.scan_iter(count=1000):
        parts.append(key)
        kind = r.type(key)
        if kind == b"string":
            parts.append(r.get(key) or b"")
        elif kind == b"hash":
            for f, v in r.hgetall(key).items():
                parts += [f, v]
        elif kind == b"list":
            parts += r.lrange(key, 0, -1)
        elif kind == b"set":
            parts += list(r.smembers(key))
        elif kind == b"zset":
            parts += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for _, fields in r.xrange(key):
                for f, v in fields.items():
                    parts += [f, v]
    return b"\n".join(parts)


def test_secret_never_appears(pipeline, kube, platform):
    assert platform.secret == SECRET
    platform.fail_next(1, status=500)
    platform.fail_next(1, status=401)
    # A hostile redirect whose Location carries the secret: only its host may be kept.
    platform.redirect_next(1, status=302, location=f"http://evil.example/x?s={SECRET}")
    platform.drop_next(1)
    pods = ["traefik-0", "traefik-1"]
    for p in pods:
        kube.add_pod(p)
    pipeline.init_ledger()
    # LOG_LEVEL=DEBUG: the most a worker ever logs (urllib3's requests, Celery's internals).
    worker = pipeline.worker(name="dbg", LOG_LEVEL="DEBUG")
    pipeline.beat()
    traffic = Traffic(seed=19)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)

    dead = pipeline.ledger.dead_letters()
    assert sorted(r.reason.split(":")[1].strip()[:8] for r in dead) == ["HTTP 302", "HTTP 401"]
    assert "rejected: HTTP 302 redirect to host evil.example (not followed)" in {r.reason for r in dead}
    assert add(pipeline.delivered(), sums(dead)) == traffic.expected()
    assert platform.records  # the secret was sent, and accepted
    assert {a.status for a in platform.attempts} >= {500, 401, 302, None}  # None: dropped

    secret = SECRET.encode()
    assert "[DEBUG]" in worker.output()
    for proc in pipeline.procs:
        assert proc.output(), proc.log_path
        assert SECRET not in proc.output(), f"secret in {proc.log_path.name}"
    dump = redis_dump(pipeline.r)
    assert b"celery-task-meta-" in dump  # task results are there and were scanned
    assert b"rejected: HTTP 401" in dump
    assert secret not in dump
    for r in dead:
        assert SECRET not in r.reason
    for args in (["deadletters", "--json"], ["status", "--json"]):
        out = cli(pipeline, *args)
        assert out.returncode == 0 and SECRET not in out.stdout + out.stderr


# 10. A delivered report is never sent again ------------------------------------------------


def test_report_task_redelivered_after_delivery_is_not_resent(pipeline, kube, platform):
    pods, worker = start(pipeline, kube)
    traffic = Traffic(seed=20)
    drive(kube, pods, traffic)
    pipeline.wait_quiescent(pods)
    assert pipeline.delivered() == traffic.expected()
    attempts_before = len(platform.attempts)
    reports = ledger_reports(pipeline)
    assert reports and {r.state for r in reports.values()} == {ReportState.DELIVERED}

    # Each delivered report's task sent twice more by hand, as a redelivery would.
    for key in reports:
        pipeline.send("workers.report.report", key.start, key.subdomain, queue="report")
        pipeline.send("workers.report.report", key.start, key.subdomain, queue="report")
    # A copy is a no-op ("delivered"), or "busy" when it raced its twin for the lock.
    # The worker logs each task's return value (a dict) as its repr.
    noop = repr({"action": ReportOutcome.NOOP.value, "detail": ReportState.DELIVERED.value})
    busy = repr({"action": ReportOutcome.BUSY.value, "detail": "another copy is sending it"})
    wait(pipeline, lambda: worker.output().count(noop) + worker.output().count(busy) == 2 * len(reports), 30,
         "every copy to be answered without sending")
    assert worker.output().count(noop) >= len(reports)

    assert len(platform.attempts) == attempts_before
    assert platform.duplicates_deduped == 0
    assert pipeline.delivered() == traffic.expected()
    assert_delivered_once(platform)
    assert {m: r.attempts for m, r in ledger_reports(pipeline).items()} == {m: r.attempts for m, r in reports.items()}


# 11. Bounded waiting retries --------------------------------------------------------------


def test_waiting_retries_are_bounded(pipeline, kube, platform):
    platform.error_rate = 1.0
    retrying = f"{pipeline.prefix}:retrying"
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(pipeline.r.zcard(retrying))
            stop.wait(0.01)

    pods, worker = start(pipeline, kube, concurrency=4, MAX_WAITING_RETRIES="2")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        traffic = Traffic(seed=21, tunnels=12)
        drive(kube, pods, traffic, lines=20)
        # Many reports failing at once: the cap is reached, the rest parked at once.
        wait(pipeline, lambda: pipeline.ledger.stats().get("reports_parked", 0) >= 12 and max(samples, default=0) == 2, 30,
             "many reports parked, the retry cap reached")
        platform.error_rate = 0.0
        pipeline.wait_quiescent(pods, timeout=60)
    finally:
        stop.set()
        sampler.join(5)

    assert len(samples) > 100
    assert max(samples) == 2, Counter(samples)
    assert pipeline.delivered() == traffic.expected()
    assert_delivered_once(platform)
    assert len(traffic.expected()) == 12
    # Some reports were parked straight after their first failure: no room to wait.
    assert re.search(r"HTTP 5\d\d: .*; parked, next attempt", worker.output())
