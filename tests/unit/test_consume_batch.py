"""``consume()``'s batch path against its per-line walk: on any log, any chunking and
any cursor, a read gives the same result whichever path takes each batch.

The batch path (``app.fetching._uniform_batch``) takes a framed batch whole when every
line has a fixed-width UTC stamp of one minute and one interval; everything else goes
line by line. ``FAST_BATCH_MIN`` set to 1 sends every eligible batch down the batch
path, set very high sends none.
"""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import app.fetching as fetching
from app.fetching import consume
from app.model import Cursor
from tests.unit.test_fetching import BASE, CID, DOMAIN, ERROR_LINE, NS, access, prefix

OFF = "+08:00"


def stamp(t_ns: int, form: str) -> bytes:
    """The kubelet prefix in one of the forms a read may carry."""
    if form == "fixed":
        return prefix(t_ns)
    if form == "trimmed":
        return prefix(t_ns, trimmed=True)
    if form == "offset":  # containerd stamping in the node's zone
        local = prefix(t_ns + 8 * 3600 * NS)
        return local[:-2] + OFF.encode() + b" "
    if form == "bad":  # a date that is not one
        return b"2026-13-45T99:99:99.000000000Z "
    if form == "badsec":  # fixed-width, in this minute, but no second (61 to 99)
        fixed = prefix(t_ns)
        return fixed[:17] + b"%d" % (61 + t_ns % 39) + fixed[19:]
    return b""  # no stamp at all


def outcome(res) -> dict:
    return {
        "agg": res.agg.to_dict(),
        "too_long": res.agg.too_long_lengths,
        "parts": {k: (v.subdomains, v.unmetered) for k, v in res.parts.items()},
        "cursor": res.cursor.encode(),
        **{k: v for k, v in asdict(res).items() if k not in ("agg", "cursor", "parts")},
    }


def both_paths(chunks, cursor, start_at, limit, interval, window=NS):
    """The outcome with every eligible batch on the batch path, then with none."""
    got = []
    for smallest in (1, 10**9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fetching, "FAST_BATCH_MIN", smallest)
            got.append(outcome(consume(list(chunks), cursor, start_at, limit, DOMAIN, window_ns=window,
                                       report_interval=interval)))
    return got


ODD_FORMS = ["trimmed", "offset", "bad", "badsec", "none"]
STEPS = [0, 1, 1000, NS // 100, NS // 3, NS, 59 * NS, -NS // 1000, -2 * NS]


def kubelet_log(data, n: int, rng: random.Random, start: int) -> list[bytes]:
    """``n`` lines as a kubelet serves them, from ``start`` + 58 s (near a minute's end):
    stamps that step forward and back by the ``STEPS``, a drawn share in one odd stamp
    form, and one line in ten not an access line."""
    t = start + 58 * NS
    lines: list[bytes] = []
    odd_form = data.draw(st.sampled_from(ODD_FORMS), label="odd stamp")
    odd_share = data.draw(st.sampled_from([0, 0.03, 0.3]), label="odd share")
    for _ in range(n):
        t += rng.choice(STEPS)
        form = odd_form if rng.random() < odd_share else "fixed"
        if rng.random() < 0.1:
            text = rng.choice([ERROR_LINE, b'{"level":"error","msg":"x"}', b"", b"{broken"])
        else:
            text = access(rng.choice(["a", "b", "c"]), rng.choice([0, 7]), rng.randrange(1000))
        lines.append(stamp(t, form) + text + b"\n")
    return lines


def random_chunks(body: bytes, rng: random.Random, largest: int) -> list[bytes]:
    """``body`` cut into chunks of 1 to ``largest`` bytes, as a stream may come."""
    chunks = []
    i = 0
    while i < len(body):
        size = rng.randint(1, largest)
        chunks.append(body[i : i + size])
        i += size
    return chunks


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 120), interval=st.sampled_from([1, 5, 60, 120, 3600]), seed=st.integers(0, 2**32))
def test_batch_path_gives_what_the_line_walk_gives(data, n, interval, seed):
    rng = random.Random(seed)
    lines = kubelet_log(data, n, rng, BASE + data.draw(st.integers(-2 * NS, 2 * NS), label="start"))
    body = b"".join(lines)
    # A cursor from an earlier read of part of this log, or none.
    cursor = Cursor(CID, 0, 0)
    if data.draw(st.booleans(), label="from a cursor"):
        first = consume([body[: data.draw(st.integers(0, len(body)), label="first read")]], cursor, 0, 1 << 30,
                        DOMAIN, report_interval=interval)
        cursor = first.cursor
    start_at = 0
    if data.draw(st.booleans(), label="a ledger start"):  # near a line's stamp
        start_at = rng.choice(lines)[:31]
        start_at = fetching.parse_timestamp(start_at)[0] if fetching.parse_timestamp(start_at) else BASE
        start_at += data.draw(st.sampled_from([-1, 0, 1]), label="ledger start")
    chunks = random_chunks(body, rng, data.draw(st.sampled_from([1, 17, 200, 4096, 1 << 20]), label="chunk size"))
    limit = data.draw(st.sampled_from([len(body), len(body) + 1, 1 << 30]), label="limit")
    batch, walk = both_paths(chunks, cursor, start_at, limit, interval)
    assert batch == walk


def test_batch_path_is_taken_and_splits_at_interval_and_minute_ends(monkeypatch):
    """A read over a minute's end at 1,000 lines/s, in 64 KiB chunks: the same outcome
    both ways, and the batch path takes most batches (``_uniform_batch`` accepts them)."""
    lines = [prefix(BASE + 50 * NS + i * NS // 1000) + access(f"t{i % 7}", i, 2 * i) + b"\n" for i in range(20_000)]
    body = b"".join(lines)
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    taken = []
    real = fetching._uniform_batch

    def spy(batch, ri_ns):
        got = real(batch, ri_ns)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(fetching, "_uniform_batch", spy)
    batch, walk = both_paths(chunks, Cursor(CID, 0, 0), 0, 1 << 30, 5)
    assert batch == walk
    assert batch["consumed"] == 20_000
    assert sorted(batch["parts"]) == [(BASE + 50 * NS) // NS // 5 * 5 + 5 * k for k in range(5)]
    refused = taken.count(False)
    assert 0 < refused <= 5 and taken.count(True) > len(chunks) - 10  # one refusal per end crossed


@pytest.mark.parametrize("head", [
    b"2026-11-24T01:50:22.000000000Z",  # no space after the stamp
    b"2026-11-24T01:50:22.00000000Z ",  # 8 fraction digits
    b"2026-11-24T01:50:22.0000000001Z",  # 10
    b"2026-11-24T01:50:60.000000000Z ",  # a leap second: readable
    b"2026-11-24T01:50:61.000000000Z ",  # not a second
    b"2026-11-24T01:50:22,000000000Z ",
    b"2026-11-24 01:50:22.000000000Z ",
])
def test_one_odd_stamp_in_a_batch(monkeypatch, head):
    """One line with a stamp just off the fixed form, among well-formed ones."""
    lines = [prefix(BASE + i * NS // 100) + access("a", 1, i) + b"\n" for i in range(40)]
    lines[20] = head + access("b", 5, 5) + b"\n"
    batch, walk = both_paths([b"".join(lines)], Cursor(CID, 0, 0), 0, 1 << 30, 60)
    assert batch == walk


@pytest.mark.parametrize("second", [b"59", b"60", b"61", b"99"])
def test_a_batch_over_a_minute_end_in_a_long_interval(second):
    """Stamps from hh:mm:59.8 to hh:mm+1:00.2 in one 3600 s interval, with one line
    stamped hh:mm:<second> between them: a second past 60 is unreadable, however the
    bytes sort."""
    start = BASE + 37_800_000_000  # BASE is hh:mm:22
    lines = [prefix(start + i * NS // 100) + access("a", 1, i) + b"\n" for i in range(40)]
    lines[20] = prefix(start)[:17] + second + prefix(start)[19:] + access("b", 5, 5) + b"\n"
    batch, walk = both_paths([b"".join(lines)], Cursor(CID, 0, 0), 0, 1 << 30, 3600)
    assert batch == walk
    assert walk["extra"].get("rejected:bad_timestamp", 0) == (second > b"60")


def test_long_lines_in_a_batch(monkeypatch):
    """A line over the bound inside a batch: the framer hands on a ``LongLine``, which
    both paths reject as too long with its length."""
    pad = b'"RequestPath":"/' + b"x" * 5000 + b'",'
    lines = [prefix(BASE + i) + access("a", 1, i) + b"\n" for i in range(30)]
    lines[10] = prefix(BASE + 10) + b"{" + pad + access("a", 9, 9)[1:] + b"\n"
    body = b"".join(lines)
    for smallest in (1, 10**9):
        monkeypatch.setattr(fetching, "FAST_BATCH_MIN", smallest)
        res = consume([body], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN, max_line_bytes=4096)
        assert res.agg.rejected == {"too_long": 1} and res.agg.too_long_lengths == [len(lines[10]) - 32]
        assert res.consumed == 30


def read_peak(first: bytes, rest: bytes):
    """``consume()`` from an empty cursor over ``first``, then ``rest`` in 64 KiB chunks:
    its result and the peak of traced memory, in bytes."""
    import tracemalloc

    def chunks():
        if first:
            yield first
        for i in range(0, len(rest), 65536):
            yield rest[i : i + 65536]

    tracemalloc.start()
    try:
        res = consume(chunks(), Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN)
        return res, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_of_a_long_read_stays_within_the_window():
    """The batch path keeps only the batches that may end within the window of H (for
    the cursor's fingerprints), not the read: 30 MB read in 64 KiB chunks peaks at a few."""
    body = b"".join(prefix(BASE + i * NS // 2000) + access(f"t{i % 50}", i % 9, i) + b"\n" for i in range(300_000))
    res, peak = read_peak(b"", body)
    assert res.consumed == 300_000
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes for a {len(body):,}-byte read"


def test_over_long_lines_are_listed_in_the_same_order(monkeypatch):
    """A LongLine (over the framing bound) and a plain line over ``max_line_bytes`` in
    one read: the lengths kept for the log come in the same order both ways (the batch
    path hands the parser the same groups of lines as the walk)."""
    lines = [prefix(BASE + i * 1000) + access("a", 1, i) + b"\n" for i in range(2100)]
    lines[1990] = prefix(BASE + 1990 * 1000) + b"x" * 5000 + b"\n"  # over 4096 + 64: a LongLine
    lines[2060] = prefix(BASE + 2060 * 1000) + b"y" * 4100 + b"\n"  # text over 4096
    chunks = [b"".join(lines[:2000]), b"".join(lines[2000:])]
    got = []
    for smallest in (1, 10**9):
        monkeypatch.setattr(fetching, "FAST_BATCH_MIN", smallest)
        res = consume(chunks, Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN, max_line_bytes=4096)
        got.append((res.agg.too_long_lengths, res.agg.rejected))
    assert got[0] == got[1] == ([5000, 4100], {"too_long": 2})


def test_memory_stays_within_the_window_when_stamps_go_back():
    """A first batch stamped 10 minutes ahead (a node clock stepped back after it), then
    300,000 lines: the stale batches behind the early one are pruned too."""
    ahead = b"".join(prefix(BASE + 600 * NS + i * NS // 2000) + access("a", 1, i) + b"\n" for i in range(300))
    rest = b"".join(prefix(BASE + i * NS // 2000) + access(f"t{i % 50}", i % 9, i) + b"\n" for i in range(300_000))
    res, peak = read_peak(ahead, rest)
    assert res.consumed == 300_300 and res.late == 0
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes for a {len(ahead) + len(rest):,}-byte read"


def test_a_report_interval_below_one_second_is_refused():
    with pytest.raises(ValueError, match="at least 1 s"):
        consume([prefix(BASE) + access("a", 1, 1) + b"\n"], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN, report_interval=0)


def test_a_read_classifies_each_host_once_across_intervals(monkeypatch):
    """IntervalSums' per-interval aggregators share one host cache: a read over three
    intervals classifies each of its hosts once."""
    import app.parser

    calls: list[str] = []
    real = app.parser._classify_host
    monkeypatch.setattr(app.parser, "_classify_host", lambda host, domain: calls.append(host) or real(host, domain))
    lines = [prefix(BASE + i * NS // 10) + access(f"t{i % 4}", 1, i) + b"\n" for i in range(150)]  # 15 s
    res = consume([b"".join(lines)], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN, report_interval=5)
    assert len(res.parts) >= 3
    assert sorted(calls) == [f"t{k}.{DOMAIN}" for k in range(4)]
