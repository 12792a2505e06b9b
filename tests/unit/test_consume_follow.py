"""``consume()`` in follow mode (``ReadState.follow``, app/follow.py): properties over
kubelet-shaped logs sent with the kubelet's re-sends of the newest file (the batch path
against the line walk, slices against one read, two skewed streams with CRI-O's shared
stamps followed by a poll from the final cursor), and the cases the third review of the
follower found: a file sent three times, and a file and its re-sending in one chunk."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import app.fetching as fetching
from app.fetching import consume
from app.model import Cursor
from tests.unit.test_consume_batch import kubelet_log, outcome, random_chunks, stamp
from tests.unit.test_consume_slices import follow_state, totals
from tests.unit.test_fetching import BASE, CID, DOMAIN, NS, access


def base_cursor() -> Cursor:
    base = [stamp(BASE + i * 1000, "fixed") + access("z", 1, 10) + b"\n" for i in range(3)]
    return consume([b"".join(base)], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN).cursor


@pytest.mark.parametrize("path", ["batch", "walk"])
def test_a_file_sent_three_times_in_one_slice_is_counted_once(path, monkeypatch):
    """Three rotations while the stream's reader was behind: the kubelet opens the
    newest file at each of the three Create events (the fake's f.creates), so the file
    comes three times. Within one slice."""
    monkeypatch.setattr(fetching, "FAST_BATCH_MIN", 1 if path == "batch" else 10**9)
    cursor = base_cursor()
    c = [stamp(BASE + NS // 2 + i * 1000, "fixed") + access("a", 100 + i, 1000 + i) + b"\n" for i in range(5)]
    res = consume(iter([b"".join(c)] * 3), cursor, 0, 1 << 62, DOMAIN, state=follow_state(cursor))
    assert (res.agg.subdomains["a"][2], res.repeated) == (5, 10)


def test_a_file_sent_three_times_in_two_slices_vs_one():
    """The same three sendings, the slice boundary after the second: counted once."""
    cursor = base_cursor()
    c = [stamp(BASE + NS // 2 + i * 1000, "fixed") + access("a", 100 + i, 1000 + i) + b"\n" for i in range(5)]
    state = follow_state(cursor)
    r1 = consume(iter([b"".join(c)] * 2), cursor, 0, 1 << 62, DOMAIN, state=state)
    r2 = consume(iter([b"".join(c)]), r1.cursor, 0, 1 << 62, DOMAIN, state=state)
    assert r1.agg.subdomains["a"][2] + r2.agg.subdomains.get("a", [0, 0, 0])[2] == 5


def follow_run(chunks, cursor, cuts, smallest):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetching, "FAST_BATCH_MIN", smallest)
        state = follow_state(cursor)
        results = []
        bounds = [0, *sorted(set(cuts)), len(chunks)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            res = consume(iter(chunks[a:b]), cursor, 0, 1 << 62, DOMAIN, state=state)
            results.append(res)
            if res.consumed or res.repeated:
                cursor = res.cursor
        return results, cursor


def follow_totals(results):
    t = totals(results)
    t["repeated"] = sum(r.repeated for r in results)
    t["old"] = sum(r.old for r in results)
    return t


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 80), seed=st.integers(0, 2**32))
def test_follow_batch_vs_walk_and_slices_vs_whole(data, n, seed):
    rng = random.Random(seed)
    lines = kubelet_log(data, n, rng, BASE)
    # The kubelet re-sends the newest file: a suffix of what was sent, up to 3 times.
    stream = list(lines)
    for _ in range(data.draw(st.integers(0, 3), label="resends")):
        k = data.draw(st.integers(0, len(lines)), label="file start")
        stream += lines[k:]
    cursor = Cursor(CID, 0, 0)
    if data.draw(st.booleans(), label="from a cursor"):
        cut = data.draw(st.integers(0, len(lines)), label="first read")
        cursor = consume([b"".join(lines[:cut])], cursor, 0, 1 << 30, DOMAIN).cursor
    body = b"".join(stream)
    chunks = random_chunks(body, rng, data.draw(st.sampled_from([1, 13, 300, 1 << 20]), label="chunk size"))
    cuts = data.draw(st.lists(st.integers(0, len(chunks)), max_size=6), label="slice ends")
    wb, cb = follow_run(chunks, cursor, [], 1)
    ww, cw = follow_run(chunks, cursor, [], 10**9)
    assert outcome(wb[0]) == outcome(ww[0]), "batch vs walk"
    sw, cs = follow_run(chunks, cursor, cuts, 10**9)
    assert follow_totals(sw)["parts"] == follow_totals(ww)["parts"], "slices vs whole"


def test_a_small_file_and_its_resending_in_one_chunk_are_counted_once():
    """The newest file Z (10 lines, stamped 1 ms apart) and the kubelet's second sending of
    it arrive in one chunk (a stream behind: the apiserver's proxy copies what the
    kubelet's connection holds, 32 KiB at a time). FAST_BATCH_MIN as shipped (8)."""
    assert fetching.FAST_BATCH_MIN == 8
    cursor = base_cursor()
    z = b"".join(stamp(BASE + NS // 2 + i * 1_000_000, "fixed") + access("a", 100 + i, 1000 + i) + b"\n"
                 for i in range(10))
    y = stamp(BASE + NS // 4, "fixed") + access("y", 1, 1) + b"\n"  # the stream is past the cursor's lines
    res = consume(iter([y, z + z]), cursor, 0, 1 << 62, DOMAIN, state=follow_state(cursor))
    walk = consume(iter([y, z, z]), cursor, 0, 1 << 62, DOMAIN, state=follow_state(cursor))  # two chunks
    assert (walk.agg.subdomains["a"][2], walk.repeated) == (10, 10)
    assert (res.agg.subdomains["a"][2], res.repeated) == (10, 10)


def two_stream_log(data, rng, n):
    """stdout access lines and stderr lines, each stream monotonic, skewed by up to 5 ms,
    several lines on one stamp at times (CRI-O), in arrival order."""
    t_out = t_err = BASE + 58 * NS
    lines = []
    form = data.draw(st.sampled_from(["fixed", "trimmed", "offset"]), label="form")
    for i in range(n):
        if rng.random() < 0.3:
            t_err = max(t_err, t_out + rng.randint(-5_000_000, 5_000_000)) if rng.random() < 0.5 else t_err
            t_err += rng.choice([0, 0, 1000, 300_000_000])
            text = rng.choice([b'level=error msg="dial"', b'level=warn msg=x%d' % rng.randrange(3)])
            lines.append((t_err, stamp(t_err, form if rng.random() < 0.3 else "fixed") + text + b"\n"))
        else:
            t_out += rng.choice([0, 0, 1000, 2_000_000, 300_000_000, 700_000_000])
            lines.append((t_out, stamp(t_out, "fixed") + access(rng.choice("ab"), 1, 1000 + i) + b"\n"))
    return lines


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 80), seed=st.integers(0, 2**32))
def test_follow_two_streams_resends_slices_and_a_poll(data, n, seed):
    rng = random.Random(seed)
    log = two_stream_log(data, rng, n)
    cursor = Cursor(CID, 0, 0)
    first = 0
    if data.draw(st.booleans(), label="from a cursor"):
        first = data.draw(st.integers(0, len(log)), label="first read")
        cursor = consume([b"".join(ln for _, ln in log[:first])], cursor, 0, 1 << 30, DOMAIN).cursor
    since = cursor.floor_ns // NS * NS
    served = lambda part: [ln for t, ln in part if t >= since]  # noqa: E731
    # The stream: the log from since; at a point p, the file holding lines k..p sent again.
    stream = []
    pos = 0
    for _ in range(data.draw(st.integers(0, 3), label="resends")):
        p = data.draw(st.integers(max(pos, first), len(log)), label="at")
        stream += served(log[pos:p])
        k = data.draw(st.integers(first, p), label="file start")
        stream += served(log[k:p])
        pos = p
    stream += served(log[pos:])
    chunks = random_chunks(b"".join(stream), rng, data.draw(st.sampled_from([1, 40, 300, 1 << 20]), label="chunk"))
    cuts = data.draw(st.lists(st.integers(0, len(chunks)), max_size=6), label="slice ends")
    smallest = data.draw(st.sampled_from([1, 8, 10**9]), label="FAST_BATCH_MIN")
    results, end = follow_run(chunks, cursor, cuts, smallest)
    truth = {}
    for _, ln in log[first:]:
        if b"RequestHost" in ln:
            sub = ln.split(b'"RequestHost":"')[1][:1].decode()
            truth[sub] = truth.get(sub, 0) + 1
    got = {}
    for r in results:
        for sub, v in r.agg.subdomains.items():
            got[sub] = got.get(sub, 0) + v[2]
    old = sum(r.old for r in results)
    assert all(got.get(sub, 0) <= n for sub, n in truth.items()) and set(got) <= set(truth), (got, truth)  # never twice
    if not old:
        assert got == truth
    poll = consume([b"".join(ln for t, ln in log if t >= end.floor_ns // NS * NS)], end, 0, 1 << 30, DOMAIN)
    assert poll.consumed == 0, (poll.consumed, poll.late)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 80), seed=st.integers(0, 2**32))
def test_follow_batch_vs_walk_with_start_and_intervals(data, n, seed):
    rng = random.Random(seed)
    log = two_stream_log(data, rng, n)
    stream = [ln for _, ln in log]
    for _ in range(data.draw(st.integers(0, 2), label="resends")):
        k = data.draw(st.integers(0, len(log)), label="file start")
        stream += [ln for _, ln in log[k:]]
    interval = data.draw(st.sampled_from([1, 5, 60]), label="interval")
    start_at = data.draw(st.sampled_from([0, log[len(log) // 2][0], log[len(log) // 2][0] + 1]), label="start")
    chunks = random_chunks(b"".join(stream), rng, data.draw(st.sampled_from([40, 300, 1 << 20]), label="chunk"))
    out = []
    for smallest in (1, 10**9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fetching, "FAST_BATCH_MIN", smallest)
            cursor = Cursor(CID, 0, 0)
            out.append(outcome(consume(iter(chunks), cursor, start_at, 1 << 62, DOMAIN, report_interval=interval,
                                       state=follow_state(cursor))))
    assert out[0] == out[1]


def test_two_identical_lines_on_one_stamp_batch_vs_walk():
    """CRI-O stamps a read of its pipe once: Traefik's own message logged twice in a row
    carries one stamp, in the same bytes. The walk takes the second for a repeat; the
    batch path (the same chunk, all lines above the newest) must too."""
    cursor = base_cursor()
    y = stamp(BASE + NS // 4, "fixed") + access("y", 1, 1) + b"\n"
    msg = stamp(BASE + NS // 2, "fixed") + b'level=error msg="Error while dialing backend"\n'
    rest = b"".join(stamp(BASE + NS // 2 + 1000 * (i + 1), "fixed") + access("a", 1, i) + b"\n" for i in range(8))
    got = []
    for smallest in (8, 10**9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fetching, "FAST_BATCH_MIN", smallest)
            res = consume(iter([y, msg + msg + rest]), cursor, 0, 1 << 62, DOMAIN, state=follow_state(cursor))
            got.append((res.consumed, res.repeated, res.agg.total))
    assert got[0] == got[1]
