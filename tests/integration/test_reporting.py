"""Delivering one report: ``Reporter.send`` with a fake platform client and the real
ledger on a real redis-server, and ``PlatformClient`` against the platform stub."""

from __future__ import annotations

import email.utils
import itertools
import logging
import threading
import time
from datetime import UTC, datetime

import pytest

from app.errors import PlatformRejected, PlatformRetryable
from app.ledger import Ledger
from app.model import ReportKey, ReportOutcome, ReportState
from app.platform import PATH, Delivery, PlatformClient, parse_retry_after
from app.reporting import Reporter, idempotency_key, report_body
from app.settings import Settings
from sim.platform_stub import user_id_for
from sim.procs import free_port, wait_until

RI = 60
SUB = "my-tunnel"
STUB_SECRET = "s3cret-value"  # the conftest platform stub's
_seq = itertools.count()


class FakeClient:
    """Stands in for PlatformClient: answers from a script, records what it was sent."""

    def __init__(self, *answers: Delivery | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[dict, str]] = []
        self.entered = threading.Event()
        self.release: threading.Event | None = None

    def post(self, body: dict, key: str) -> Delivery:
        self.calls.append((body, key))
        self.entered.set()
        if self.release is not None:
            assert self.release.wait(10), "the test never released the client"
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


LOGGED = Delivery(ReportOutcome.DELIVERED, 201, "abc123def456", "")
SKIPPED = Delivery(ReportOutcome.SKIPPED, 200, "", "tunnel not found or inactive")


@pytest.fixture
def settings_env(monkeypatch):
    for name in [n.upper() for n in Settings.model_fields] + ["POD_NAMESPACE"]:
        monkeypatch.delenv(name, raising=False)


def make_settings(**overrides) -> Settings:
    values = {"platform_internal_secret": "x", "report_interval": RI, "scraper_id": "cluster-a"}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def ledger(r):
    led = Ledger(r, f"tr{next(_seq)}", RI)
    assert led.initialise(0)
    return led


def sealed_report(led: Ledger, sub: str = SUB, counts=(1024, 2048, 15), ago: int = 2) -> int:
    """A report as merge leaves it: sealed and claimed (state queued)."""
    now = int(led.now())
    start = now - now % RI - ago * RI
    bi, bo, rq = counts
    led.r.hset(led.k("iv", start), mapping={f"{sub}:i": bi, f"{sub}:o": bo, f"{sub}:r": rq})
    led.r.zadd(led.k("open"), {str(start): start})
    assert led.seal(start) == [sub]
    assert led.claim([ReportKey(start, sub)], 300) == [ReportKey(start, sub)]
    return start


def reporter(led: Ledger, client: FakeClient, **settings) -> Reporter:
    return Reporter(led, client, make_settings(**settings))  # type: ignore[arg-type]


def iso_z(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Key and body ----------------------------------------------------------------------------


def test_idempotency_key_format():
    start = int(datetime(2026, 11, 24, 1, 50, tzinfo=UTC).timestamp())
    assert idempotency_key("cluster-a", start, 60, "my-tunnel") == "cluster-a:2026-11-24T01:50:00Z/60:my-tunnel"
    assert idempotency_key("cluster-a", start, 300, "my-tunnel") != idempotency_key("cluster-a", start, 60, "my-tunnel")
    assert idempotency_key("cluster-b", start, 60, "my-tunnel") != idempotency_key("cluster-a", start, 60, "my-tunnel")


def test_body_is_the_contracts_with_the_interval_end_as_timestamp(ledger):
    start = sealed_report(ledger)
    rep = ledger.report(ReportKey(start, SUB))
    body = report_body(rep, RI)
    end = datetime.fromtimestamp(start + RI, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000")
    assert body == {"subdomain": SUB, "bytes_in": 1024, "bytes_out": 2048, "requests": 15, "timestamp": end}
    assert report_body(ledger.report(ReportKey(start, SUB)), RI) == body


# Reporter.send ---------------------------------------------------------------------------


def test_delivered_marks_the_report_and_logs_the_original_line(settings_env, ledger, caplog):
    start = sealed_report(ledger)
    client = FakeClient(LOGGED)
    caplog.set_level(logging.INFO, logger="app.reporting")
    out = reporter(ledger, client).send(start, SUB, 0)
    assert out.action == ReportOutcome.DELIVERED
    rep = ledger.report(ReportKey(start, SUB))
    assert (rep.state, rep.attempts) == (ReportState.DELIVERED, 1)
    assert ledger.due_count() == 0
    assert rep.user_id == "abc123def456" and rep.delivered_at is not None
    # The record moved into its interval's done hash, and the send lock went with it.
    assert not ledger.r.exists(ledger.rep_key(ReportKey(start, SUB)))
    assert ledger.r.hexists(ledger.done_key(start), SUB)
    assert not ledger.r.exists(ledger.k("lock", ReportKey(start, SUB)))
    fmt = logging.Formatter("[%(levelname)s] %(message)s")
    lines = [fmt.format(rec) for rec in caplog.records if rec.name == "app.reporting"]
    assert "[INFO] ✅ my-tunnel: ↓1024B ↑2048B (15req) → User:abc123def456" in lines
    # Sent with the key and body of the contract.
    ((body, key),) = client.calls
    assert key == f"cluster-a:{iso_z(start)}/{RI}:{SUB}"
    assert body["timestamp"] == datetime.fromtimestamp(start + RI, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000")


def test_skipped_is_final(settings_env, ledger, caplog):
    start = sealed_report(ledger)
    caplog.set_level(logging.INFO, logger="app.reporting")
    client = FakeClient(SKIPPED)
    assert reporter(ledger, client).send(start, SUB, 0).action == ReportOutcome.SKIPPED
    assert ledger.report(ReportKey(start, SUB)).state == ReportState.SKIPPED
    assert ledger.due_count() == 0
    assert any("skipped" in rec.getMessage() and SUB in rec.getMessage() for rec in caplog.records)
    assert reporter(ledger, client).send(start, SUB, 0).action == ReportOutcome.NOOP
    assert len(client.calls) == 1


def test_retryable_retries_with_a_capped_countdown(settings_env, ledger):
    start = sealed_report(ledger)
    member = str(ReportKey(start, SUB))
    rep = reporter(ledger, FakeClient(PlatformRetryable("HTTP 503: busy", 503)))
    out = rep.send(start, SUB, 0)
    assert out.action == ReportOutcome.RETRY
    assert 0.5 <= out.countdown <= 1.0  # first backoff step, with jitter
    assert "503" in out.detail
    now = ledger.now()
    s = rep.s
    # In automatic retry: a place reserved, and the lease covers the wait.
    assert ledger.r.zscore(ledger.k("retrying"), member) is not None
    assert ledger.r.zscore(ledger.k("due"), member) >= now + out.countdown + s.lease_seconds - 2
    assert ledger.report(ReportKey(start, SUB)).attempts == 1

    for retries in range(1, s.report_auto_retries):
        out = rep.send(start, SUB, retries)
        assert out.action == ReportOutcome.RETRY
        assert 0.5 * min(60, 2**retries) <= out.countdown <= min(s.report_retry_max_delay, 2**retries)


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (45.0, 45.0), (1000.0, 60.0)])
def test_retry_honours_retry_after_within_the_cap(settings_env, ledger, retry_after, expected):
    start = sealed_report(ledger)
    client = FakeClient(PlatformRetryable("HTTP 429", 429, retry_after))
    out = reporter(ledger, client, report_retry_max_delay=60).send(start, SUB, 0)
    assert out.action == ReportOutcome.RETRY
    assert out.countdown == pytest.approx(expected)


def test_after_the_automatic_retries_it_is_parked_in_due(settings_env, ledger):
    start = sealed_report(ledger)
    member = str(ReportKey(start, SUB))
    client = FakeClient(PlatformRetryable("HTTP 503: busy", 503, 120.0))
    rep = reporter(ledger, client, report_auto_retries=3)
    before = ledger.now()
    out = rep.send(start, SUB, 3)
    assert out.action == ReportOutcome.PARKED
    assert 120.0 <= out.countdown <= rep.s.report_due_max_delay
    report = ledger.report(ReportKey(start, SUB))
    assert report.state == ReportState.DUE and "503" in report.reason
    next_at = float(ledger.r.hget(ledger.k("rep", start, SUB), "next_at"))
    assert next_at >= before + 120
    assert ledger.r.zscore(ledger.k("due"), member) == pytest.approx(next_at, abs=0.01)
    assert ledger.r.zscore(ledger.k("retrying"), member) is None
    assert ledger.claim_due(300, 10) == []  # not before next_at
    assert ledger.dead_letters() == []
    # No probe of the platform before its Retry-After (120 s), though REPORT_PROBE_INTERVAL is 15 s.
    assert ledger.r.zscore(ledger.k("probe"), "next") >= before + 120
    assert ledger.probe_parked(rep.s.report_probe_interval) is None


def test_a_probe_makes_one_attempt_then_is_parked_again(settings_env, ledger):
    """The sweep's probe: one request on a platform that is down, not a round of
    automatic retries (a review: six requests a probe)."""
    start = sealed_report(ledger)
    key = ReportKey(start, SUB)
    client = FakeClient(PlatformRetryable("HTTP 503", 503))
    rep = reporter(ledger, client, report_probe_interval=1)
    # Ten attempts before: parked for 450-900 s, not due by itself before the probe (at
    # its first attempt the backoff would be 0.5-1 s, and a report due by itself is not
    # probed: the test waited in vain then).
    ledger.r.hset(ledger.k("rep", start, SUB), "attempts", 10)
    assert rep.send(start, SUB, 5).action == ReportOutcome.PARKED  # its automatic retries used up
    assert ledger.r.zscore(ledger.k("due"), str(key)) >= ledger.now() + 400
    wait_until(lambda: ledger.probe_parked(1) == key, 5, interval=0.1, what="the probe")
    assert ledger.r.hget(ledger.k("rep", start, SUB), "probe") == b"1"
    assert ledger.claim_due(300, 10) == [key]
    out = rep.send(start, SUB, 0)  # the sweep's message: no Celery retries so far
    assert out.action == ReportOutcome.PARKED and len(client.calls) == 2
    assert ledger.r.hget(ledger.k("rep", start, SUB), "probe") is None
    assert ledger.report(key).state == ReportState.DUE
    assert ledger.stats()["reports_probed"] == 1
    # Not a probe any more: the next message gets its automatic retries again.
    ledger.r.zadd(ledger.k("due"), {str(key): 0})
    assert ledger.claim_due(300, 10) == [key]
    assert rep.send(start, SUB, 0).action == ReportOutcome.RETRY


def test_a_retry_after_in_automatic_retry_holds_the_probe_back(settings_env, ledger):
    start = sealed_report(ledger)
    client = FakeClient(PlatformRetryable("HTTP 429", 429, 120.0))
    before = ledger.now()
    assert reporter(ledger, client).send(start, SUB, 0).action == ReportOutcome.RETRY
    assert ledger.r.zscore(ledger.k("probe"), "next") >= before + 120
    assert ledger.r.ttl(ledger.k("probe")) > 0


def test_a_parked_report_without_retry_after_may_be_probed_after_report_probe_interval(settings_env, ledger):
    start = sealed_report(ledger)
    rep = reporter(ledger, FakeClient(PlatformRetryable("HTTP 503", 503)), report_auto_retries=0,
                   report_probe_interval=40)
    before = ledger.now()
    assert rep.send(start, SUB, 0).action == ReportOutcome.PARKED
    assert before + 40 <= ledger.r.zscore(ledger.k("probe"), "next") <= ledger.now() + 40


def test_parked_at_once_when_too_many_reports_wait_for_a_retry(settings_env, ledger):
    start = sealed_report(ledger)
    assert ledger.reserve_retry(ReportKey(1, "other"), ledger.now() + 600, cap=1)
    client = FakeClient(PlatformRetryable("HTTP 503", 503))
    out = reporter(ledger, client, max_waiting_retries=1).send(start, SUB, 0)
    assert out.action == ReportOutcome.PARKED
    assert ledger.report(ReportKey(start, SUB)).state == ReportState.DUE
    assert ledger.r.zscore(ledger.k("retrying"), str(ReportKey(start, SUB))) is None


def test_older_than_report_max_age_goes_to_the_dead_letters(settings_env, ledger):
    start = sealed_report(ledger, ago=3)  # ended at least two minutes ago
    # REPORT_MAX_AGE counts from the sealing: sealed two minutes ago too.
    ledger.r.hset(ledger.rep_key(ReportKey(start, SUB)), "sealed_at", f"{ledger.now() - 120:.3f}")
    client = FakeClient(PlatformRetryable("HTTP 503", 503))
    out = reporter(ledger, client, report_max_age=60).send(start, SUB, 0)
    assert out.action == ReportOutcome.DEAD
    (dead,) = ledger.dead_letters()
    assert (dead.key, dead.state, dead.bytes_in, dead.requests) == (ReportKey(start, SUB), ReportState.DEAD, 1024, 15)
    assert "REPORT_MAX_AGE" in dead.reason and "503" in dead.reason
    assert ledger.due_count() == 0


def test_report_max_age_counts_from_the_sealing_not_the_intervals_end(settings_env, ledger):
    """A backfilled interval (ended long ago, sealed just now after an outage of the
    workers) is retried, not dead-lettered, on its first retryable failure."""
    start = sealed_report(ledger, ago=5)  # ended four minutes ago or more, sealed now
    client = FakeClient(PlatformRetryable("HTTP 503", 503))
    out = reporter(ledger, client, report_max_age=60).send(start, SUB, 0)
    assert out.action == ReportOutcome.RETRY
    assert ledger.dead_letters() == []


def test_rejected_goes_to_the_dead_letters(settings_env, ledger):
    start = sealed_report(ledger)
    client = FakeClient(PlatformRejected("HTTP 400: bad request", 400))
    out = reporter(ledger, client).send(start, SUB, 0)
    assert out.action == ReportOutcome.DEAD
    (dead,) = ledger.dead_letters()
    assert dead.reason == "rejected: HTTP 400: bad request"
    assert ledger.due_count() == 0
    assert reporter(ledger, client).send(start, SUB, 0).action == ReportOutcome.NOOP
    assert len(client.calls) == 1


def test_a_delivered_report_is_never_sent_again(settings_env, ledger):
    start = sealed_report(ledger)
    ledger.mark_delivered(ReportKey(start, SUB), ReportState.DELIVERED, "u", 3600)
    client = FakeClient(LOGGED)
    out = reporter(ledger, client).send(start, SUB, 0)
    assert (out.action, out.detail) == (ReportOutcome.NOOP, ReportState.DELIVERED)
    assert client.calls == []
    assert ledger.report(ReportKey(start, SUB)).attempts == 0


def test_unknown_or_invalid_report_is_noop(settings_env, ledger):
    client = FakeClient(LOGGED)
    assert reporter(ledger, client).send(120, "nope", 0).action == ReportOutcome.NOOP
    assert reporter(ledger, client).send(120, "Bad_Sub", 0).action == ReportOutcome.NOOP
    assert reporter(ledger, client).send(120, "x:y", 0).action == ReportOutcome.NOOP
    assert client.calls == []


def test_every_attempt_sends_the_same_key_and_body(settings_env, ledger):
    start = sealed_report(ledger)
    client = FakeClient(
        PlatformRetryable("timeout: ReadTimeout"),
        PlatformRetryable("HTTP 409", 409),
        LOGGED,
    )
    rep = reporter(ledger, client)
    assert [rep.send(start, SUB, i).action for i in range(3)] == [ReportOutcome.RETRY, ReportOutcome.RETRY, ReportOutcome.DELIVERED]
    bodies = {repr(sorted(body.items())) for body, _ in client.calls}
    keys = {key for _, key in client.calls}
    assert len(client.calls) == 3 and len(bodies) == 1 and len(keys) == 1
    assert keys == {f"cluster-a:{iso_z(start)}/{RI}:{SUB}"}
    assert ledger.report(ReportKey(start, SUB)).attempts == 3


def test_the_lock_keeps_a_second_copy_off_the_wire(settings_env, ledger):
    start = sealed_report(ledger)
    client = FakeClient(LOGGED)
    client.release = threading.Event()
    rep = reporter(ledger, client)
    results = []
    first = threading.Thread(target=lambda: results.append(rep.send(start, SUB, 0)))
    first.start()
    try:
        assert client.entered.wait(10)
        second = rep.send(start, SUB, 0)
        assert second.action == ReportOutcome.BUSY
        assert len(client.calls) == 1
    finally:
        client.release.set()
        first.join(10)
    assert [o.action for o in results] == [ReportOutcome.DELIVERED]
    # The lock is released: a later copy sees the report delivered.
    assert rep.send(start, SUB, 0).action == ReportOutcome.NOOP
    assert not ledger.r.exists(ledger.k("lock", ReportKey(start, SUB)))


# parse_retry_after -----------------------------------------------------------------------


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 5 ") == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None and parse_retry_after("-5") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


# PlatformClient against the stub --------------------------------------------------------


@pytest.fixture
def client(platform):
    c = PlatformClient(platform.url + "/", STUB_SECRET, 2.0, 5.0)
    yield c
    c.close()


BODY = {"subdomain": SUB, "bytes_in": 1024, "bytes_out": 2048, "requests": 15, "timestamp": "2026-11-24T01:51:00.000000"}
KEY = "cluster-a:2026-11-24T01:50:00Z/60:my-tunnel"


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    texts = [str(exc), repr(exc)]
    cause = exc.__cause__
    while cause is not None:
        texts += [str(cause), repr(cause)]
        cause = cause.__cause__
    for secret in secrets:
        for text in texts:
            assert secret not in text


def test_client_201_logged(platform, client):
    assert client.url == platform.url + PATH
    done = client.post(BODY, KEY)
    assert done == Delivery(ReportOutcome.DELIVERED, 201, user_id_for(SUB), "")
    (rec,) = platform.records
    assert rec.key == KEY and rec.body == BODY


def test_client_skipped(platform, client):
    platform.skip = {SUB}
    done = client.post(BODY, KEY)
    assert (done.outcome, done.status) == (ReportOutcome.SKIPPED, 200)
    assert "not found" in done.note
    assert platform.records == []


def test_client_401_is_rejected_without_the_secret(platform):
    wrong = "hunter2-wrong-secret"
    c = PlatformClient(platform.url, wrong, 2.0, 5.0)
    try:
        with pytest.raises(PlatformRejected) as info:
            c.post(BODY, KEY)
    finally:
        c.close()
    assert info.value.status == 401
    assert_no_secret(info.value, wrong, STUB_SECRET)
    assert platform.records == []


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, 17), (429, 30), (408, None)])
def test_client_retryable_statuses(platform, client, status, retry_after):
    platform.fail_next(1, status, retry_after=retry_after)
    with pytest.raises(PlatformRetryable) as info:
        client.post(BODY, KEY)
    assert info.value.status == status
    assert info.value.retry_after == (None if retry_after is None else float(retry_after))
    assert f"HTTP {status}" in str(info.value)
    assert_no_secret(info.value, STUB_SECRET)


def test_client_409_is_retryable(platform, client):
    platform.conflict_next(1)
    with pytest.raises(PlatformRetryable) as info:
        client.post(BODY, KEY)
    assert info.value.status == 409
    # The retry of the same key and body is then logged once.
    assert client.post(BODY, KEY).outcome == ReportOutcome.DELIVERED
    assert len(platform.records) == 1


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_other_4xx_is_rejected(platform, client, status):
    platform.fail_next(1, status)
    with pytest.raises(PlatformRejected) as info:
        client.post(BODY, KEY)
    assert info.value.status == status


def test_client_redirect_is_not_followed(platform, client):
    # A redirect back to the endpoint itself: following it would send a second request.
    platform.redirect_next(1, 308, platform.endpoint)
    with pytest.raises(PlatformRejected) as info:
        client.post(BODY, KEY)
    assert len(platform.attempts) == 1
    assert platform.records == []
    assert_no_secret(info.value, STUB_SECRET)


def test_client_redirect_is_rejected_naming_only_the_host(platform, client):
    platform.redirect_next(1, 307, "https://elsewhere.example:8443/steal?token=abc#frag")
    with pytest.raises(PlatformRejected) as info:
        client.post(BODY, KEY)
    msg = str(info.value)
    assert info.value.status == 307
    assert "elsewhere.example" in msg
    assert "/steal" not in msg and "token" not in msg and "8443" not in msg
    assert_no_secret(info.value, STUB_SECRET)


def test_client_connection_refused_is_retryable():
    c = PlatformClient(f"http://127.0.0.1:{free_port()}", "hunter2-secret", 1.0, 1.0)
    try:
        with pytest.raises(PlatformRetryable) as info:
            c.post(BODY, KEY)
    finally:
        c.close()
    assert "connection error" in str(info.value)
    assert info.value.retry_after is None
    assert_no_secret(info.value, "hunter2-secret")


def test_client_timeout_is_retryable(platform):
    platform.delay = 2.0
    c = PlatformClient(platform.url, STUB_SECRET, 1.0, 0.2)
    try:
        with pytest.raises(PlatformRetryable, match="timeout"):
            c.post(BODY, KEY)
    finally:
        c.close()


def test_client_repr_hides_the_secret():
    c = PlatformClient("http://platform.example:3000", "hunter2-secret", 1.0, 1.0)
    try:
        assert "hunter2" not in repr(c) and "hunter2" not in str(c)
        assert "platform.example" in repr(c)
    finally:
        c.close()


def test_client_masks_a_secret_echoed_in_an_error_body(platform, client):
    platform.fail_next(1, status=400, body=f"bad request; headers were x-internal-secret: {STUB_SECRET}")
    with pytest.raises(PlatformRejected) as info:
        client.post(BODY, KEY)
    assert STUB_SECRET not in str(info.value) and "***" in str(info.value)


class FinishedElsewhere(FakeClient):
    """Another copy, whose send lock this one's outlived, delivers the report while this
    copy's POST is on the wire; this copy's answer then comes."""

    def __init__(self, ledger: Ledger, key: ReportKey, answer: Exception) -> None:
        super().__init__(answer)
        self.ledger, self.key = ledger, key

    def post(self, body: dict, key: str) -> Delivery:
        self.ledger.r.delete(self.ledger.k("lock", self.key))  # this copy's lock expired
        self.ledger.finish(self.key, ReportState.DELIVERED, "u1", 3600)
        return super().post(body, key)


@pytest.mark.parametrize(("answer", "max_age"), [
    (PlatformRejected("HTTP 422: unknown tunnel", 422), 86400),  # would dead-letter
    (PlatformRetryable("HTTP 503", 503), 86400),  # would park (no automatic retry left)
    (PlatformRetryable("HTTP 503", 503), 60),  # would dead-letter: older than REPORT_MAX_AGE
])
def test_a_failure_after_another_copy_finished_the_report_records_nothing(settings_env, ledger, answer, max_age):
    # A review: the late copy's dead letter (or park) left a record without amounts that
    # `deadletters` crashed on and no command could clear, or a due member claimed for ever.
    start = sealed_report(ledger, ago=5)
    key = ReportKey(start, SUB)
    out = reporter(ledger, FinishedElsewhere(ledger, key, answer), report_max_age=max_age,
                   report_auto_retries=0).send(start, SUB, 0)
    assert (out.action, out.detail) == (ReportOutcome.NOOP, "final already")
    assert ledger.report(key).state is ReportState.DELIVERED and not ledger.r.exists(ledger.rep_key(key))
    assert ledger.dead_letters() == [] and ledger.due_count() == 0
    assert "reports_dead" not in ledger.stats() and "reports_parked" not in ledger.stats()


def test_a_2xx_after_another_copy_dead_lettered_the_report_takes_it_out_of_the_dead_letters(settings_env, ledger):
    start = sealed_report(ledger)
    key = ReportKey(start, SUB)
    assert ledger.dead_letter(key, "rejected: HTTP 422")  # the other copy, after this one's lock expired
    ledger.finish(key, ReportState.DELIVERED, "u1", 3600)  # this copy's answer: the platform took it
    assert ledger.dead_letters() == [] and ledger.r.zcard(ledger.k("dead")) == 0
    assert ledger.report(key).state is ReportState.DELIVERED


def test_a_due_entry_with_nothing_to_send_is_dropped_not_claimed_for_ever(settings_env, ledger):
    # An earlier version's park over a delivered report left a record without amounts and a
    # due member, which begin.lua answered "final" every lease without leaving due (a review).
    start = sealed_report(ledger)
    key = ReportKey(start, SUB)
    ledger.finish(key, ReportState.DELIVERED, "u1", 3600)
    ledger.r.hset(ledger.rep_key(key), mapping={"state": "due", "next_at": "1.0", "reason": "HTTP 503"})
    ledger.r.zadd(ledger.k("due"), {str(key): 1.0})
    client = FakeClient(LOGGED)
    out = reporter(ledger, client).send(start, SUB, 0)
    assert (out.action, out.detail) == (ReportOutcome.NOOP, ReportState.DELIVERED) and client.calls == []
    assert ledger.due_count() == 0 and not ledger.r.exists(ledger.rep_key(key))
    assert ledger.report(key).state is ReportState.DELIVERED
    # A report with its amounts is never dropped.
    live = sealed_report(ledger, sub="live", ago=3)
    assert ledger.drop_stale(ReportKey(live, "live")) is False and ledger.due_count() == 1
