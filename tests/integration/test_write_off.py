"""Writing off a dead letter the platform will never take: only a dead letter, atomic,
never sent afterwards, audited for good (``write_off.lua``, the ``write-off`` command)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import redis

from app.ledger import Ledger, Partial
from app.metrics import NS
from app.model import ReportKey, ReportState
from app.reporting import idempotency_key
from tests.integration.test_metrics import scrape
from tests.integration.test_model_lua import sealed

RI = 60  # test_model_lua.sealed's
ROOT = pathlib.Path(__file__).parents[2]


def dead_letters(ledger: Ledger, scraper_id: str, dead: dict[str, tuple[int, int, int]], **alive: tuple[int, int, int]):
    """Initialise ``ledger``, seal an interval with ``dead`` and ``alive``'s counts, and
    dead-letter ``dead``'s reports as a 422 would; the interval's start."""
    ledger.initialise(0, scraper_id=scraper_id)
    start = sealed(ledger, {**dead, **alive})
    for sub in dead:
        ledger.dead_letter(ReportKey(start, sub), "rejected: HTTP 422: unknown tunnel")
    return start


def test_only_a_dead_letter_is_written_off_once_and_never_sent(r):
    ledger = Ledger(r, "wo", RI)
    start = dead_letters(ledger, "s", {"gone": (10, 20, 3), "other": (4, 5, 6)}, live=(1, 2, 1))
    gone, live, other = (ReportKey(start, s) for s in ("gone", "live", "other"))

    assert ledger.write_off(live, "x", "ops", 3600, "k") == ("not_dead", None)  # pending: left alone
    assert ledger.report(live).state is ReportState.PENDING
    assert r.zscore(ledger.k("due"), str(live)) is not None

    outcome, entry = ledger.write_off(gone, "tunnel deleted on 2026-11-30", "ops", 3600, "s:…/60:gone")
    assert outcome == "written_off" and entry == ledger.write_offs()[0]
    rep = ledger.report(gone)
    assert (rep.state, rep.bytes_in, rep.bytes_out, rep.requests) == (ReportState.WRITTEN_OFF, 10, 20, 3)
    assert not r.exists(ledger.rep_key(gone))  # moved into the done hash, as a delivered report
    assert 0 < r.ttl(ledger.done_key(start)) <= 3600
    assert [d.key for d in ledger.dead_letters()] == [other]
    assert ledger.stats()["reports_written_off"] == 1
    (audit,) = ledger.write_offs()
    assert {k: audit[k] for k in ("key", "idempotency_key", "bytes_in", "bytes_out", "requests", "attempts",
                                  "dead_reason", "by", "reason")} == {
        "key": str(gone), "idempotency_key": "s:…/60:gone", "bytes_in": "10", "bytes_out": "20", "requests": "3",
        "attempts": "0", "dead_reason": "rejected: HTTP 422: unknown tunnel", "by": "ops",
        "reason": "tunnel deleted on 2026-11-30"}
    assert float(audit["written_off_at"]) >= float(audit["dead_at"]) > 0

    # Once: a second write-off, a replay and a send all find it final.
    assert ledger.write_off(gone, "again", "ops", 3600, "k") == ("not_dead", None)
    assert len(ledger.write_offs()) == 1 and ledger.stats()["reports_written_off"] == 1
    assert ledger.revive(gone) is False
    assert ledger.claim([gone], 60) == []
    assert ledger.begin(gone, "tok", 30, RI, "s") == ("final", ReportState.WRITTEN_OFF)
    assert not r.exists(ledger.k("lock", gone))
    samples = scrape(ledger)
    assert samples[(f"{NS}_reports_total", (("outcome", "written_off"),))] == 1
    assert samples[(f"{NS}_dead_letters", ())] == 1


def test_an_amendment_is_written_off_under_its_own_name(r):
    ledger = Ledger(r, "wo-amend", RI)
    ledger.initialise(0)
    start = sealed(ledger, {"t": (1, 2, 3)})
    res = ledger.commit("uid/c", "", "cid|1|1", counters={}, parts={start: Partial({"t": [4, 5, 6]})})
    assert res.amendments == 1
    original, amendment = ReportKey(start, "t"), ReportKey(start, "t", 1)
    ledger.dead_letter(amendment, "rejected: HTTP 400")
    assert ledger.write_off(amendment, "test", "ops", 3600, "k")[0] == "written_off"
    assert r.hkeys(ledger.done_key(start)) == [b"t:a1"]
    assert ledger.report(amendment).state is ReportState.WRITTEN_OFF
    assert ledger.report(original).state is ReportState.PENDING  # the interval's report is untouched
    assert ledger.write_offs()[0]["key"] == f"{start}:t:a1"


def cli(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args],
                          env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "wo-cli",
                               "SCRAPER_ID": "cluster-a", **env},
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_write_off_command_settles_a_dead_letter_that_blocks_an_identity_change(r, redis_url):
    ledger = Ledger(r, "wo-cli", RI)
    start = dead_letters(ledger, "cluster-a", {"gone": (100, 2000, 7), "deleted": (1, 1, 1)}, live=(5, 5, 5))
    gone, deleted, live = (ReportKey(start, s) for s in ("gone", "deleted", "live"))
    ledger.finish(live, ReportState.DELIVERED, "u1", 3600)

    def unchanged() -> None:
        assert {d.key for d in ledger.dead_letters()} == {gone, deleted}
        assert ledger.write_offs() == []

    # deadletters --json gives the keys they were sent under, whatever this environment's values.
    listed = json.loads(cli(redis_url, "deadletters", "--json", SCRAPER_ID="cluster-b", REPORT_INTERVAL="30").stdout)
    assert {d["idempotency_key"] for d in listed} == {idempotency_key("cluster-a", start, RI, n) for n in ("gone", "deleted")}

    # Refused before anything is written: no reason, a blank one, under another SCRAPER_ID.
    no_reason = cli(redis_url, "write-off", str(gone))
    assert no_reason.returncode == 2 and "--reason is required" in no_reason.stderr, no_reason.stderr
    blank = cli(redis_url, "write-off", str(gone), "--reason", "  ")
    assert blank.returncode == 2 and "--reason must be one line" in blank.stderr, blank.stderr
    foreign = cli(redis_url, "write-off", str(gone), "--reason", "x", SCRAPER_ID="cluster-b")
    assert foreign.returncode == 2 and "SCRAPER_ID is 'cluster-b'" in foreign.stderr, foreign.stderr
    assert foreign.stderr.rstrip().endswith("set SCRAPER_ID='cluster-a'")  # not init-ledger --force: circular here
    unchanged()
    # The identity change is refused while they are dead letters.
    blocked = cli(redis_url, "init-ledger", "--force", SCRAPER_ID="cluster-b")
    assert blocked.returncode == 1 and "write off" in blocked.stderr, blocked.stderr

    # One by its START:SUBDOMAIN, one by its Idempotency-Key (the platform's log shows that).
    done = cli(redis_url, "write-off", str(gone), idempotency_key("cluster-a", start, RI, "deleted"),
               "--reason", "tunnel deleted", "--by", "alice")
    assert done.returncode == 0, done.stderr
    assert "100 bytes in, 2000 bytes out, 7 requests" in done.stdout and "wrote off 2 report(s)" in done.stdout
    assert ledger.dead_letters() == []
    assert {ledger.report(k).state for k in (gone, deleted)} == {ReportState.WRITTEN_OFF}

    # A report that is not a dead letter (delivered, or written off already): exit 1, left as it is.
    again = cli(redis_url, "write-off", str(gone), str(live), "--reason", "again")
    assert again.returncode == 1 and "wrote off 0 report(s)" in again.stdout
    assert f"not a dead letter: {gone} (written_off)" in again.stderr
    assert f"not a dead letter: {live} (delivered)" in again.stderr
    assert ledger.report(live).state is ReportState.DELIVERED and len(ledger.write_offs()) == 2

    listed = json.loads(cli(redis_url, "write-off", "--list", "--json").stdout)
    assert [(e["key"], e["idempotency_key"], e["by"], e["reason"], e["bytes_out"]) for e in listed] == [
        (str(gone), idempotency_key("cluster-a", start, RI, "gone"), "alice", "tunnel deleted", 2000),
        (str(deleted), idempotency_key("cluster-a", start, RI, "deleted"), "alice", "tunnel deleted", 1)]
    table = cli(redis_url, "write-off", "--list")
    assert table.returncode == 0 and f"{gone}" in table.stdout and "alice: tunnel deleted" in table.stdout
    status = json.loads(cli(redis_url, "status", "--json").stdout)
    assert (status["written_off"], status["dead_letters"], status["counters"]["reports_written_off"]) == (2, 0, 2)
    assert cli(redis_url, "replay", str(gone)).returncode == 1  # never sent again

    # Nothing waiting or dead now: the change goes ahead.
    changed = cli(redis_url, "init-ledger", "--force", SCRAPER_ID="cluster-b")
    assert changed.returncode == 0, changed.stderr
    assert ledger.init_record()["scraper_id"] == "cluster-b"


def test_a_write_off_changes_nothing_unless_it_is_whole(r):
    # A key of another type where the script writes: refused before its first write, so
    # never a write-off without its audit entry (a review found one after a failed XADD).
    ledger = Ledger(r, "wo-types", RI)
    start = dead_letters(ledger, "s", {"gone": (1, 2, 3)})
    gone = ReportKey(start, "gone")
    for key in (ledger.k("writeoffs"), ledger.done_key(start), ledger.k("stats")):
        saved = r.dump(key)
        r.delete(key)
        r.set(key, "not mine")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            ledger.write_off(gone, "x", "ops", 3600, "k")
        assert [d.key for d in ledger.dead_letters()] == [gone] and r.type(ledger.rep_key(gone)) == b"hash"
        r.delete(key)
        if saved is not None:
            r.restore(key, 0, saved)
    assert ledger.write_offs() == [] and "reports_written_off" not in ledger.stats()
    assert ledger.write_off(gone, "x", "ops", 3600, "k")[0] == "written_off"


def test_nothing_is_recorded_over_a_final_report_and_stale_dead_letters_are_cleared(r):
    ledger = Ledger(r, "wo-ghost", RI)
    start = dead_letters(ledger, "s", {}, done=(1, 2, 3))
    done = ReportKey(start, "done")
    ledger.finish(done, ReportState.DELIVERED, "u1", 3600)
    # A copy whose send lock expired dead-letters or parks a report another copy delivered: nothing.
    assert ledger.dead_letter(done, "rejected: HTTP 400") is False
    assert ledger.park(done, ledger.now() + 60, "HTTP 503", 15) is False
    assert ledger.dead_letters() == [] and not r.exists(ledger.rep_key(done)) and ledger.due_count() == 0
    assert ledger.report(done).state is ReportState.DELIVERED
    # One an earlier version left behind (state and reason, no amounts) is listed and can
    # be written off, its amounts recorded as unknown.
    ghost = ReportKey(start, "ghost")
    r.hset(ledger.rep_key(ghost), mapping={"state": "dead", "reason": "rejected: HTTP 400", "dead_at": "1.0"})
    r.zadd(ledger.k("dead"), {str(ghost): 1.0})
    (listed,) = ledger.dead_letters()
    assert listed.bytes_in == 0 and listed.reason.startswith("incomplete record, amounts unknown")
    outcome, entry = ledger.write_off(ghost, "lost record", "ops", 3600, "k")
    assert (entry["bytes_in"], entry["requests"], entry["dead_reason"]) == ("", "", "rejected: HTTP 400")
    assert ledger.dead_letters() == [] and ledger.report(ghost) is None
    # Stale entries an earlier version left in the dead set for a report already delivered
    # (a record without amounts beside its done field; a member with no record at all, a
    # 2xx after the dead-lettering): removed, nothing written off.
    stale = ReportKey(start, "stale")
    r.hset(ledger.done_key(start), "stale", "delivered 1 2 3 1 0 1.0 u1")
    r.hset(ledger.rep_key(stale), mapping={"state": "dead", "reason": "rejected: HTTP 400", "dead_at": "1.0"})
    r.zadd(ledger.k("dead"), {str(stale): 1.0, str(done): 1.0})
    assert ledger.write_off(stale, "x", "ops", 3600, "k") == ("stale", None)
    assert ledger.write_off(done, "x", "ops", 3600, "k") == ("stale", None)
    assert r.zcard(ledger.k("dead")) == 0 and not r.exists(ledger.rep_key(stale))
    assert ledger.report(stale).state is ReportState.DELIVERED and len(ledger.write_offs()) == 1


def test_write_off_refuses_a_ledger_that_does_not_say_what_its_keys_are(r, redis_url):
    ledger = Ledger(r, "wo-cli", RI)
    start = dead_letters(ledger, "cluster-a", {"gone": (1, 2, 3)})
    gone = str(ReportKey(start, "gone"))
    r.hdel(ledger.k("init"), "scraper_id", "report_interval")  # an earlier version's record
    old = cli(redis_url, "write-off", gone, "--reason", "x", SCRAPER_ID="wrong-id")
    assert old.returncode == 2 and "does not record the REPORT_INTERVAL and SCRAPER_ID" in old.stderr, old.stderr
    r.delete(ledger.k("init"))
    lost = cli(redis_url, "write-off", gone, "--reason", "x")
    assert lost.returncode == 2 and "is not initialised" in lost.stderr, lost.stderr
    assert ledger.write_offs() == [] and len(ledger.dead_letters()) == 1


def test_what_write_off_prints_and_records_is_clean(r, redis_url):
    ledger = Ledger(r, "wo-cli", RI)
    start = sealed_dead_letters_with_reasons(ledger)
    # A login name unfit for the record (a control character) is not used; the platform's
    # text is shown escaped; a dead letter made by REPORT_MAX_AGE, which the platform never
    # refused, is left unless --any-reason (a review: it was written off, then warned about).
    proc = cli(redis_url, "write-off", f"{start}:refused", f"{start}:aged", "--reason", "tunnel deleted",
               LOGNAME="evil\x1b[31m\nforged: line")
    assert proc.returncode == 1, proc.stderr
    assert "\x1b" not in proc.stdout and "bad\\nbody\\x1b[2J" in proc.stdout, proc.stdout
    assert f"not written off: {start}:aged was not refused for good (undeliverable for over REPORT_MAX_AGE" in proc.stderr
    assert [d.key for d in ledger.dead_letters()] == [ReportKey(start, "aged")]
    aged = cli(redis_url, "write-off", f"{start}:aged", "--reason", "tunnel deleted", "--any-reason")
    assert aged.returncode == 0 and "wrote off 1 report(s)" in aged.stdout, aged.stderr
    assert ledger.dead_letters() == []
    bys = [e["by"] for e in ledger.write_offs()]
    assert len(bys) == 2 and bys[0].startswith("uid ")
    missing = cli(redis_url, "write-off", f"{start}:nothing", f"{start + 1}:refused", "--reason", "x")
    assert missing.returncode == 1
    assert f"not a dead letter: {start}:nothing (no such report)" in missing.stderr
    assert f"(no such report) (nor an interval start of REPORT_INTERVAL={RI})" in missing.stderr


def sealed_dead_letters_with_reasons(ledger: Ledger) -> int:
    start = dead_letters(ledger, "cluster-a", {}, refused=(1, 1, 1), aged=(2, 2, 2))
    ledger.dead_letter(ReportKey(start, "refused"), "rejected: HTTP 422: bad\nbody\x1b[2J")
    ledger.dead_letter(ReportKey(start, "aged"), "undeliverable for over REPORT_MAX_AGE (86400s); last error: HTTP 503")
    return start


def test_only_a_dead_letter_refused_for_good_is_taken_by_default(r):
    ledger = Ledger(r, "wo-why", RI)
    start = dead_letters(ledger, "s", {}, **{s: (1, 1, 1) for s in ("gone", "secret", "forbidden", "moved", "aged")})
    reasons = {"gone": "rejected: HTTP 422: unknown tunnel", "secret": "rejected: HTTP 401: bad secret",
               "forbidden": "rejected: HTTP 403: no", "moved": "rejected: HTTP 301 redirect to host x (not followed)",
               "aged": "undeliverable for over REPORT_MAX_AGE (86400s); last error: HTTP 503"}
    for sub, why in reasons.items():
        ledger.dead_letter(ReportKey(start, sub), why)
    taken = {sub: ledger.write_off(ReportKey(start, sub), "x", "ops", 3600, "k")[0] for sub in reasons}
    # A wrong secret or URL, or an expiry, a replay may still deliver once fixed: left.
    assert taken == {"gone": "written_off", "secret": "not_refused", "forbidden": "not_refused",
                     "moved": "not_refused", "aged": "not_refused"}
    assert len(ledger.dead_letters()) == 4
    assert {ledger.write_off(ReportKey(start, sub), "x", "ops", 3600, "k", refused_only=False)[0]
            for sub in ("secret", "forbidden", "moved", "aged")} == {"written_off"}
    assert ledger.dead_letters() == []


def test_stale_entries_are_listed_as_such_and_nothing_with_amounts_is_dropped(r, redis_url):
    ledger = Ledger(r, "wo-cli", RI)
    start = dead_letters(ledger, "cluster-a", {"nostate": (10, 20, 3)}, done=(1, 1, 1), off=(1, 1, 1))
    nostate, done = ReportKey(start, "nostate"), ReportKey(start, "done")
    # A record that lost its state but not its amounts is no stale entry: left where it is
    # (a review: it was taken out of the dead set, then in no set at all).
    r.hdel(ledger.rep_key(nostate), "state")
    assert ledger.write_off(nostate, "x", "ops", 3600, "k") == ("not_dead", None)
    assert r.zscore(ledger.k("dead"), str(nostate)) is not None and r.hget(ledger.rep_key(nostate), "bytes_in") == b"10"
    # An entry for a report already delivered is listed as stale, saying what removes it.
    ledger.finish(done, ReportState.DELIVERED, "u1", 3600)
    r.zadd(ledger.k("dead"), {str(done): 1.0})
    listed = {d.key: d for d in ledger.dead_letters()}
    assert listed[done].reason == f"stale entry: the report is delivered; `write-off {done} --reason ...` removes it"
    # A record without amounts is not revived: nothing a send could take.
    ghost = ReportKey(start, "ghost")
    r.hset(ledger.rep_key(ghost), mapping={"state": "dead", "reason": "undeliverable for over REPORT_MAX_AGE"})
    assert ledger.revive(ghost) is False
    # deadletters --json: a start off the REPORT_INTERVAL grid (an earlier interval's) has no known key.
    off = ReportKey(start + 30, "off")
    r.hset(ledger.rep_key(off), mapping={"bytes_in": 1, "bytes_out": 1, "requests": 1, "state": "dead",
                                         "reason": "rejected: HTTP 422"})
    r.zadd(ledger.k("dead"), {str(off): 1.0})
    keys = {d["key"]: d["idempotency_key"] for d in json.loads(cli(redis_url, "deadletters", "--json").stdout)}
    assert keys[str(off)] == "" and keys[str(done)] == idempotency_key("cluster-a", start, RI, "done")
