"""The Redis ledger against a real redis-server: the atomic commit, sealing, claiming
and the report states."""

from __future__ import annotations

import itertools
import time

import pytest

from app.ledger import Ledger, Partial, cursor_digest
from app.model import CommitStatus, Cursor, ReportKey, ReportState
from app.watermark import ReadRecord

RI = 3600  # long intervals: a test never straddles an interval boundary by accident
PREFIX = "tl"
_seq = itertools.count()


@pytest.fixture
def ledger(r):
    led = Ledger(r, f"{PREFIX}{next(_seq)}", RI)
    assert led.initialise(0)
    return led


def current_start(led: Ledger) -> int:
    now = int(led.now())
    return now - now % led.ri


def snapshot(led: Ledger) -> dict:
    """Every key under the ledger's prefix with its content."""
    out = {}
    for key in sorted(led.r.scan_iter(match=led.p + ":*")):
        kind = led.r.type(key).decode()
        if kind == "hash":
            out[key] = led.r.hgetall(key)
        elif kind == "zset":
            out[key] = led.r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = led.r.lrange(key, 0, -1)
        else:
            out[key] = led.r.get(key)
    return out


def past_interval(led: Ledger, counts: dict[str, tuple[int, int, int]], ago: int = 2) -> int:
    """An ended interval ``ago`` intervals back holding ``counts``, as commits leave it."""
    start = current_start(led) - ago * led.ri
    for sub, (bi, bo, rq) in counts.items():
        led.r.hset(led.k("iv", start), mapping={f"{sub}:i": bi, f"{sub}:o": bo, f"{sub}:r": rq})
    led.r.zadd(led.k("open"), {str(start): start})
    return start


def due_score(led: Ledger, key: ReportKey) -> float | None:
    return led.r.zscore(led.k("due"), str(key))


# Commit --------------------------------------------------------------------------------


def test_commit_adds_counts_moves_cursor_and_counts(ledger):
    new = Cursor("cid-1", 1_000, 2).encode()
    res = ledger.commit("uid/traefik", "", new, {"a": [10, 20, 1], "b": [0, 5, 2]}, {"lines_read": 3, "zero": 0})
    assert res.status == CommitStatus.OK
    start = int(res.detail)
    assert start % RI == 0 and start == current_start(ledger)
    assert ledger.cursor_raw("uid/traefik") == new
    assert ledger.interval_totals(start) == {"a": [10, 20, 1], "b": [0, 5, 2]}
    assert ledger.stats() == {"lines_read": 3}
    assert ledger.open_intervals(ledger.now() + RI) == [start]

    again = ledger.commit("uid/traefik", new, Cursor("cid-1", 2_000, 1).encode(), {"a": [1, 1, 1]}, {"lines_read": 1})
    assert again.status == CommitStatus.OK
    assert ledger.interval_totals(start)["a"] == [11, 21, 2]
    assert ledger.stats() == {"lines_read": 4}


def test_commit_with_wrong_cursor_is_a_conflict_and_changes_nothing(ledger):
    first = Cursor("cid-1", 1_000, 1).encode()
    assert ledger.commit("uid/traefik", "", first, {"a": [10, 20, 1]}, {"lines_read": 1}).status == CommitStatus.OK
    before = snapshot(ledger)

    stale = ledger.commit("uid/traefik", Cursor("cid-1", 500, 1).encode(), Cursor("cid-1", 900, 1).encode(),
                          {"a": [99, 99, 9]}, {"lines_read": 9})
    assert (stale.status, stale.detail) == (CommitStatus.CONFLICT, first)
    assert snapshot(ledger) == before


def test_no_cursor_yet_is_compared_like_any_value(ledger):
    field = "uid/traefik"
    # Expecting a cursor where there is none: conflict, reported as "".
    res = ledger.commit(field, Cursor("cid", 5, 1).encode(), Cursor("cid", 6, 1).encode(), {"a": [1, 1, 1]}, {"x": 1})
    assert (res.status, res.detail) == (CommitStatus.CONFLICT, "")
    assert ledger.cursor_raw(field) == "" and ledger.stats() == {} and ledger.open_intervals(ledger.now() + RI) == []

    # Expecting none: the first commit wins, a second "none yet" commit conflicts.
    assert ledger.commit(field, "", Cursor("cid", 6, 1).encode(), {"a": [1, 1, 1]}, {"x": 1}).status == CommitStatus.OK
    before = snapshot(ledger)
    dup = ledger.commit(field, "", Cursor("cid", 6, 1).encode(), {"a": [1, 1, 1]}, {"x": 1})
    assert (dup.status, dup.detail) == (CommitStatus.CONFLICT, Cursor("cid", 6, 1).encode())
    assert snapshot(ledger) == before


def test_commit_compares_digests_and_never_ships_a_large_cursor_back(ledger):
    """A busy pod's cursor is tens of KB: the script compares SHA-1 digests, and a
    conflict answers with the stored cursor's digest."""
    counts = {(1_000 + i, i.to_bytes(8, "big")): 1 for i in range(2_000)}
    big = Cursor.build("cid", 3_000, 1_000, counts).encode()
    assert len(big) > 25_000
    assert ledger.commit("uid/traefik", "", big, {"a": [1, 1, 1]}, {}).status == CommitStatus.OK
    assert ledger.cursor_raw("uid/traefik") == big
    script = ledger._commit  # the registered script: its answer, not the Python wrapper's
    keys = [ledger.k("init"), ledger.k("cursors"), ledger.k("stats"), ledger.k("open"), ledger.k("sealed")]
    status, detail = script(keys=keys, args=[ledger.p, "uid/traefik", cursor_digest("stale"), "new", RI, 0, 0])
    assert (status, detail) == (b"conflict", cursor_digest(big).encode())
    stale = ledger.commit("uid/traefik", "stale", "new", {"a": [1, 1, 1]}, {})
    assert (stale.status, stale.digest) == (CommitStatus.CONFLICT, cursor_digest(big))
    nxt = Cursor.build("cid", 3_001, 2_001, counts).encode()
    assert ledger.commit("uid/traefik", big, nxt, {"a": [1, 1, 1]}, {}).status == CommitStatus.OK
    assert ledger.cursor_raw("uid/traefik") == nxt


def test_commit_without_init_record_is_noledger_and_writes_nothing(r):
    led = Ledger(r, f"{PREFIX}{next(_seq)}", RI)
    res = led.commit("uid/traefik", "", "cid|1|1", {"a": [1, 2, 3]}, {"lines_read": 3})
    assert (res.status, res.detail) == (CommitStatus.NO_LEDGER, "")
    assert list(r.scan_iter(match=led.p + ":*")) == []


def test_one_commit_adds_each_part_to_its_own_interval(ledger):
    """A read spanning intervals: each line's sums go to the interval of its stamp, in
    the same atomic step as the cursor move."""
    start = current_start(ledger)
    parts = {start - RI: Partial({"a": [1, 2, 3]}), start: Partial({"a": [10, 20, 1], "b": [5, 0, 1]}, {"b": 1})}
    res = ledger.commit("uid/traefik", "", "cid|1|1", counters={"lines_read": 5}, parts=parts)
    assert res.status == CommitStatus.OK and res.intervals == (start - RI, start) and res.amendments == 0
    assert ledger.interval_totals(start - RI) == {"a": [1, 2, 3]}
    assert ledger.interval_totals(start) == {"a": [10, 20, 1], "b": [5, 0, 1]}
    assert ledger.interval_unmetered(start) == {"b": 1}
    assert ledger.open_intervals(ledger.now() + RI) == [start - RI, start]
    assert ledger.cursor_raw("uid/traefik") == "cid|1|1"


def amendments(led: Ledger, start: int) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for key in led.report_keys():
        if key.start == start and key.amendment:
            rep = led.report(key)
            out[key.name] = (rep.bytes_in, rep.bytes_out, rep.requests, rep.state)
    return out


def test_a_commit_for_a_sealed_interval_makes_amendments_and_never_touches_the_original(ledger):
    start = past_interval(ledger, {"a": (1, 2, 3)})
    assert ledger.seal(start) == ["a"]
    (orig,) = ledger.claim([ReportKey(start, "a")], 300)
    before = ledger.report(orig)

    res = ledger.commit("uid/traefik", "", "cid|1|1", counters={}, parts={start: Partial({"a": [7, 8, 2], "b": [1, 1, 1]})})
    assert res.status == CommitStatus.OK and res.amendments == 2 and res.intervals == (start,)
    again = ledger.commit("uid/traefik", "cid|1|1", "cid|2|1", counters={}, parts={start: Partial({"a": [1, 0, 1]})})
    assert again.amendments == 1
    assert amendments(ledger, start) == {"a:a1": (7, 8, 2, ReportState.PENDING), "b:a1": (1, 1, 1, ReportState.PENDING),
                                         "a:a2": (1, 0, 1, ReportState.PENDING)}
    # The original's body is untouched; the interval's counts too (nothing re-opened).
    assert ledger.report(orig) == before
    assert ledger.interval_totals(start) == {"a": [1, 2, 3]}
    assert ledger.open_intervals(ledger.now() + RI) == []
    # Amendments are claimable at once (the sweep sends them), with their own key.
    for name in ("a:a1", "a:a2", "b:a1"):
        assert due_score(ledger, ReportKey.of(start, name)) == 0
        assert ledger.report(ReportKey.of(start, name)).sealed_at is not None
    assert ledger.stats()["amendments"] == 3


def test_sealed_up_to_mark_outlives_the_intervals_it_sealed(ledger):
    """After an interval's counts were compacted into the history and it left the sealed
    set, a line for it is still an amendment: never a new original under a key the
    platform has seen."""
    start = past_interval(ledger, {"a": (1, 2, 3)}, ago=3)
    assert ledger.seal(start) == ["a"]
    ledger.mark_delivered(ReportKey(start, "a"), ReportState.DELIVERED, "u", 3600)
    assert ledger.expire_intervals(ledger.now()) == 1
    assert ledger.r.zscore(ledger.k("sealed"), str(start)) is None and ledger.sealed_to() == start + RI
    res = ledger.commit("uid/traefik", "", "cid|1|1", counters={}, parts={start: Partial({"a": [1, 1, 1]})})
    assert res.amendments == 1
    assert amendments(ledger, start) == {"a:a1": (1, 1, 1, ReportState.PENDING)}
    assert ledger.interval_totals(start) == {}
    # An interval below the mark that never had counts (nothing to seal then) too.
    earlier = start - RI
    res = ledger.commit("uid/traefik", "cid|1|1", "cid|2|1", counters={}, parts={earlier: Partial({"c": [1, 1, 1]})})
    assert res.amendments == 1 and ledger.interval_totals(earlier) == {}


def test_a_compacted_interval_in_the_history_takes_amendments_without_a_mark(ledger):
    """A ledger written by the previous version has no mark: its compacted intervals are
    known by their history line."""
    start = current_start(ledger) - 5 * RI
    ledger.r.zadd(ledger.k("history"), {f"{start} 1 1 1 1 0 {start + RI}": start})
    res = ledger.commit("uid/traefik", "", "cid|1|1", counters={}, parts={start: Partial({"a": [1, 1, 1]})})
    assert res.amendments == 1 and ledger.interval_totals(start) == {}


def test_lines_older_than_the_retention_are_counted_not_reported(r):
    led = Ledger(r, f"{PREFIX}{next(_seq)}", RI, retention=2 * RI)
    assert led.initialise(0)
    old = current_start(led) - 4 * RI
    res = led.commit("uid/traefik", "", "cid|1|1", counters={"lines_read": 3},
                     parts={old: Partial({"a": [1, 1, 2]}), current_start(led): Partial({"a": [1, 1, 1]})})
    assert res.status == CommitStatus.OK and res.expired == 2 and res.intervals == (current_start(led),)
    assert led.stats() == {"lines_read": 3, "lines_expired": 2}
    assert led.interval_totals(old) == {} and amendments(led, old) == {}
    assert led.cursor_raw("uid/traefik") == "cid|1|1"


def test_the_read_record_keeps_the_latest_end_and_clears_a_failure(ledger):
    ledger.note_read_failure("uid")
    assert ledger.read_records()["uid"].fail_since is not None
    rec = Ledger.read_record("cid", 100.5, 7)
    assert ledger.commit("uid/traefik", "", "cid|1|1", source="uid", record=rec).status == CommitStatus.OK
    assert ledger.read_records() == {"uid": ReadRecord("cid", 100.5, 7)}
    # A later read cut at limitBytes keeps the end reached before; another container does not.
    ledger.commit("uid/traefik", "cid|1|1", "cid|2|1", source="uid", record=Ledger.read_record("cid", None, 9))
    assert ledger.read_records() == {"uid": ReadRecord("cid", 100.5, 9)}
    ledger.commit("uid/traefik", "cid|2|1", "cid2|0|0", source="uid", record=Ledger.read_record("cid2", None, 0))
    assert ledger.read_records() == {"uid": ReadRecord("cid2", None, 0)}
    # A conflict writes no record.
    ledger.commit("uid/traefik", "stale", "x", source="uid", record=Ledger.read_record("cid2", 200.0, 1))
    assert ledger.read_records() == {"uid": ReadRecord("cid2", None, 0)}


def test_commit_that_would_overflow_writes_nothing(ledger):
    near = 9_100_000_000_000_000_000  # below 2**63 - 1 = 9_223_372_036_854_775_807
    start = current_start(ledger)
    for s in (start, start + RI):  # where the commit lands, even across a boundary
        ledger.r.hset(ledger.k("iv", s), mapping={"a:i": 1, "a:o": 1, "a:r": 1, "b:i": near, "b:o": 0, "b:r": 1})
    ledger.r.hset(ledger.k("cursors"), "uid/traefik", "cid|1|1")
    before = snapshot(ledger)

    res = ledger.commit("uid/traefik", "cid|1|1", "cid|2|1", {"a": [5, 5, 1], "b": [200_000_000_000_000_000, 0, 1]},
                        {"lines_read": 2})
    assert (res.status, res.detail) == (CommitStatus.OVERFLOW, "b")
    assert snapshot(ledger) == before

    # A single partial above the limit on its own is refused too.
    res = ledger.commit("uid/traefik", "cid|1|1", "cid|2|1", {"c": [0, 2**63 - 1, 1]}, {})
    assert res.status == CommitStatus.OVERFLOW
    assert snapshot(ledger) == before

    # Just below it is fine.
    ok = ledger.commit("uid/traefik", "cid|1|1", "cid|2|1", {"b": [1, 0, 1]}, {})
    assert ok.status == CommitStatus.OK
    assert ledger.interval_totals(int(ok.detail))["b"] == [near + 1, 0, 2]


# Seal ---------------------------------------------------------------------------------


def test_seal_of_an_interval_not_ended_returns_nothing(ledger):
    res = ledger.commit("uid/traefik", "", "cid|1|1", {"a": [1, 2, 3]}, {})
    start = int(res.detail)
    before = snapshot(ledger)
    assert ledger.seal(start) == []
    assert ledger.seal(start + RI) == []
    assert snapshot(ledger) == before
    assert ledger.r.zscore(ledger.k("sealed"), str(start)) is None


def test_seal_creates_reports_once(ledger):
    start = past_interval(ledger, {"b-tun": (10, 20, 2), "a-tun": (1, 2, 3), "idle": (0, 0, 0)})
    assert ledger.open_intervals(ledger.now()) == [start]

    assert ledger.seal(start) == ["a-tun", "b-tun"]  # no report without requests
    rep = ledger.report(ReportKey(start, "a-tun"))
    assert (rep.bytes_in, rep.bytes_out, rep.requests, rep.state, rep.attempts) == (1, 2, 3, ReportState.PENDING, 0)
    assert ledger.report(ReportKey(start, "idle")) is None
    assert due_score(ledger, ReportKey(start, "a-tun")) == 0
    assert ledger.open_intervals(ledger.now()) == []

    before = snapshot(ledger)
    assert ledger.seal(start) == []
    assert snapshot(ledger) == before


def test_seal_twice_after_a_late_partial_does_not_recreate_reports(ledger):
    start = past_interval(ledger, {"a-tun": (1, 2, 3)})
    assert ledger.seal(start) == ["a-tun"]
    ledger.mark_delivered(ReportKey(start, "a-tun"), ReportState.DELIVERED, "u1", 3600)
    # Something re-opens the interval (a stray write); sealing again creates nothing.
    ledger.r.zadd(ledger.k("open"), {str(start): start})
    assert ledger.seal(start) == []
    assert ledger.report(ReportKey(start, "a-tun")).state == ReportState.DELIVERED
    assert due_score(ledger, ReportKey(start, "a-tun")) is None
    assert ledger.open_intervals(ledger.now()) == []


def test_open_intervals_lists_only_ended_ones(ledger):
    old = past_interval(ledger, {"a": (1, 1, 1)}, ago=3)
    ended = past_interval(ledger, {"a": (1, 1, 1)}, ago=1)
    res = ledger.commit("uid/traefik", "", "cid|1|1", {"a": [1, 1, 1]}, {})
    assert res.status == CommitStatus.OK
    assert ledger.open_intervals(ledger.now()) == [old, ended]
    assert ledger.open_intervals(ended + RI - 1) == [old]


# Claim --------------------------------------------------------------------------------


def sealed_reports(led: Ledger, *subs: str, ago: int = 2) -> list[ReportKey]:
    start = past_interval(led, {s: (1, 2, 3) for s in subs}, ago=ago)
    assert led.seal(start) == sorted(subs)
    return [ReportKey(start, s) for s in sorted(subs)]


def test_claim_gives_a_member_once_until_its_lease_expires(ledger):
    (m,) = sealed_reports(ledger, "a")
    assert ledger.claim([m], lease=300) == [m]
    assert ledger.report(m).state == ReportState.QUEUED
    assert due_score(ledger, m) >= ledger.now() + 298
    assert ledger.claim([m], lease=300) == []
    assert ledger.claim_due(lease=300, limit=10) == []

    # The lease runs out (a lost message): claimable again, once.
    ledger.r.zadd(ledger.k("due"), {str(m): ledger.now() - 1})
    assert ledger.claim([m], lease=300) == [m]
    assert ledger.claim([m], lease=300) == []


def test_claim_ignores_members_not_due(ledger):
    assert ledger.claim([ReportKey(123, "nope")], lease=60) == []
    assert ledger.claim([], lease=60) == []
    assert not ledger.r.exists(ledger.rep_key(ReportKey(123, "nope")))


def test_claim_due_honours_scores_and_limit(ledger):
    members = sealed_reports(ledger, "a", "b", "c", "d")
    now = ledger.now()
    scores = [now + 600, now - 5, 0, now - 1]
    ledger.r.zadd(ledger.k("due"), {str(m): score for m, score in zip(members, scores, strict=True)})
    got = ledger.claim_due(lease=300, limit=2)
    assert got == [members[2], members[1]]  # lowest scores first
    assert ledger.claim_due(lease=300, limit=10) == [members[3]]
    assert ledger.claim_due(lease=300, limit=10) == []  # members[0] not due for 10 minutes


# Delivery states ----------------------------------------------------------------------


def test_mark_delivered_removes_from_due_and_retrying(ledger):
    (m,) = sealed_reports(ledger, "a")
    assert ledger.claim([m], 300) == [m]
    assert ledger.reserve_retry(m, ledger.now() + 60, cap=10)
    ledger.mark_delivered(m, ReportState.DELIVERED, "abc123def456", retention=3600)
    rep = ledger.report(m)
    assert rep.state == ReportState.DELIVERED
    assert (rep.user_id, rep.attempts, rep.bytes_in) == ("abc123def456", 0, 1)
    # Kept compact in its interval's done hash for the retention, its own hash gone.
    assert not ledger.r.exists(ledger.rep_key(m))
    assert 0 < ledger.r.ttl(ledger.done_key(m.start)) <= 3600
    assert m in ledger.report_keys()
    assert due_score(ledger, m) is None
    assert ledger.r.zscore(ledger.k("retrying"), str(m)) is None
    assert ledger.due_count() == 0
    assert ledger.claim_due(300, 10) == []
    assert ledger.stats()["reports_delivered"] == 1


def test_park_dead_letter_and_revive(ledger):
    m1, m2 = sealed_reports(ledger, "a", "b")
    now = ledger.now()

    ledger.park(m1, now + 120, "HTTP 503", 15)
    rep = ledger.report(m1)
    assert (rep.state, rep.reason) == (ReportState.DUE, "HTTP 503")
    assert due_score(ledger, m1) == pytest.approx(now + 120, abs=0.01)
    assert ledger.claim([m1], 300) == []  # not before next_at

    ledger.dead_letter(m1, "rejected: HTTP 400")
    rep = ledger.report(m1)
    assert (rep.state, rep.reason) == (ReportState.DEAD, "rejected: HTTP 400")
    assert due_score(ledger, m1) is None
    assert [d.key for d in ledger.dead_letters()] == [m1]
    assert ledger.claim([m1], 300) == []

    assert ledger.revive(m2) is False  # not dead
    assert ledger.revive(m1) is True
    rep = ledger.report(m1)
    assert (rep.state, rep.reason) == (ReportState.PENDING, "")
    assert ledger.dead_letters() == []
    assert due_score(ledger, m1) == 0
    assert ledger.revive(m1) is False  # once
    assert ledger.claim([m1], 300) == [m1]
    assert ledger.stats()["reports_parked"] == 1 and ledger.stats()["reports_dead"] == 1


def test_reserve_retry_is_capped(ledger):
    now = ledger.now()
    a, b, c = (ReportKey(1, s) for s in "abc")
    assert ledger.reserve_retry(a, now + 60, cap=2)
    assert ledger.reserve_retry(b, now + 60, cap=2)
    assert not ledger.reserve_retry(c, now + 60, cap=2)
    assert ledger.reserve_retry(a, now + 90, cap=2)  # already holds a place
    assert ledger.r.zscore(ledger.k("retrying"), str(a)) == pytest.approx(now + 90, abs=0.01)
    # A wait that has ended frees its place.
    ledger.r.zadd(ledger.k("retrying"), {str(b): now - 1})
    assert ledger.reserve_retry(c, now + 60, cap=2)
    assert ledger.r.zscore(ledger.k("retrying"), str(b)) is None
    assert ledger.r.zcard(ledger.k("retrying")) == 2


# Expiry ---------------------------------------------------------------------------------


def test_expire_intervals_never_drops_an_interval_with_an_undelivered_report(ledger):
    (pending,) = sealed_reports(ledger, "a", ago=10)
    (parked,) = sealed_reports(ledger, "b", ago=9)
    (delivered,) = sealed_reports(ledger, "c", ago=8)
    (dead,) = sealed_reports(ledger, "d", ago=7)
    (recent,) = sealed_reports(ledger, "e", ago=1)
    ledger.park(parked, ledger.now() + 3600, "HTTP 503", 15)
    ledger.mark_delivered(delivered, ReportState.DELIVERED, "u", 3600)
    ledger.dead_letter(dead, "rejected")
    ledger.mark_delivered(recent, ReportState.DELIVERED, "u", 3600)
    start = {m: m.start for m in (pending, parked, delivered, dead, recent)}

    dropped = ledger.expire_intervals(older_than=start[recent])  # all but the recent one ended before
    assert dropped == 2  # the delivered one and the dead one
    for m in (pending, parked):
        assert ledger.interval_totals(start[m]) != {}
        assert ledger.r.zscore(ledger.k("sealed"), str(start[m])) is not None
    for m in (delivered, dead):
        assert ledger.interval_totals(start[m]) == {}
    assert ledger.interval_totals(start[recent]) != {}  # not old enough
    # The dead letter keeps its payload.
    assert ledger.report(dead).bytes_in == 1
    assert ledger.expire_intervals(older_than=start[recent]) == 0

    ledger.mark_delivered(pending, ReportState.DELIVERED, "u", 3600)
    assert ledger.expire_intervals(older_than=start[recent]) == 1
    assert ledger.interval_totals(start[pending]) == {}


# Upgraded connections (unmetered) ------------------------------------------------------


def test_unmetered_goes_through_commit_and_seal_into_the_report_not_its_body(r):
    from app.reporting import report_body

    led = Ledger(r, f"{PREFIX}{next(_seq)}", 1)  # 1 s intervals: this one ends during the test
    assert led.initialise(0)
    partial = {"a": [10, 20, 3], "b": [1, 2, 1], "c": [0, 0, 2]}
    res = led.commit("uid/traefik", "", "cid|1|1", partial, {"unmetered_requests": 3},
                     unmetered={"a": 1, "b": 0, "c": 2, "not-in-partial": 5})
    assert res.status == CommitStatus.OK
    start = int(res.detail)
    assert led.interval_totals(start) == partial  # the [in, out, requests] view is unchanged
    assert led.interval_unmetered(start) == {"a": 1, "c": 2}
    assert b"b:u" not in r.hgetall(led.k("iv", start))  # only when non-zero
    assert led.unmetered() == {"a": 1, "c": 2}
    assert led.stats()["unmetered_requests"] == 3

    # A conflicting commit writes no unmetered count either.
    stale = led.commit("uid/traefik", "", "cid|2|1", {"a": [1, 1, 1]}, {}, unmetered={"a": 1})
    assert stale.status == CommitStatus.CONFLICT
    assert led.unmetered() == {"a": 1, "c": 2}

    while led.now() < start + 1.05:
        time.sleep(0.05)
    assert sorted(led.seal(start)) == ["a", "b", "c"]
    reports = {sub: led.report(ReportKey(start, sub)) for sub in partial}
    assert {sub: rep.unmetered for sub, rep in reports.items()} == {"a": 1, "b": 0, "c": 2}
    assert b"unmetered" not in r.hgetall(led.rep_key(ReportKey(start, "b")))
    assert (reports["c"].bytes_in, reports["c"].bytes_out, reports["c"].requests) == (0, 0, 2)
    body = report_body(reports["a"], 1)
    assert sorted(body) == ["bytes_in", "bytes_out", "requests", "subdomain", "timestamp"]  # the contract's

    # The per-tunnel totals outlive the interval: the next interval adds to them.
    nxt = led.commit("uid/traefik", "cid|1|1", "cid|3|1", {"a": [0, 0, 1]}, {}, unmetered={"a": 1})
    assert nxt.status == CommitStatus.OK and int(nxt.detail) > start
    assert led.unmetered() == {"a": 2, "c": 2}


def test_raising_interval_retention_never_reuses_an_amendment_number(r):
    """``aseq:<start>`` never expires: with an expiry taken from the retention in force
    at commit time (7 d), an operator raising INTERVAL_RETENTION to 30 d would let a late
    line of that interval, still inside the new retention, start the sequence again at
    ``a1``, a key the platform has seen and deduplicates: those lines never billed."""
    hour = 3600
    old = Ledger(r, f"{PREFIX}{next(_seq)}", hour, retention=7 * 86400)
    assert old.initialise(0)
    now = int(old.now())
    old.r.set(old.k("sealedto"), str(now - now % hour))
    start = now - now % hour - 9 * 86400  # beyond 7 days: not reported, as documented
    res = old.commit("uid/traefik", "", "cid|1|1", counters={}, parts={start: Partial({"a": [0, 10, 1]})})
    assert res.status == CommitStatus.OK and res.expired == 1
    start = now - now % hour - 6 * 86400  # within 7 days
    res = old.commit("uid/traefik", "cid|1|1", "cid|2|1", counters={}, parts={start: Partial({"a": [0, 10, 1]})})
    assert res.amendments == 1
    old.mark_delivered(ReportKey(start, "a", 1), ReportState.DELIVERED, "user-1", 30 * 86400)
    assert old.r.ttl(old.k("aseq", start)) == -1  # no expiry: nothing for Redis to drop
    # A key made with an expiry (by an earlier build) loses it at its next amendment.
    old.r.expire(old.k("aseq", start), 86400)
    new = Ledger(r, old.p, hour, retention=30 * 86400)  # INTERVAL_RETENTION raised
    res = new.commit("uid/traefik", "cid|2|1", "cid|3|1", counters={}, parts={start: Partial({"a": [0, 20, 2]})})
    assert res.amendments == 1 and res.expired == 0
    assert new.r.ttl(new.k("aseq", start)) == -1
    made = sorted(k.amendment for k in new.report_keys() if k.start == start and k.subdomain == "a")
    assert made == [1, 2]
