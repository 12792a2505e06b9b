"""The file source (LOG_SOURCE=file, app/filesource.py): exact through rotation by rename
(with writes continuing to the renamed file until the writer reopens its log, as Traefik
does on USR1), logrotate's copytruncate, partial last lines, compressed files, and a
truncation in place. First the fetcher over a real Redis, round by round; then real Celery
workers and beat (tests/pipeline.py), one host and two."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import threading
import time
from datetime import UTC, datetime

import pytest

from app import filesource, rounds
from app.errors import FetchTimeLimitExceeded
from app.filesource import FileFetcher, discover
from app.ledger import Ledger
from app.model import FetchStatus, FileCursor, RoundStatus
from app.settings import Settings
from sim.procs import wait_until
from tests.filelogs import AccessLog, complete_size, files_at_end, ledger_totals
from tests.traffic import Traffic

DOMAIN = "t.lum.tools"


@pytest.fixture
def ledger(r):
    led = Ledger(r, "tf", 2)
    led.initialise(0)
    return led


@pytest.fixture
def logdir(tmp_path):
    d = tmp_path / "traefik"
    d.mkdir()
    return d


def one_round(ledger: Ledger, pattern: str, limit: int = 1 << 20) -> list[dict]:
    """What one plan round and its fetches do, in this process."""
    fetcher = FileFetcher(ledger, domain=DOMAIN, limit_bytes=limit)
    return [fetcher.fetch(f.path, f.identity) for f in discover(pattern).files]


def settle(ledger: Ledger, pattern: str, limit: int = 1 << 20) -> None:
    for _ in range(50):
        if files_at_end(ledger, pattern):
            return
        one_round(ledger, pattern, limit)
    raise AssertionError("the file source never reached the end of the files")


def file_settings(pattern: str, **extra) -> Settings:
    return Settings(log_source="file", log_files=pattern, redis_key_prefix="tf", report_interval=2, fetch_interval=1,
                    **extra)


def plan(ledger: Ledger, settings: Settings) -> rounds.Plan:
    for key in ledger.r.scan_iter(match=ledger.k("round", "*")):
        ledger.r.delete(key)  # one plan per round number: these tests plan faster than that
    return rounds.plan_files(ledger, settings)


# ----- the fetcher, round by round -------------------------------------------------------


def test_rename_rotation_counts_lines_written_to_the_renamed_file_once(ledger, logdir):
    """logrotate renames access.log; Traefik writes to the renamed file until USR1 makes
    it open access.log again. The renamed file keeps its identity and its offset."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=11, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(40))
    one_round(ledger, pattern)
    log_.lines(traffic.lines(10))  # not read before the rename
    log_.rename_rotate()
    log_.lines(traffic.lines(15))  # written to access.log.1: Traefik has not reopened yet
    one_round(ledger, pattern)
    log_.lines(traffic.lines(5))
    log_.reopen()  # USR1
    log_.lines(traffic.lines(20))  # the new access.log
    log_.rename_rotate()  # a second rotation: access.log.1 -> .2 (5 lines of it unread)
    log_.lines(traffic.lines(7))
    log_.reopen()
    log_.lines(traffic.lines(3))
    settle(ledger, pattern)
    assert sorted(os.listdir(logdir)) == ["access.log", "access.log.1", "access.log.2"]
    assert ledger_totals(ledger) == traffic.expected()
    assert ledger.stats()["requests"] == sum(t["requests"] for t in traffic.expected().values())
    assert ledger.stats()["lines_read"] == 100
    # One cursor per identity (three files, three first lines), each at its file's end.
    cursors = {k: FileCursor.decode(v) for k, v in ledger.cursors().items()}
    assert sorted(c.offset for c in cursors.values()) == sorted(
        complete_size(str(logdir / n)) for n in ("access.log", "access.log.1", "access.log.2"))
    assert ledger.gaps() == []
    log_.close()


def test_copytruncate_reads_what_was_not_read_from_the_copy(ledger, logdir):
    """The copy starts with the same line, so it has the cursor: the lines not yet read
    when logrotate copied the file are read from it, none twice; the truncated original
    has a new first line, a new identity, and is read from 0."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=12, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(60))
    one_round(ledger, pattern, limit=8192)  # reads part of the file only: lines are left unread
    before = FileCursor.decode(ledger.cursors()[FileCursor.field(discover(pattern).files[0].identity)])
    assert 0 < before.offset < complete_size(log_.path)
    log_.copytruncate()
    assert os.path.getsize(log_.path) == 0
    log_.lines(traffic.lines(25))  # O_APPEND: at offset 0 of the truncated file
    settle(ledger, pattern, limit=8192)
    assert ledger_totals(ledger) == traffic.expected()
    assert ledger.stats()["lines_read"] == 85
    log_.close()


def test_copytruncate_copy_shorter_than_the_cursor_holds_nothing_unread(ledger, logdir):
    """A read of the original between logrotate's copy and its truncate gets past the
    copy's end: the lines written in that window are counted (from the original), and the
    shorter copy is taken as read."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=13, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(30))
    one_round(ledger, pattern)

    def between() -> None:
        log_.lines(traffic.lines(5))
        one_round(ledger, pattern)  # reads access.log (the larger of the two) past the copy

    log_.copytruncate(between=between)
    log_.lines(traffic.lines(12))
    results = one_round(ledger, pattern)
    assert any(r.get("copy") for r in results), results
    settle(ledger, pattern)
    assert ledger_totals(ledger) == traffic.expected()
    assert ledger.stats()["lines_read"] == 47
    log_.close()


def test_copytruncate_loses_the_lines_written_between_copy_and_truncate(ledger, logdir):
    """logrotate(8): 'there is a very small time slice between copying the file and
    truncating it, so some logging data might be lost'. Nothing else is lost or doubled."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=14, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(20))
    one_round(ledger, pattern)
    log_.lines(traffic.lines(10))
    log_.copytruncate(between=lambda: log_.lines(traffic.lines(4)))  # lost with the truncate
    log_.lines(traffic.lines(6))
    settle(ledger, pattern)
    assert ledger_totals(ledger) == traffic.first(30).merged(part_of(traffic, 34))
    assert ledger.stats()["lines_read"] == 36
    log_.close()


def part_of(traffic: Traffic, start: int) -> Traffic:
    """A Traffic holding the truth of the lines made from the ``start``-th on."""
    part = Traffic(tunnels=0, written_ns=None)
    for sub, bi, bo in traffic.made[start:]:
        if sub:
            slot = part.truth[sub]
            slot[0] += bi
            slot[1] += bo
            slot[2] += 1
    return part


def test_partial_last_line_waits_for_its_newline(ledger, logdir):
    """A line without its newline is never consumed, in the live file and in a renamed
    one that Traefik finishes writing after the rename."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=15, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    lines = traffic.lines(6)
    log_.lines(lines[:3])
    log_.write(lines[3][:57])
    one_round(ledger, pattern)
    (identity,) = ledger.cursors()
    assert FileCursor.decode(ledger.cursors()[identity]).offset == sum(len(x) + 1 for x in lines[:3])
    assert ledger.stats()["lines_read"] == 3
    log_.write(lines[3][57:] + b"\n" + lines[4][:10])
    log_.rename_rotate()
    one_round(ledger, pattern)
    assert ledger.stats()["lines_read"] == 4
    log_.write(lines[4][10:] + b"\n")  # finished in the renamed file
    log_.reopen()
    log_.lines(lines[5:])
    settle(ledger, pattern)
    assert ledger.stats()["lines_read"] == 6
    assert ledger_totals(ledger) == traffic.expected()
    log_.close()


def test_compressed_files_are_skipped_with_one_note(ledger, logdir, caplog):
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=16, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(5))
    (logdir / "access.log.3.gz").write_bytes(gzip.compress(b"\n".join(Traffic(seed=99, written_ns=None).lines(5)) + b"\n"))
    (logdir / "access.log.4").write_bytes(gzip.compress(b"compressed without the suffix\n"))
    found = discover(pattern)
    assert found.compressed == [str(logdir / "access.log.3.gz"), str(logdir / "access.log.4")]
    assert [f.path for f in found.files] == [log_.path]
    settings = file_settings(pattern)
    with caplog.at_level(logging.INFO, logger="app.rounds"):
        for _ in range(3):
            out = plan(ledger, settings)
            assert out.status == RoundStatus.OK and [f.path for f in out.files] == [log_.path]
    notes = [r.getMessage() for r in caplog.records if "is compressed: skipped" in r.getMessage()]
    assert len(notes) == 2 and all(r.levelno == logging.INFO for r in caplog.records if "compressed" in r.getMessage())
    log_.close()


def test_a_file_gone_with_unread_bytes_is_a_gap(ledger, logdir, caplog):
    """compress without delaycompress (or a delete) takes a file whose last lines were not
    read: the plan records the span as a gap, loudly."""
    pattern = str(logdir / "access.log*")
    log_ = AccessLog(logdir / "access.log")
    log_.lines(Traffic(seed=17, written_ns=None).lines(10))
    settings = file_settings(pattern)
    plan(ledger, settings)
    one_round(ledger, pattern)
    log_.lines(Traffic(seed=18, written_ns=None).lines(3))
    plan(ledger, settings)  # sees the new size
    log_.rename_rotate()
    log_.reopen()
    with open(str(logdir / "access.log.1"), "rb") as src, gzip.open(str(logdir / "access.log.1.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(logdir / "access.log.1")
    log_.lines(Traffic(seed=19, written_ns=None).lines(1))
    with caplog.at_level(logging.WARNING, logger="app.rounds"):
        plan(ledger, settings)
    (gap,) = ledger.gaps()
    assert gap["file"] == log_.path and gap["to_offset"] > gap["from_offset"] > 0
    assert any("GAP" in r.getMessage() for r in caplog.records)
    log_.close()


def test_truncated_in_place_with_the_same_first_line_is_a_new_generation(ledger, logdir):
    """Rule 4: the file the cursor read is shorter than its offset (or differs before it)
    and starts with the same first line: it was truncated in place and written again; it
    is read from 0 as a new generation."""
    pattern = str(logdir / "access.log")
    traffic = Traffic(seed=20, written_ns=None)
    lines = traffic.lines(8)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(lines)
    one_round(ledger, pattern)
    os.truncate(log_.path, 0)
    again = [lines[0], *Traffic(seed=21, written_ns=None).lines(2)]  # the same first line, then others
    log_.lines(again)
    (result,) = one_round(ledger, pattern)
    assert result["status"] == FetchStatus.OK and result["consumed"] == 3
    (cursor,) = (FileCursor.decode(v) for v in ledger.cursors().values())
    assert cursor.generation == 1 and cursor.offset == complete_size(log_.path)
    assert ledger.stats()["lines_read"] == 11
    (gap,) = ledger.gaps()
    assert gap["reason"] == "truncated in place"
    log_.close()


def test_a_file_that_starts_like_a_read_one_but_differs_is_not_read(ledger, logdir):
    """Rule 5: another file (another inode) with the same first line, whose bytes before
    the cursor's offset are not the ones read: not read, once said."""
    traffic = Traffic(seed=22, written_ns=None)
    lines = traffic.lines(6)
    first = AccessLog(logdir / "a.log")
    first.lines(lines)
    one_round(ledger, str(logdir / "a.log"))
    other = AccessLog(logdir / "b.log")
    other.lines([lines[0], *Traffic(seed=23, written_ns=None).lines(9)])
    for _ in range(2):
        (result,) = one_round(ledger, str(logdir / "b.log"))
        assert result["status"] == FetchStatus.MISMATCH
    assert ledger.stats()["file_mismatch"] == 2 and ledger.stats()["lines_read"] == 6
    first.close()
    other.close()


def test_a_file_listed_but_not_readable_counts_as_a_read_failure(ledger, logdir, monkeypatch):
    """A rule-5 mismatch and an I/O error write no read record: each must note a read
    failure, or the identity's old record would hold sealing back for ever (issue 11: an
    unreadable source holds it back at most SEAL_MAX_WAIT)."""
    traffic = Traffic(seed=24, written_ns=None)
    lines = traffic.lines(4)
    first = AccessLog(logdir / "a.log")
    first.lines(lines)
    one_round(ledger, str(logdir / "a.log"))
    (field_,) = [f for f in ledger.read_records() if f.startswith("file:")]
    assert ledger.read_records()[field_].fail_since is None
    other = AccessLog(logdir / "b.log")
    other.lines([lines[0], *Traffic(seed=25, written_ns=None).lines(5)])
    (result,) = one_round(ledger, str(logdir / "b.log"))
    assert result["status"] == FetchStatus.MISMATCH
    since = ledger.read_records()[field_].fail_since
    assert since is not None and since <= ledger.now()
    first.close()
    other.close()

    # An OSError while reading (EIO from a failing disk) of a file read before.
    def eio(*args, **kwargs):
        raise OSError(5, "Input/output error")
        yield b""  # a generator, like _chunks

    ledger.r.delete(ledger.k("readfail"))
    monkeypatch.setattr(filesource, "_chunks", eio)
    (result,) = one_round(ledger, str(logdir / "a.log"))
    assert result["status"] == FetchStatus.FILE_ERROR
    assert ledger.read_records()[field_].fail_since is not None


def test_a_mismatched_file_holds_sealing_back_at_most_seal_max_wait(ledger, logdir):
    """The file the cursor read is replaced by one with the same first line and other
    bytes (a new inode): never read (rule 5), it holds sealing back only SEAL_MAX_WAIT
    (2 s here), then the intervals are sealed forced, naming it."""
    path = logdir / "access.log"
    s = file_settings(str(path), seal_max_wait=2)
    lines = Traffic(seed=26, written_ns=None).lines(3)
    log = AccessLog(path)
    log.lines(lines)
    log.close()
    plan(ledger, s)
    one_round(ledger, str(path))
    other = AccessLog(logdir / "access.log.new")
    other.lines([lines[0], *Traffic(seed=27, written_ns=None).lines(4)])
    other.close()
    os.rename(logdir / "access.log.new", path)
    broken_at = ledger.now()

    def sealed_past() -> bool:
        plan(ledger, s)
        one_round(ledger, str(path))
        rounds.merge(ledger, s)
        return ledger.sealed_to() > broken_at + 2 + 2 * ledger.ri

    wait_until(sealed_past, timeout=20, interval=0.5, what="sealing past the mismatched file")
    assert ledger.stats().get("file_mismatch", 0) > 0
    assert str(path) in str(ledger.seal_state().get("forced"))


def test_a_retired_file_host_stops_holding_sealing_after_seal_max_wait(ledger, tmp_path):
    """Host a runs two rounds, then is decommissioned (its plan never runs again); host b
    goes on. Host a's listing holds sealing back SEAL_MAX_WAIT (2 s) after its last
    renewal, then is stale: dropped with a WARNING and ``listings_dropped``, and host b's
    intervals are sealed up to its reads."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = AccessLog(tmp_path / "a" / "access.log"), AccessLog(tmp_path / "b" / "access.log")
    sa = file_settings(str(tmp_path / "a" / "access.log"), file_queue="fetch.a", seal_max_wait=2)
    sb = file_settings(str(tmp_path / "b" / "access.log"), file_queue="fetch.b", seal_max_wait=2)
    traffic = Traffic(seed=28, written_ns=None)
    a.lines(traffic.lines(2))
    b.lines(traffic.lines(2))
    for _ in range(2):
        for s in (sa, sb):
            plan(ledger, s)
            one_round(ledger, s.log_files)
    assert {x.key for x in ledger.listings()} == {"fetch.a", "fetch.b"}
    b.lines(traffic.lines(3))
    later = int(ledger.now()) // ledger.ri * ledger.ri

    def b_sealed() -> bool:
        plan(ledger, sb)
        one_round(ledger, sb.log_files)
        rounds.merge(ledger, sb)
        return ledger.sealed_to() > later

    wait_until(b_sealed, timeout=20, interval=0.5, what="sealing past host b's reads without host a")
    assert {x.key for x in ledger.listings()} == {"fetch.b"}
    assert ledger.stats()["listings_dropped"] == 1
    a.close()
    b.close()


def _access_line(sub: str, start_ns: int, duration_ns: int | None, written_ns: int | None = None) -> bytes:
    """A Traefik v3 JSON access line for ``<sub>.t.lum.tools`` that started at ``start_ns``
    (``time``: when it was written, whole seconds; default its start)."""

    def stamp(t_ns: int) -> str:
        return datetime.fromtimestamp(t_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ns % 10**9:09d}Z"

    entry = {"DownstreamContentSize": 100, "DownstreamStatus": 200, "RequestContentSize": 0,
             "RequestHost": f"{sub}.{DOMAIN}", "RequestMethod": "GET", "RequestPath": "/", "RequestProtocol": "HTTP/1.1",
             "RouterName": "tunnels@file", "StartUTC": stamp(start_ns), "level": "info", "msg": "",
             "time": stamp(written_ns or start_ns)[:19] + "Z"}
    if duration_ns is not None:
        entry["Duration"] = duration_ns
    return json.dumps(entry, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def test_a_line_whose_time_is_ahead_of_its_read_is_placed_at_the_read(ledger, logdir):
    """A Duration of 10^17 ns (three years: a corrupt line, a clock jump in Traefik) puts
    the request's end years ahead; the line was written before it was read, so its time is
    capped at the read's start + SEAL_CLOCK_MARGIN (counted, WARNING) and it is reported
    once the watermark passes the read, not in three years."""
    path = logdir / "access.log"
    s = file_settings(str(path), seal_max_wait=2)
    now = time.time_ns()
    path.write_bytes(_access_line("tun-odd", now, 10**17) + _access_line("tun-ok", now, 1_000_000))
    read_at = ledger.now()

    def sealed_past_read() -> bool:
        plan(ledger, s)
        one_round(ledger, str(path))
        rounds.merge(ledger, s)
        return ledger.sealed_to() > read_at + s.seal_clock_margin + ledger.ri

    wait_until(sealed_past_read, timeout=20, interval=0.5, what="sealing past the read")
    made = {k.subdomain: k.start for k in ledger.report_keys()}
    assert set(made) == {"tun-odd", "tun-ok"}
    assert made["tun-odd"] <= read_at + 2 * s.seal_clock_margin  # at the read (its start + margin), not years on
    assert ledger.stats()["lines_time_capped"] == 1
    assert [int(x) for x in ledger.r.zrange(ledger.k("open"), 0, -1)] == []


def test_a_line_without_duration_lands_where_it_was_written(ledger, logdir):
    """No Duration: the line's ``time`` (when Traefik wrote it) places it, not StartUTC: a
    request that started 10 minutes before its line is written now lands now, in an open
    interval, not as an amendment of an interval sealed 10 minutes ago."""
    path = logdir / "access.log"
    s = file_settings(str(path))
    path.write_bytes(_access_line("tun-x", time.time_ns(), 1_000_000))

    def sealed_to_now() -> bool:
        plan(ledger, s)
        one_round(ledger, str(path))
        rounds.merge(ledger, s)
        return ledger.sealed_to() > ledger.now() - 3 * ledger.ri

    wait_until(sealed_to_now, timeout=20, interval=0.5, what="sealing up to now")
    with path.open("ab") as out:
        now = time.time_ns()
        out.write(_access_line("tun-x", now - 600 * 10**9, None, written_ns=now))
    plan(ledger, s)
    (result,) = one_round(ledger, str(path))
    assert result["consumed"] == 1
    assert [k for k in ledger.report_keys() if k.amendment] == []
    assert ledger.interval_totals(now // 10**9 // ledger.ri * ledger.ri)["tun-x"][2] >= 1  # the one written now


def test_lines_before_the_ledger_start_are_not_counted(r, logdir):
    """START_AT for files: a line's time is StartUTC + Duration; lines before the ledger's
    start are consumed as ignored:before_start until the first one at or after it."""
    ledger = Ledger(r, "tf", 2)
    start = (int(time.time()) - 600) * 10**9  # recent: lines older than INTERVAL_RETENTION are not reported
    ledger.initialise(start)
    traffic = Traffic(seed=24, written_ns=None)

    def at(line: bytes, t_ns: int) -> bytes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_ns // 10**9)) + f".{t_ns % 10**9:09d}Z"
        return re.sub(rb'"StartUTC":"[^"]*"', b'"StartUTC":"' + stamp.encode() + b'"', line)

    old = [at(traffic.line(), start - 10**9 - i) for i in range(4)]  # ends (1.2 ms later) before the start
    counted_from = len(traffic.made)
    new = [at(traffic.line(), start + i) for i in range(5)]
    log_ = AccessLog(logdir / "access.log")
    log_.lines(old + new)
    one_round(ledger, str(logdir / "access.log"))
    assert ledger_totals(ledger) == part_of(traffic, counted_from).expected()
    assert ledger.stats()["ignored:before_start"] == 4 and ledger.stats()["lines_read"] == 9
    assert FileCursor.decode(next(iter(ledger.cursors().values()))).started
    log_.close()


def test_a_file_truncated_during_the_read_commits_nothing(ledger, logdir, monkeypatch):
    """copytruncate while a fetch reads the original: nothing is committed; the next
    round reads the copy from the cursor."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=25, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(40))
    real_chunks = filesource._chunks

    def truncating(fd, start, limit, deadline=None):
        for i, chunk in enumerate(real_chunks(fd, start, limit, deadline)):
            if i == 1:
                log_.copytruncate()
                log_.lines(traffic.lines(2))
            yield chunk

    monkeypatch.setattr(filesource, "CHUNK", 4096)
    monkeypatch.setattr(filesource, "_chunks", truncating)
    (result,) = one_round(ledger, pattern)
    assert result["status"] == FetchStatus.CHANGED
    assert ledger.cursors() == {} and ledger.stats()["file_changed"] == 1
    monkeypatch.setattr(filesource, "_chunks", real_chunks)
    settle(ledger, pattern)
    assert ledger_totals(ledger) == traffic.expected()
    log_.close()


def test_a_read_past_its_deadline_commits_nothing(ledger, logdir, monkeypatch):
    """FETCH_TIME_LIMIT on a pool without Celery time limits: the read checks its
    deadline before each chunk; past it, nothing is committed and the next read takes
    the file from the same cursor."""
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=26, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(40))
    real_chunks = filesource._chunks
    served = []

    def slow_disk(fd, start, limit, deadline=None):
        for chunk in real_chunks(fd, start, limit, deadline):
            served.append(len(chunk))
            yield chunk
            if len(served) == 2:  # the second chunk took longer than the time left
                wait_until(lambda: time.monotonic() > deadline, 10, interval=0.05, what="the deadline")

    monkeypatch.setattr(filesource, "CHUNK", 4096)
    monkeypatch.setattr(filesource, "_chunks", slow_disk)
    (f,) = discover(pattern).files
    with pytest.raises(FetchTimeLimitExceeded):
        FileFetcher(ledger, domain=DOMAIN, limit_bytes=1 << 20).fetch(f.path, f.identity, time.monotonic() + 1)
    assert len(served) == 2 and os.path.getsize(f.path) > 3 * 4096  # stopped with more to read
    assert ledger.cursors() == {}
    monkeypatch.undo()
    settle(ledger, pattern)
    assert ledger_totals(ledger) == traffic.expected()
    log_.close()


def test_a_fetch_delivered_twice_or_for_a_rotated_path_changes_nothing_twice(ledger, logdir):
    pattern = str(logdir / "access.log*")
    traffic = Traffic(seed=26, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    log_.lines(traffic.lines(10))
    (f,) = discover(pattern).files
    fetcher = FileFetcher(ledger, domain=DOMAIN, limit_bytes=1 << 20)
    assert fetcher.fetch(f.path, f.identity)["consumed"] == 10
    assert fetcher.fetch(f.path, f.identity)["consumed"] == 0  # redelivered: nothing new
    log_.rename_rotate()
    log_.reopen()
    log_.lines(traffic.lines(2))
    # The plan's message names access.log, which is now another file: not read for that identity.
    assert fetcher.fetch(f.path, f.identity)["status"] == FetchStatus.MOVED
    assert fetcher.fetch(str(logdir / "gone.log"), f.identity)["status"] == FetchStatus.MOVED
    settle(ledger, pattern)
    assert ledger_totals(ledger) == traffic.expected()
    log_.close()


def test_copies_share_an_identity_and_the_larger_is_planned(logdir):
    log_ = AccessLog(logdir / "access.log")
    log_.lines(Traffic(seed=27, written_ns=None).lines(5))
    shutil.copyfile(log_.path, logdir / "access.log.1")
    log_.lines(Traffic(seed=28, written_ns=None).lines(1))
    (AccessLog(logdir / "access.log.2")).write(b'{"partial first line')
    found = discover(str(logdir / "access.log*"))
    assert [f.path for f in found.files] == [log_.path]
    assert found.unidentified == [str(logdir / "access.log.2")]
    log_.close()


# ----- real workers and beat -------------------------------------------------------------


def file_env(pattern: str, **extra: str) -> dict[str, str]:
    return {"LOG_SOURCE": "file", "LOG_FILES": pattern, **extra}


def wait_files_quiescent(pipeline, pattern: str, timeout: float = 60) -> None:
    try:
        wait_until(lambda: files_at_end(pipeline.ledger, pattern) and pipeline.settled(), timeout, interval=0.2,
                   what="the files read to their end and every report delivered")
    except TimeoutError as e:
        raise AssertionError(f"{e}\nstats={pipeline.ledger.stats()}\n{pipeline.logs()}") from None


class Writer(threading.Thread):
    """Writes access lines at about ``rate`` a second until stopped; the truth is its
    Traffic's. Each line is written in two halves a moment apart, so reads see partial
    last lines; a rotation (which takes the log's lock) never falls inside a line, as
    Traefik writes a line whole."""

    def __init__(self, log_: AccessLog, traffic: Traffic, rate: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.log = log_
        self.traffic = traffic
        self.rate = rate
        self.stop_ = threading.Event()

    def run(self) -> None:
        while not self.stop_.is_set():
            line = self.traffic.line()
            with self.log.lock:
                os.write(self.log.fd, line[:40])
                time.sleep(0.5 / self.rate)
                os.write(self.log.fd, line[40:] + b"\n")
            time.sleep(0.5 / self.rate)

    def stop(self) -> None:
        self.stop_.set()
        self.join()


def test_real_workers_rename_rotation_and_partial_lines_exact(pipeline, logdir):
    pattern = str(logdir / "access.log*")
    pipeline.env.update(file_env(pattern))
    pipeline.init_ledger()
    traffic = Traffic(seed=31, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    writer = Writer(log_, traffic)
    writer.start()
    pipeline.worker()
    pipeline.beat()
    for _ in range(3):
        time.sleep(2.5)
        log_.rename_rotate()
        time.sleep(1.5)  # Traefik goes on writing to access.log.1 until USR1
        log_.reopen()
    time.sleep(2)
    writer.stop()
    wait_files_quiescent(pipeline, pattern)
    assert len(os.listdir(logdir)) == 4
    truth = traffic.expected()
    assert truth and pipeline.delivered() == truth
    assert pipeline.ledger.gaps() == []
    stats = pipeline.ledger.stats()
    assert stats["lines_read"] == len(traffic.made) and stats.get("fetch_errors:file", 0) == 0
    log_.close()


def test_real_workers_copytruncate_exact(pipeline, logdir):
    pattern = str(logdir / "access.log*")
    pipeline.env.update(file_env(pattern, FETCH_MAX_BYTES="200000", LOG_LINE_MAX_BYTES="100000"))
    pipeline.init_ledger()
    traffic = Traffic(seed=32, written_ns=None)
    log_ = AccessLog(logdir / "access.log")
    writer = Writer(log_, traffic, rate=60)
    writer.start()
    pipeline.worker()
    pipeline.beat()
    for _ in range(3):
        time.sleep(3)
        log_.copytruncate()  # under the writer's lock: no line falls between copy and truncate
    time.sleep(2)
    writer.stop()
    wait_files_quiescent(pipeline, pattern)
    truth = traffic.expected()
    assert truth and pipeline.delivered() == truth
    assert pipeline.ledger.stats()["lines_read"] == len(traffic.made)
    log_.close()


def test_two_hosts_each_fetch_runs_where_its_files_are(pipeline, tmp_path):
    """Two hosts (two directories), each with its own queue (FILE_QUEUE=fetch.<host>) and
    worker; beat sends a plan to each (FILE_QUEUES); every file's fetch runs on the worker
    of its host, and the totals are exact."""
    hosts = {"h1": tmp_path / "h1", "h2": tmp_path / "h2"}
    queues = ",".join(f"fetch.{h}" for h in hosts)
    pipeline.init_ledger()
    traffics, logs = {}, {}
    for i, (host, d) in enumerate(hosts.items()):
        d.mkdir()
        traffics[host] = Traffic(seed=40 + i, written_ns=None)
        logs[host] = AccessLog(d / "access.log")
        logs[host].lines(traffics[host].lines(30))
    workers = {
        host: pipeline.worker(queues=f"fetch.{host}", concurrency=1, name=host,
                              **file_env(str(d / "access.log*"), FILE_QUEUE=f"fetch.{host}", FILE_QUEUES=queues))
        for host, d in hosts.items()
    }
    pipeline.worker(queues="report", concurrency=1, name="reports", LOG_SOURCE="file", FILE_QUEUES=queues)
    pipeline.beat(LOG_SOURCE="file", FILE_QUEUES=queues)
    time.sleep(2)
    for host in hosts:
        logs[host].rename_rotate()
        logs[host].lines(traffics[host].lines(10))
        logs[host].reopen()
        logs[host].lines(traffics[host].lines(10))
    for d in hosts.values():
        wait_files_quiescent(pipeline, str(d / "access.log*"))
    wait_until(pipeline.settled, 30, what="reports delivered")
    assert pipeline.delivered() == traffics["h1"].merged(traffics["h2"])
    for host, proc in workers.items():
        done = re.findall(r"fetch_file\[[^]]+\] succeeded in [^:]+: (\{.*\})", proc.output())
        assert done, f"{host} ran no file fetch"
        other = next(h for h in hosts if h != host)
        assert all(str(hosts[host]) in d and str(hosts[other]) not in d for d in done), host
    for log_ in logs.values():
        log_.close()


def test_a_file_worker_without_log_files_refuses_to_start(pipeline):
    """A worker that consumes its FILE_QUEUE with LOG_SOURCE=file needs LOG_FILES: it stops
    at start with one line naming it (exit status 2); beat and report workers do not."""
    with pytest.raises(RuntimeError) as e:
        pipeline.worker(queues="fetch", name="nofiles", LOG_SOURCE="file")
    assert "exited with 2" in str(e.value) and "config error: LOG_FILES is not set" in str(e.value)
    pipeline.worker(queues="report", name="reports", LOG_SOURCE="file")
    pipeline.beat(LOG_SOURCE="file")
