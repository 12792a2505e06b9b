"""The platform stub, exercised through real HTTP with requests.

The stub is what the rest of the suite trusts to tell whether delivery is exactly-once,
so its own answers (idempotency, faults, ledger) are pinned here. No fixed sleeps:
anything concurrent is sequenced with ``wait_for`` and the re-read ``delay``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sim.platform_stub import ENDPOINT_PATH, PlatformStub, user_id_for

SECRET = "test-secret"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stub() -> Iterator[PlatformStub]:
    s = PlatformStub(secret=SECRET, skip={"gone"}, seed=1)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def report(subdomain: str = "my-tunnel", bytes_in: int = 1024, bytes_out: int = 2048, n: int = 15):
    return {
        "subdomain": subdomain,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "requests": n,
        "timestamp": "2025-12-07T12:00:00.000000",
    }


def post(
    session: requests.Session,
    stub: PlatformStub,
    body: object,
    key: str | None = None,
    secret: str | None = SECRET,
    timeout: float = 5,
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["x-internal-secret"] = secret
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session.post(
        stub.endpoint, data=data, headers=headers, timeout=timeout, allow_redirects=False
    )


def post_alone(stub: PlatformStub, body: object, key: str | None = None) -> requests.Response:
    """POST on a connection of its own (for requests sent from another thread)."""
    with requests.Session() as s:
        return post(s, stub, body, key=key)


def test_logged_201_fills_the_ledger_over_one_kept_alive_connection(stub, session):
    r1 = post(session, stub, report(), key="k1")
    r2 = post(session, stub, report(bytes_in=1, bytes_out=2, n=3), key="k2")
    r3 = post(session, stub, report("other", 5, 6, 7))

    assert r1.status_code == 201
    assert r1.json() == {
        "status": "logged",
        "user_id": user_id_for("my-tunnel"),
        "subdomain": "my-tunnel",
    }
    assert len(user_id_for("my-tunnel")) == 12
    int(user_id_for("my-tunnel"), 16)
    assert r2.json()["user_id"] == r1.json()["user_id"]
    assert r3.status_code == 201
    assert stub.totals() == {
        "my-tunnel": {"bytes_in": 1025, "bytes_out": 2050, "requests": 18, "reports": 2},
        "other": {"bytes_in": 5, "bytes_out": 6, "requests": 7, "reports": 1},
    }
    assert [r.key for r in stub.records] == ["k1", "k2", None]
    assert stub.records[0].body == report()
    assert [(a.status, a.outcome) for a in stub.attempts] == [(201, "logged")] * 3
    assert stub.connections_opened == 1


def test_skipped_subdomain_answers_200_and_is_not_billed(stub, session):
    r = post(session, stub, report("gone"), key="s1")
    assert r.status_code == 200
    assert r.json() == {"status": "skipped", "reason": "tunnel not found or inactive"}
    assert stub.records == [] and stub.totals() == {}
    assert [s.subdomain for s in stub.skipped] == ["gone"]
    # The replay of a skipped report gets the same answer.
    again = post(session, stub, report("gone"), key="s1")
    assert (again.status_code, again.json()) == (200, r.json())
    assert len(stub.skipped) == 1


@pytest.mark.parametrize("secret", [None, "wrong", ""])
def test_missing_or_wrong_secret_is_401(stub, session, secret):
    r = post(session, stub, report(), key="k", secret=secret)
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized"}
    assert SECRET not in r.text
    assert stub.records == []
    assert [a.outcome for a in stub.attempts] == ["unauthorized"]
    # A 401 does not claim the key: the same key with the right secret is accepted.
    assert post(session, stub, report(), key="k").status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'{"subdomain": "a", "bytes_in": 1',
        {k: v for k, v in report().items() if k != "requests"},
        {k: v for k, v in report().items() if k != "subdomain"},
        {**report(), "subdomain": ""},
        {**report(), "subdomain": 7},
        {**report(), "bytes_in": "1024"},
        {**report(), "bytes_out": -1},
        {**report(), "requests": 1.5},
        {**report(), "requests": True},
        {**report(), "timestamp": 1733572800},
        {**report(), "timestamp": "yesterday"},
    ],
)
def test_bad_bodies_are_400(stub, session, body):
    r = post(session, stub, body, key="bad")
    assert r.status_code == 400
    assert r.json()["error"] == "bad request"
    assert stub.records == [] and stub.pending_keys == set()


def test_non_json_content_type_is_400(stub, session):
    r = session.post(
        stub.endpoint,
        data=report(),
        headers={"x-internal-secret": SECRET},
        timeout=5,
    )
    assert r.status_code == 400


def test_other_paths_and_methods(stub, session):
    assert session.get(stub.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert session.post(stub.url + "/api/v1/other", json={}, timeout=5).status_code == 404
    r = session.get(stub.endpoint, timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_replay_with_same_key_gets_first_answer_and_is_recorded_once(stub, session):
    first = post(session, stub, report(), key="scraper:1733572800/60:my-tunnel")
    replay = post(session, stub, report(), key="scraper:1733572800/60:my-tunnel")
    assert first.status_code == replay.status_code == 201
    assert replay.content == first.content
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(stub.records) == 1
    assert stub.duplicates_deduped == 1
    assert [a.outcome for a in stub.attempts] == ["logged", "replayed"]


def test_concurrent_same_key_gets_one_201_and_409s(stub):
    stub.delay = 60  # hold the first request in flight until the test lowers it
    results: list[requests.Response] = []
    first = threading.Thread(target=lambda: results.append(post_alone(stub, report(), key="same")))
    first.start()
    assert stub.wait_for(lambda: "same" in stub.pending_keys, timeout=5)

    others = [post_alone(stub, report(), key="same") for _ in range(3)]
    assert [r.status_code for r in others] == [409, 409, 409]
    assert stub.records == []

    stub.delay = 0  # releases the waiting first request
    first.join(timeout=5)
    assert [r.status_code for r in results] == [201]
    assert len(stub.records) == 1
    assert sorted(a.status for a in stub.attempts) == [201, 409, 409, 409]


def test_same_key_other_body_is_422(stub, session):
    assert post(session, stub, report(), key="k").status_code == 201
    r = post(session, stub, report(bytes_in=999), key="k")
    assert r.status_code == 422
    assert stub.totals()["my-tunnel"]["bytes_in"] == 1024
    assert len(stub.records) == 1
    # The key keeps its first answer.
    assert post(session, stub, report(), key="k").status_code == 201
    assert len(stub.records) == 1


def test_requests_without_key_are_recorded_each_time(stub, session):
    for _ in range(3):
        assert post(session, stub, report()).status_code == 201
    assert stub.totals()["my-tunnel"]["reports"] == 3
    assert stub.duplicates_deduped == 0


def test_dedupe_off_records_duplicates(session):
    with PlatformStub(secret=SECRET, dedupe=False) as s:
        for _ in range(2):
            assert post(session, s, report(), key="k").status_code == 201
        assert post(session, s, report(bytes_in=1), key="k").status_code == 201
        assert len(s.records) == 3
        assert s.duplicates_deduped == 0


def test_fail_next_with_retry_after(stub, session):
    stub.fail_next(2, status=429, retry_after=7)
    stub.fail_next(1, status=503, body="upstream down")
    answers = [post(session, stub, report(), key="k") for _ in range(4)]
    assert [r.status_code for r in answers] == [429, 429, 503, 201]
    assert answers[0].headers["Retry-After"] == "7"
    assert answers[0].json() == {"error": "too many requests"}
    assert "Retry-After" not in answers[2].headers and answers[2].text == "upstream down"
    assert len(stub.records) == 1
    assert [a.outcome for a in stub.attempts] == ["fault", "fault", "fault", "logged"]


def test_conflict_next_is_409_and_leaves_the_key_alone(stub, session):
    stub.conflict_next(1)
    assert post(session, stub, report(), key="k").status_code == 409
    assert post(session, stub, report(), key="k").status_code == 201
    assert len(stub.records) == 1 and stub.duplicates_deduped == 0


def test_error_rate_answers_5xx_and_records_nothing_for_them(stub, session):
    stub.error_rate = 1.0
    statuses = {post(session, stub, report(), key=f"k{i}").status_code for i in range(20)}
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert stub.records == [] and stub.pending_keys == set()

    def run(seed: int) -> list[int]:
        with PlatformStub(secret=SECRET, seed=seed) as s:
            s.error_rate = 0.5
            codes = [post(session, s, report(), key=f"k{i}").status_code for i in range(30)]
            assert len(s.records) == codes.count(201)
            return codes

    codes = run(7)
    assert codes == run(7)  # seeded: reproducible
    assert 0 < codes.count(201) < 30


def test_drop_after_commit_records_then_retry_gets_first_answer(stub, session):
    stub.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        post(session, stub, report(), key="k")
    assert len(stub.records) == 1
    assert stub.attempts[-1].outcome == "dropped" and stub.attempts[-1].status is None

    retry = post(session, stub, report(), key="k")
    assert retry.status_code == 201
    assert retry.json()["user_id"] == user_id_for("my-tunnel")
    assert len(stub.records) == 1 and stub.duplicates_deduped == 1


def test_drop_after_commit_rate(stub, session):
    stub.drop_after_commit = 1.0
    for i in range(3):
        with pytest.raises(requests.ConnectionError):
            post(session, stub, report(), key=f"k{i}")
    assert len(stub.records) == 3
    stub.drop_after_commit = 0.0
    assert post(session, stub, report(), key="k0").status_code == 201
    assert len(stub.records) == 3


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_answered_with_location_and_not_followed(stub, session, status):
    stub.redirect_next(1, status=status, location="http://elsewhere.example/x")
    r = post(session, stub, report(), key="k")
    assert r.status_code == status
    assert r.headers["Location"] == "http://elsewhere.example/x"
    assert r.history == []
    assert stub.records == []
    assert [a.outcome for a in stub.attempts] == ["redirect"]


def test_secret_can_change_at_runtime(stub, session):
    stub.secret = "rotated"
    assert post(session, stub, report(), secret=SECRET).status_code == 401
    assert post(session, stub, report(), secret="rotated").status_code == 201


def test_delay_beyond_client_timeout_still_commits(stub, session):
    stub.delay = 60
    with pytest.raises(requests.Timeout):
        post(session, stub, report(), key="slow", timeout=0.2)
    assert stub.wait_for(lambda: stub.pending_keys == {"slow"}, timeout=5)
    stub.delay = 0
    assert stub.wait_for(lambda: len(stub.records) == 1, timeout=5)
    assert post(session, stub, report(), key="slow").status_code == 201
    assert len(stub.records) == 1


def test_wait_for_returns_true_when_condition_holds_false_on_timeout(stub):
    t = threading.Thread(target=lambda: post_alone(stub, report()))
    t.start()
    assert stub.wait_for(lambda: len(stub.records) == 1, timeout=5) is True
    t.join(timeout=5)
    assert stub.wait_for(lambda: len(stub.records) == 2, timeout=0.05) is False


def test_on_record_and_verbose_log_never_show_the_secret(session, caplog):
    seen = []
    with PlatformStub(secret=SECRET, verbose=True, on_record=seen.append) as s:
        with caplog.at_level(logging.INFO, logger="sim.platform_stub"):
            post(session, s, report(), key="k")
            post(session, s, report(), secret="wrong-" + SECRET)
    assert [r.subdomain for r in seen] == ["my-tunnel"]
    assert "✅ my-tunnel: ↓1024B ↑2048B (15req) → User:" in caplog.text
    assert SECRET not in caplog.text


def test_reset_forgets_ledger_keys_and_faults(stub, session):
    post(session, stub, report(), key="k")
    stub.fail_next(5)
    stub.error_rate = 0.5
    stub.reset()
    assert stub.records == [] and stub.attempts == [] and stub.error_rate == 0
    assert post(session, stub, report(), key="k").status_code == 201
    assert len(stub.records) == 1 and stub.duplicates_deduped == 0


def test_stop_closes_kept_alive_connections(session):
    s = PlatformStub(secret=SECRET)
    s.start()
    assert post(session, s, report()).status_code == 201
    s.stop()
    with pytest.raises(requests.ConnectionError):
        post(session, s, report())


def test_runs_standalone_and_stops_on_ctrl_c():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.platform_stub",
            "--port",
            "0",
            "--secret",
            SECRET,
            "--skip",
            "gone,old",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("platform stub listening on http://127.0.0.1:"), line
        url = line.split()[4].rstrip(";")
        headers = {"x-internal-secret": SECRET, "Idempotency-Key": "k"}
        r = requests.post(url + ENDPOINT_PATH, json=report(), headers=headers, timeout=5)
        assert r.status_code == 201
        r = requests.post(url + ENDPOINT_PATH, json=report("old"), headers=headers, timeout=5)
        assert r.status_code == 422  # same key, other body
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "✅ my-tunnel: ↓1024B ↑2048B (15req) → User:" in err
    assert "422 mismatch" in err
    assert SECRET not in err
