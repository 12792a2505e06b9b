"""``consume()``'s follow-mode batch path for a chunk whose lowest stamp equals the newest
stamp so far (``_new_at_high``) against the per-line walk (written by the fifth review of
the follower).

Sharper than tests/unit/test_consume_follow.py: CRI-O groups of many lines on one stamp
(with identical lines in a group), chunks cut at line starts inside a group, a cursor
taken in the middle of a group (high == old_high in the next read), the kubelet's
re-sends of the newest file starting inside a group, slices compared per slice (not
only the single whole read), several windows, START_AT and interval ends on a group.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.fetching as fetching
from app.fetching import ReadState, consume
from app.model import Cursor
from tests.unit.test_consume_batch import outcome, stamp
from tests.unit.test_consume_slices import totals
from tests.unit.test_fetching import BASE, CID, DOMAIN, NS, access

ERR = [b'level=error msg="Error while dialing backend"', b'level=warn msg="x"']


def grouped_log(data, rng: random.Random, n_groups: int, two_streams: bool, near_interval_end: bool,
                odd: float = 0.0):
    """(stamp, line) in arrival order: stdout groups of 1..12 lines on one stamp (CRI-O),
    some lines identical inside a group (a message logged twice, one pipe read), and, with
    two_streams, stderr lines skewed by up to a few ms."""
    t = BASE + (59 * NS + NS // 2 if near_interval_end else 10 * NS)
    t_err = t
    out: list[tuple[int, bytes]] = []
    k = 0
    for _ in range(n_groups):
        t += rng.choice([0, 1, 1000, 1000, 2_000_000, 50_000_000, 300_000_000, 700_000_000])
        size = rng.choice([1, 2, 3, 5, 8, 12])
        for _ in range(size):
            r = rng.random()
            if r < 0.12:
                text = rng.choice(ERR)  # identical bytes on one stamp: the walk calls the second a repeat
            else:
                k += 1
                text = access(rng.choice("ab"), rng.choice([0, 3]), k)
            form = rng.choice(["trimmed", "offset", "none", "bad"]) if rng.random() < odd else "fixed"
            out.append((t, stamp(t, form) + text + b"\n"))
        if two_streams and rng.random() < 0.3:
            t_err = max(t_err, t + rng.randint(-5_000_000, 5_000_000))
            for _ in range(rng.choice([1, 2, 4])):
                out.append((t_err, stamp(t_err, "fixed") + rng.choice(ERR) + b"\n"))
    return out


def line_chunks(lines: list[bytes], rng: random.Random, byte_cuts: bool) -> list[bytes]:
    """Chunks cut at line starts (so a chunk may start inside a group of one stamp), or
    at any byte too."""
    chunks: list[bytes] = []
    i = 0
    while i < len(lines):
        j = min(len(lines), i + rng.choice([1, 2, 3, 4, 7, 16, 64]))
        chunks.append(b"".join(lines[i:j]))
        i = j
    if byte_cuts:
        body = b"".join(chunks)
        chunks, i = [], 0
        while i < len(body):
            size = rng.randint(1, 900)
            chunks.append(body[i:i + size])
            i += size
    return chunks


def run(chunks, cursor, cuts, smallest, window, start_at, interval):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetching, "FAST_BATCH_MIN", smallest)
        state = ReadState.of(cursor)
        state.follow = True
        results = []
        bounds = [0, *sorted(set(cuts)), len(chunks)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            res = consume(iter(chunks[a:b]), cursor, start_at, 1 << 62, DOMAIN, window_ns=window,
                          report_interval=interval, state=state)
            results.append(res)
            if res.consumed or res.repeated:
                cursor = res.cursor
        return results, cursor


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), n=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_batch_at_high_equals_walk_per_slice(data, n, seed):
    rng = random.Random(seed)
    two = data.draw(st.booleans(), label="two streams")
    log = grouped_log(data, rng, n, two, data.draw(st.booleans(), label="near an interval end"),
                      data.draw(st.sampled_from([0.0, 0.0, 0.05]), label="odd stamps"))
    window = data.draw(st.sampled_from([NS, 3_000_000, 400_000_000]), label="window")
    interval = data.draw(st.sampled_from([1, 60]), label="interval")
    # A cursor from a poll that read a prefix: often cut inside a group of one stamp.
    first = data.draw(st.integers(0, len(log)), label="first read")
    cursor = Cursor(CID, 0, 0)
    if first:
        cursor = consume([b"".join(ln for _, ln in log[:first])], cursor, 0, 1 << 30, DOMAIN,
                         window_ns=window, report_interval=interval).cursor
    since = cursor.floor_ns // NS * NS
    served = lambda part: [ln for t, ln in part if t >= since]  # noqa: E731
    stream: list[bytes] = []
    pos = first
    stream += served(log[:first])  # the re-read of the cursor's second
    for _ in range(data.draw(st.integers(0, 3), label="resends")):
        p = data.draw(st.integers(pos, len(log)), label="at")
        stream += served(log[pos:p])
        k = data.draw(st.integers(max(0, first - 20), p), label="file start")  # may start inside a group
        stream += served(log[k:p])
        pos = p
    stream += served(log[pos:])
    chunks = line_chunks(stream, rng, data.draw(st.booleans(), label="byte cuts"))
    cuts = data.draw(st.lists(st.integers(0, len(chunks)), max_size=8), label="slice ends")
    start_at = data.draw(st.sampled_from([0, log[len(log) // 2][0], log[len(log) // 2][0] + 1]), label="start")

    got = {}
    for smallest in (1, 2, 8, 10**9):
        results, end = run(chunks, cursor, cuts, smallest, window, start_at, interval)
        got[smallest] = ([outcome(r) for r in results], end.encode())
    for smallest in (1, 2, 8):
        a, b = got[smallest], got[10**9]
        for i, (x, y) in enumerate(zip(a[0], b[0], strict=True)):
            assert x == y, f"slice {i}: FAST_BATCH_MIN={smallest} against the walk"
        assert a[1] == b[1]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), n=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_slices_with_batch_count_what_one_walk_counts(data, n, seed):
    """Slices (batch path on) against one whole read (walk), one stream, no resends."""
    rng = random.Random(seed)
    log = grouped_log(data, rng, n, False, data.draw(st.booleans(), label="near an interval end"))
    first = data.draw(st.integers(0, len(log)), label="first read")
    cursor = Cursor(CID, 0, 0)
    if first:
        cursor = consume([b"".join(ln for _, ln in log[:first])], cursor, 0, 1 << 30, DOMAIN).cursor
    since = cursor.floor_ns // NS * NS
    stream = [ln for t, ln in log if t >= since]
    chunks = line_chunks(stream, rng, data.draw(st.booleans(), label="byte cuts"))
    cuts = data.draw(st.lists(st.integers(0, len(chunks)), max_size=8), label="slice ends")
    whole, wend = run(chunks, cursor, [], 10**9, NS, 0, 60)
    sliced, send = run(chunks, cursor, cuts, 1, NS, 0, 60)
    assert totals(sliced)["parts"] == totals(whole)["parts"]
    assert sum(r.repeated for r in sliced) == sum(r.repeated for r in whole)
    assert send.encode() == wend.encode()


def test_hand_made_group_cut_by_cursor_chunks_and_a_resend():
    """12 lines on one stamp S: a poll read 5 of them (the cursor's high is S); the
    stream re-reads from the cursor's second: the 5 (matched), then chunks of 3 lines
    starting at S (high == old_high: checked against the cursor's fingerprints), then the
    file sent again from the 3rd line of the group. Batch path against walk."""
    s = BASE + 10 * NS
    grp = [stamp(s, "fixed") + access("a", 1, i) + b"\n" for i in range(12)]
    after = [stamp(s + 1000 * (i + 1), "fixed") + access("b", 1, i) + b"\n" for i in range(6)]
    cursor = consume([b"".join(grp[:5])], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN).cursor
    stream = grp + after + grp[2:] + after
    chunks = [b"".join(stream[i:i + 3]) for i in range(0, len(stream), 3)]
    for cuts in ([], [1], [2], [3], [2, 4, 7]):
        w = run(chunks, cursor, cuts, 10**9, NS, 0, 60)
        b = run(chunks, cursor, cuts, 1, NS, 0, 60)
        assert [outcome(r) for r in w[0]] == [outcome(r) for r in b[0]], cuts
        assert sum(r.agg.subdomains.get("a", [0, 0, 0])[2] for r in b[0]) == 7
        assert sum(r.agg.subdomains.get("b", [0, 0, 0])[2] for r in b[0]) == 6
