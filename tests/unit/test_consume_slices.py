"""``consume()`` over a stream in slices (a follow stream, ``app/follow.py``) against one
read of the same stream: with one ``ReadState`` carried across the slices, and each slice
given the cursor the previous one produced (the same cursor when it consumed nothing),
the slices count, in sum, exactly what the one read counts, and end at the same cursor.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.fetching import ReadState, consume
from app.model import Cursor
from tests.unit.test_consume_batch import kubelet_log, random_chunks, stamp
from tests.unit.test_fetching import BASE, CID, DOMAIN, NS, access


def totals(results) -> dict:
    """What a list of reads counted, summed: per interval and tunnel, and the counters.
    Not ``late``: a slice measures it against its own cursor's floor (the window behind
    the newest line so far), one read against the floor it started from."""
    parts: Counter = Counter()
    unmetered: Counter = Counter()
    counters: Counter = Counter()
    for res in results:
        for start, part in res.parts.items():
            for sub, (bi, bo, rq) in part.subdomains.items():
                parts[(start, sub, "in")] += bi
                parts[(start, sub, "out")] += bo
                parts[(start, sub, "rq")] += rq
            for sub, n in part.unmetered.items():
                unmetered[(start, sub)] += n
        counters["consumed"] += res.consumed
        counters["counted"] += res.agg.counted
        counters["total"] += res.agg.total
        counters.update(res.extra)
        counters.update({f"rejected:{k}": v for k, v in res.agg.rejected.items()})
        counters.update({f"ignored:{k}": v for k, v in res.agg.ignored.items()})
    gaps = [(r.gap_from_ns, r.gap_to_ns) for r in results if r.gap_from_ns is not None]
    return {"parts": +parts, "unmetered": +unmetered, "counters": +counters, "gaps": gaps}


def in_slices(chunks: list[bytes], cuts: list[int], cursor: Cursor, start_at: int, interval: int):
    """``chunks`` consumed in slices ending before each index of ``cuts``, the way the
    follower does it: one state, the cursor moving on after each slice that consumed."""
    state = ReadState.of(cursor)
    results = []
    bounds = [0, *sorted(set(cuts)), len(chunks)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        res = consume(iter(chunks[a:b]), cursor, start_at, 1 << 62, DOMAIN, report_interval=interval, state=state)
        results.append(res)
        if res.consumed:
            cursor = res.cursor
    return results, cursor


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 150), interval=st.sampled_from([1, 5, 60]), seed=st.integers(0, 2**32))
def test_slices_of_a_stream_count_what_one_read_counts(data, n, interval, seed):
    rng = random.Random(seed)
    lines = kubelet_log(data, n, rng, BASE)
    body = b"".join(lines)
    cursor = Cursor(CID, 0, 0)
    if data.draw(st.booleans(), label="from a cursor"):  # an earlier read of part of the log
        cursor = consume([body[: data.draw(st.integers(0, len(body)), label="first read")]], cursor, 0, 1 << 30,
                         DOMAIN, report_interval=interval).cursor
    start_at = data.draw(st.sampled_from([0, BASE + 59 * NS]), label="ledger start")
    chunks = random_chunks(body, rng, data.draw(st.sampled_from([1, 13, 300, 1 << 20]), label="chunk size"))
    cuts = data.draw(st.lists(st.integers(0, len(chunks)), max_size=12), label="slice ends")

    whole = consume(iter(chunks), cursor, start_at, 1 << 62, DOMAIN, report_interval=interval)
    sliced, end = in_slices(chunks, cuts, cursor, start_at, interval)
    assert totals(sliced) == totals([whole])
    assert end.encode() == whole.cursor.encode()


def test_a_slice_of_re_read_lines_only_leaves_the_matching_to_the_next():
    """The first slice of a stream from a cursor holds only lines the cursor consumed: it
    consumes nothing, and the next slice, which starts with the cursor's last lines,
    reports no gap and counts only the new lines."""
    lines = [stamp(BASE + i * NS // 10, "fixed") + access("a", 1, i) + b"\n" for i in range(30)]
    first = consume([b"".join(lines[:20])], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN)
    assert first.consumed == 20
    chunks = [lines[i] for i in range(30)]  # the re-read starts at the cursor's second
    results, end = in_slices(chunks, [15, 19], first.cursor, 0, 60)
    assert [r.consumed for r in results] == [0, 0, 10]
    assert all(r.gap_from_ns is None for r in results)
    assert sum(r.parts[next(iter(r.parts))].subdomains["a"][2] for r in results if r.parts) == 10
    whole = consume([b"".join(lines)], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN)
    assert end.encode() == whole.cursor.encode()


def follow_state(cursor: Cursor) -> ReadState:
    state = ReadState.of(cursor)
    state.follow = True
    return state


def test_a_follow_stream_leaves_out_a_line_more_than_the_window_behind_and_goes_on():
    """With ``follow`` (the follower), a new line stamped more than the window before the
    newest is not counted (``old``), here before the floor; the lines after it are. A
    poll's read counts the same lines as late."""
    lines = [stamp(BASE + i * NS // 10, "fixed") + access("a", 1, i) + b"\n" for i in range(40)]
    again = [stamp(BASE + i * NS // 10, "fixed") + access("a", 1, i) + b"\n" for i in range(5)]  # the file from its start
    state = follow_state(Cursor(CID, 0, 0))
    res = consume(iter([b"".join(lines[:20])]), Cursor(CID, 0, 0), 0, 1 << 62, DOMAIN, state=state)
    assert res.consumed == 20 and res.old == 0
    res2 = consume(iter([b"".join(lines[20:30] + again + lines[30:])]), res.cursor, 0, 1 << 62, DOMAIN, state=state)
    assert (res2.consumed, res2.old, res2.late, res2.repeated) == (20, 5, 0, 0)
    assert res2.agg.subdomains["a"][2] == 20
    assert res2.cursor.high_ns == BASE + 39 * NS // 10
    # Without it (a read), the same lines are counted as late.
    plain = ReadState.of(Cursor(CID, 0, 0))
    consume(iter([b"".join(lines[:20])]), Cursor(CID, 0, 0), 0, 1 << 62, DOMAIN, state=plain)
    res3 = consume(iter([b"".join(lines[20:30] + again + lines[30:])]), res.cursor, 0, 1 << 62, DOMAIN, state=plain)
    assert res3.consumed == 25 and res3.late == 5


@pytest.mark.parametrize("lines_a_chunk", [10, 1])  # the batch path takes each second whole; the line walk
def test_a_file_sent_again_within_one_slice_is_not_counted_twice_however_long_the_slice(lines_a_chunk):
    """The kubelet sends a stream more than one rotation behind the newest file twice. When
    the first sending and the second fall in one slice that spans more than the window of
    stamps, the lines sent again that are older than the window of the newest line are
    not counted (``old``: they are no longer at hand to tell), and those within it are
    repeats."""
    per_second = 10
    sent = [stamp(BASE + i * NS // per_second, "fixed") + access("a", 1, i) + b"\n" for i in range(5 * per_second)]
    chunks = [b"".join(sent[i:i + lines_a_chunk]) for i in range(0, len(sent), lines_a_chunk)]
    again = b"".join(sent[per_second:])  # the newest file sent again, from its start (second 1)
    state = follow_state(Cursor(CID, 0, 0))
    res = consume(iter([*chunks, again]), Cursor(CID, 0, 0), 0, 1 << 62, DOMAIN, state=state)
    assert res.parts[BASE // NS // 60 * 60].subdomains["a"][2] == len(sent)
    assert (res.consumed, res.old, res.repeated) == (len(sent), 29, 11)  # 1.0-3.8 s old; 3.9-4.9 s repeats
    assert res.cursor.high_ns == BASE + (len(sent) - 1) * NS // per_second


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 9])
def test_a_file_sent_again_is_told_whatever_the_slices_and_down_to_its_newest_line(cut):
    """A file of 5 lines sent, then sent again (the kubelet reopening it), in two slices
    cut anywhere: 5 counted, 5 repeats, and the cursor the same as from one read. The
    newest line sent again is a repeat too (no state that a slice boundary resets)."""
    base = [stamp(BASE + i * 1000, "fixed") + access("z", 1, 10) + b"\n" for i in range(3)]
    cursor = consume([b"".join(base)], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN).cursor
    c = [stamp(BASE + NS // 2 + i * 1000, "fixed") + access("a", 100 + i, 1000 + i) + b"\n" for i in range(5)]
    stream = [*c, *c]
    state = follow_state(cursor)
    results = []
    for part in (stream[:cut], stream[cut:]):
        res = consume(iter(part), cursor, 0, 1 << 62, DOMAIN, state=state)
        results.append(res)
        if res.consumed or res.repeated:
            cursor = res.cursor
    assert sum(r.agg.subdomains.get("a", [0, 0, 0])[2] for r in results) == 5
    assert sum(r.repeated for r in results) == 5
    # A line sent once, as the whole newest file: its second sending is a repeat too.
    first = consume([b"".join(base)], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN).cursor
    one = consume(iter([c[0], c[0]]), first, 0, 1 << 62, DOMAIN, state=follow_state(first))
    assert (one.consumed, one.repeated) == (1, 1)


def test_a_slice_of_repeats_only_moves_the_cursor_so_a_later_read_counts_nothing_twice():
    """Two identical lines of one stamp (a runtime that stamps a read of its pipe once)
    are in the log; the second comes alone in a slice and is taken for a repeat. It goes
    into the cursor all the same: a read from that cursor (the rounds, once the follower
    lets go) meets both copies as consumed and counts only what came after."""
    same = stamp(BASE, "fixed") + b'time="2026-11-24T01:50:22Z" level=error msg="Error while dialing backend"\n'
    y = [stamp(BASE + NS // 10, "fixed") + access("a", 1, i) + b"\n" for i in range(5)]
    z = [stamp(BASE + NS // 5, "fixed") + access("b", 1, i) + b"\n" for i in range(30)]
    start = Cursor(CID, 0, 0)
    state = follow_state(start)
    res1 = consume(iter([same, *y]), start, 0, 1 << 62, DOMAIN, state=state)
    res2 = consume(iter([same]), res1.cursor, 0, 1 << 62, DOMAIN, state=state)
    assert (res2.consumed, res2.repeated) == (0, 1)
    assert res2.cursor.encode() != res1.cursor.encode()
    res3 = consume(iter(z), res2.cursor, 0, 1 << 62, DOMAIN, state=state)
    assert res3.agg.subdomains["b"][2] == 30
    poll = consume([b"".join([same, *y, same, *z])], res3.cursor, 0, 1 << 62, DOMAIN)
    assert poll.consumed == 0 and poll.agg.subdomains == {}
