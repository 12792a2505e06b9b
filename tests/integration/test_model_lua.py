"""The Lua scripts build the same strings as app/model.py: the report key's string form
(due/dead members, ``rep:`` and ``lock:`` keys) and the report states they write."""

from __future__ import annotations

from app.ledger import Ledger
from app.model import ReportKey, ReportState

RI = 60


def sealed(ledger: Ledger, subs: dict[str, tuple[int, int, int]]) -> int:
    now = int(ledger.now())
    start = now - now % RI - 2 * RI
    for sub, (bi, bo, rq) in subs.items():
        ledger.r.hset(ledger.k("iv", start), mapping={f"{sub}:i": bi, f"{sub}:o": bo, f"{sub}:r": rq})
    ledger.r.zadd(ledger.k("open"), {str(start): start})
    assert ledger.seal(start) == sorted(subs)
    return start


def test_seal_lua_writes_the_report_key_and_state_python_reads(r):
    ledger = Ledger(r, "agree", RI)
    start = sealed(ledger, {"a-tun": (1, 2, 3), "b": (4, 5, 6)})
    keys = {ReportKey(start, "a-tun"), ReportKey(start, "b")}
    # The due set's members parse as report keys, and each has its hash where Python looks.
    due = {ReportKey.parse(m) for m in r.zrange(ledger.k("due"), 0, -1)}
    assert due == keys
    assert set(ledger.report_keys()) == keys
    for key in keys:
        assert r.hget(ledger.rep_key(key), "state") == ReportState.PENDING.encode()
        assert ledger.report(key).state is ReportState.PENDING


def test_claim_lua_marks_the_hash_python_reads_as_queued(r):
    ledger = Ledger(r, "agree", RI)
    start = sealed(ledger, {"a-tun": (1, 2, 3)})
    key = ReportKey(start, "a-tun")
    assert ledger.claim([key], lease=60) == [key]
    assert ledger.report(key).state is ReportState.QUEUED
    # Nothing else was created under another spelling of the key.
    assert sorted(k.decode() for k in r.scan_iter(match=ledger.k("rep", "*"))) == [ledger.rep_key(key)]


def test_every_state_a_script_or_the_ledger_writes_is_a_report_state(r):
    ledger = Ledger(r, "agree", RI)
    start = sealed(ledger, {"a": (1, 1, 1), "b": (1, 1, 1), "c": (1, 1, 1)})
    a, b, c = (ReportKey(start, s) for s in "abc")
    ledger.claim([a, b, c], lease=60)
    ledger.mark_delivered(a, ReportState.SKIPPED, "", 60)
    ledger.park(b, ledger.now() + 60, "HTTP 503", 15)
    ledger.dead_letter(c, "rejected")
    # A final answer's record is the first word of its field in the done hash (finish.lua).
    done = r.hget(ledger.done_key(a.start), a.subdomain).decode()
    states = {a: done.split(" ", 1)[0], **{k: r.hget(ledger.rep_key(k), "state").decode() for k in (b, c)}}
    assert states == {a: "skipped", b: "due", c: "dead"}
    assert all(s in set(ReportState) for s in states.values())
    assert [str(m.decode()) for m in r.zrange(ledger.k("dead"), 0, -1)] == [str(c)]


def test_an_amendment_made_by_commit_lua_is_a_report_key_python_reads_and_finishes(r):
    """``commit.lua`` builds ``<start>:<sub>:a<n>``; Python parses it, ``begin.lua`` and
    ``finish.lua`` use ``<sub>:a<n>`` as its field in the done hash."""
    from app.ledger import Partial

    ledger = Ledger(r, "agree-amend", RI)
    ledger.initialise(0)
    start = sealed(ledger, {"a-tun": (1, 2, 3)})
    res = ledger.commit("uid/c", "", "cid|1|1", counters={}, parts={start: Partial({"a-tun": [4, 5, 6]})})
    assert res.amendments == 1
    key = ReportKey(start, "a-tun", 1)
    assert str(key) == f"{start}:a-tun:a1" and ReportKey.parse(str(key)) == key
    assert {ReportKey.parse(m) for m in r.zrange(ledger.k("due"), 0, -1)} == {ReportKey(start, "a-tun"), key}
    assert ledger.claim([key], 60) == [key]
    status, rep = ledger.begin(key, "tok", 30, RI, "test")
    assert status == "go" and (rep.key, rep.bytes_in, rep.requests, rep.state) == (key, 4, 6, ReportState.QUEUED)
    ledger.finish(key, ReportState.DELIVERED, "u1", 3600, "tok")
    assert r.hkeys(ledger.done_key(start)) == [b"a-tun:a1"]
    done = ledger.report(key)
    assert (done.key, done.state, done.bytes_in) == (key, ReportState.DELIVERED, 4)
    assert key in ledger.report_keys()
    assert ledger.begin(key, "tok2", 30, RI, "test") == ("final", ReportState.DELIVERED)
    # The original is another report, untouched.
    assert ledger.report(ReportKey(start, "a-tun")).bytes_in == 1


def test_begin_takes_nothing_for_a_process_of_another_report_identity(r):
    # A report worker still running with the old REPORT_INTERVAL or SCRAPER_ID after
    # `init-ledger --force` changed them (or one that started while Redis was down, so its
    # start check was skipped) must not send under its own key (a review).
    ledger = Ledger(r, "agree-identity", RI)
    ledger.initialise(0, scraper_id="test")
    start = sealed(ledger, {"a-tun": (1, 2, 3)})
    key = ReportKey(start, "a-tun")
    assert ledger.claim([key], 60) == [key]
    for interval, scraper in ((RI * 2, "test"), (RI, "someone-else")):
        status, why = ledger.begin(key, "tok", 30, interval, scraper)
        assert status == "identity" and f"REPORT_INTERVAL='{RI}' and SCRAPER_ID='test'" in why
        assert not r.exists(ledger.k("lock", key))  # nothing taken
        assert ledger.report(key).attempts == 0
    assert ledger.begin(key, "tok", 30, RI, "test")[0] == "go"
