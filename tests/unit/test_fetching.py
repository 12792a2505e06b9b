"""The log-reading core without Kubernetes: timestamp prefixes, line framing, and
``consume()`` over chunk lists shaped like the kubelet's answers."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

import app.fetching
from app.fetching import (
    DEFAULT_REORDER_WINDOW_NS,
    consume,
    counters_of,
    fmt_ns,
    parse_timestamp,
)
from app.model import Cursor, fingerprint
from app.parser import LINE_PREFIX_ROOM, MAX_LINE_BYTES, LineFramer

NS = 1_000_000_000
DOMAIN = "t.lum.tools"
BASE = int(datetime(2026, 11, 24, 1, 50, 22, tzinfo=UTC).timestamp()) * NS  # a whole second
CID = "containerd://abc"
W = DEFAULT_REORDER_WINDOW_NS


@pytest.fixture(autouse=True, params=["batch path", "line walk"])
def consume_path(request):
    """Every test here twice: with consume()'s batch path taking every eligible batch
    (these tests' chunks are small), and with the per-line walk alone."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app.fetching, "FAST_BATCH_MIN", 1 if request.param == "batch path" else 10**9)
        yield request.param


def complete_lines(chunks, max_line_bytes: int = MAX_LINE_BYTES + LINE_PREFIX_ROOM):
    """The lines ``consume()`` frames from ``chunks`` (its ``LineFramer``, at its bound):
    an unfinished last line is never handed on."""
    framer = LineFramer(max_line_bytes)
    for chunk in chunks:
        yield from framer.feed(chunk)


def prefix(t_ns: int, trimmed: bool = False) -> bytes:
    """The kubelet's ``timestamps=true`` prefix: 9 fraction digits, or (before 1.19)
    trailing zeros trimmed and no dot for a whole second."""
    secs, nanos = divmod(t_ns, NS)
    head = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f".{nanos:09d}"
    if trimmed:
        frac = frac.rstrip("0").rstrip(".")
    return f"{head}{frac}Z ".encode()


def access(sub: str, bytes_in: int, bytes_out: int) -> bytes:
    return json.dumps(
        {
            "DownstreamContentSize": bytes_out,
            "DownstreamStatus": 200,
            "RequestContentSize": bytes_in,
            "RequestHost": f"{sub}.{DOMAIN}",
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


class Log:
    """A container log: lines with timestamps, served like the kubelet serves them."""

    def __init__(self, trimmed: bool = False) -> None:
        self.lines: list[tuple[int, bytes]] = []
        self.truth: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.trimmed = trimmed
        self.seq = 0
        self.entries: list[tuple[int, bytes]] = []  # (t_ns, text without the prefix), in log order

    def add(self, t_ns: int, sub: str | None = None, text: bytes | None = None) -> None:
        if text is None:
            self.seq += 1
            sub = sub or "tun"
            bi, bo = self.seq, 1000 + self.seq
            text = access(sub, bi, bo)
            t = self.truth[sub]
            t[0] += bi
            t[1] += bo
            t[2] += 1
        self.lines.append((t_ns, prefix(t_ns, self.trimmed) + text + b"\n"))
        self.entries.append((t_ns, text))

    def read(self, since_ns: int | None, limit: int) -> bytes:
        """From ``floor(since)`` (whole seconds, as the apiserver does), at most ``limit`` bytes."""
        floor = (since_ns // NS) * NS if since_ns else 0
        data = b"".join(line for t, line in self.lines if t >= floor)
        return data[:limit]


def chunked(data: bytes, sizes: list[int] | None = None, rng: random.Random | None = None) -> list[bytes]:
    """Cut ``data`` into chunks (by ``sizes``, cycling, or at random)."""
    out, i, k = [], 0, 0
    while i < len(data):
        size = rng.randint(1, 64) if rng is not None else sizes[k % len(sizes)] if sizes else len(data)
        out.append(data[i : i + size])
        i += size
        k += 1
    return out


def at(entries: list[tuple[int, bytes]], t_ns: int, n: int, start: Cursor | None = None) -> Cursor:
    """The old cursor position (T, N) in the new form: the cursor that has consumed the
    lines of ``entries`` ((t_ns, text), in log order) up to the ``n``-th stamped ``t_ns``,
    reading from ``start`` (default: the start of the log)."""
    seen = 0
    for i, (ts, _) in enumerate(entries):
        seen += ts == t_ns
        if ts == t_ns and seen == n:
            consumed = entries[: i + 1]
            break
    else:
        raise AssertionError(f"no line {n} at {t_ns}")
    high = max(ts for ts, _ in consumed)
    floor = max(start.floor_ns if start else 0, high - W)
    counts: dict[tuple[int, bytes], int] = defaultdict(int)
    for ts, text in consumed:
        if ts >= floor:
            counts[(ts, fingerprint(ts, text))] += 1
    return Cursor.build(CID, high, floor, counts)


def subdomains(res) -> dict[str, list[int]]:
    return {k: list(v) for k, v in res.agg.subdomains.items()}


# parse_timestamp -----------------------------------------------------------------------


def test_parse_fixed_width_prefix():
    line = b"2026-11-24T01:50:22.123456789Z {}"
    t_ns, off = parse_timestamp(line)
    assert t_ns == BASE + 123_456_789
    assert line[off:] == b"{}"


@pytest.mark.parametrize(
    ("stamp", "nanos"),
    [
        (b"2026-11-24T01:50:22Z", 0),
        (b"2026-11-24T01:50:22.1Z", 100_000_000),
        (b"2026-11-24T01:50:22.12Z", 120_000_000),
        (b"2026-11-24T01:50:22.000000001Z", 1),
        (b"2026-11-24T01:50:22.000000000Z", 0),
        (b"2026-11-24T01:50:22.5Z", 500_000_000),
        (b"2026-11-24T01:50:22.99999999Z", 999_999_990),
    ],
)
def test_parse_trimmed_and_fixed_prefixes(stamp, nanos):
    t_ns, off = parse_timestamp(stamp + b" text")
    assert t_ns == BASE + nanos
    assert off == len(stamp) + 1


@given(st.integers(min_value=0, max_value=4_000_000_000 * NS), st.booleans(), st.binary(max_size=40))
def test_both_prefix_styles_give_the_same_time(t_ns, trimmed, text):
    line = prefix(t_ns, trimmed) + text
    parsed = parse_timestamp(line)
    assert parsed is not None
    assert parsed[0] == t_ns
    assert line[parsed[1] :] == text
    assert fmt_ns(t_ns) == prefix(t_ns).decode().strip()


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b'{"RequestHost":"a.t.lum.tools"}',
        b"2026-11-24T01:50:22.123456789Z",  # no space, no text
        b"2026-11-24T01:50:22.123456789 text",  # no Z
        b"2026-11-24T01:50:22.123456789+00:00 text",
        b"2026-11-24 01:50:22.123456789Z text",
        b"2026-11-24T01-50-22.123456789Z text",
        b"2026-11-24T01:50:22.Z text",
        b"2026-11-24T01:50:22.1234567890Z text",  # 10 fraction digits
        b"2026-11-24T01:50:22.12a4Z text",
        b"2026-11-24T01:50:22,123Z text",
        b"2026-13-24T01:50:22Z text",
        b"2026-11-31T01:50:22Z text",
        b"2026-11-24T24:00:00Z text",
        b"2026-11-24T01:60:00Z text",
        b"20x6-11-24T01:50:22Z text",
        b"\xff\xfe\xfd-11-24T01:50:22Z text",
        b"2026-11-24T01:50:22.\xd9\xa1Z text",  # a non-ASCII digit
        b" 2026-11-24T01:50:22Z text",
    ],
)
def test_parse_rejects_garbage(line):
    assert parse_timestamp(line) is None


# complete_lines ------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12), st.binary(max_size=12),
       st.data())
def test_complete_lines_ignores_chunking_and_drops_an_unfinished_line(lines, tail, data):
    tail = tail.replace(b"\n", b"")
    stream = b"".join(line + b"\n" for line in lines) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(chunks) == stream
    assert list(complete_lines(chunks)) == lines


def test_complete_lines_keeps_empty_lines_and_drops_the_cut_one():
    assert list(complete_lines([b"a\n", b"\n", b"b", b"c\nd"])) == [b"a", b"", b"bc"]
    assert list(complete_lines([])) == []
    assert list(complete_lines([b"", b"no newline"])) == []


# consume -------------------------------------------------------------------------------


def test_consume_from_the_start_counts_everything():
    log = Log()
    for i in range(5):
        log.add(BASE + i * 1000, sub=f"t{i % 2}")
    res = consume(chunked(log.read(None, 1 << 20), [7]), Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert subdomains(res) == dict(log.truth)
    assert res.consumed == 5 and res.agg.counted == 5
    assert res.cursor == at(log.entries, BASE + 4000, 1)
    assert not res.cut and res.gap_from_ns is None and res.extra == {}


def test_consume_skips_lines_before_t_and_the_first_n_at_t():
    log = Log()
    log.add(BASE + 1)  # same second as T, before it: re-sent because sinceTime is whole seconds
    log.add(BASE + 5)
    log.add(BASE + 5)
    log.add(BASE + 5)
    log.add(BASE + 9, sub="new")
    cursor = Cursor(CID, BASE + 5, 2)
    res = consume(chunked(log.read(cursor.t_ns, 1 << 20), [11]), cursor, 0, 1 << 20, DOMAIN)
    # Only the third line at T and the one after it are new.
    assert res.consumed == 2
    assert subdomains(res) == {"tun": [4, 1004, 1], "new": [5, 1005, 1]}
    assert res.cursor == at(log.entries, BASE + 9, 1, start=cursor)
    assert res.gap_from_ns is None


def test_cursor_n_grows_when_the_last_timestamp_is_still_t():
    log = Log()
    for _ in range(5):
        log.add(BASE + 7)
    cursor = Cursor(CID, BASE + 7, 3)
    res = consume([log.read(cursor.t_ns, 1 << 20)], cursor, 0, 1 << 20, DOMAIN)
    assert res.consumed == 2
    assert res.cursor == at(log.entries, BASE + 7, 5, start=cursor)
    assert res.agg.subdomains["tun"] == [4 + 5, 1004 + 1005, 2]


def test_nothing_new_leaves_the_cursor_as_it_was():
    log = Log()
    log.add(BASE + 7)
    log.add(BASE + 7)
    cursor = Cursor(CID, BASE + 7, 2)
    res = consume([log.read(cursor.t_ns, 1 << 20)], cursor, 0, 1 << 20, DOMAIN)
    assert res.consumed == 0 and res.cursor == cursor and res.agg.total == 0
    assert res.gap_from_ns is None and not res.cut


def test_many_lines_sharing_one_timestamp_across_a_read_boundary():
    log = Log(trimmed=True)
    for _ in range(10):
        log.add(BASE)  # a whole second: the trimmed prefix has no fraction at all
    log.add(BASE + NS // 2)
    line_len = len(log.lines[0][1])
    limit = 6 * line_len - 3  # the 6th line is cut
    first = consume(chunked(log.read(None, limit), [13]), Cursor(CID, 0, 0), 0, limit, DOMAIN)
    assert first.cut
    assert first.consumed == 5
    assert first.cursor == at(log.entries, BASE, 5)

    second = consume(chunked(log.read(first.cursor.t_ns, 1 << 20), [5]), first.cursor, 0, 1 << 20, DOMAIN)
    assert not second.cut and second.gap_from_ns is None
    assert second.consumed == 6
    assert second.cursor == at(log.entries, BASE + NS // 2, 1, start=first.cursor)
    total = [a + b for a, b in zip(first.agg.subdomains["tun"], second.agg.subdomains["tun"], strict=True)]
    assert total == log.truth["tun"]


def test_start_at_lines_are_consumed_but_not_counted():
    log = Log()
    for i in range(4):
        log.add(BASE + i * NS)
    start_at = BASE + 2 * NS
    res = consume([log.read(None, 1 << 20)], Cursor(CID, 0, 0), start_at, 1 << 20, DOMAIN)
    assert res.consumed == 4
    assert res.extra == {"ignored:before_start": 2}
    assert res.agg.subdomains == {"tun": [3 + 4, 1003 + 1004, 2]}
    assert res.cursor == at(log.entries, BASE + 3 * NS, 1)


def test_lines_without_a_timestamp_are_counted_by_reason():
    data = prefix(BASE) + access("a", 1, 2) + b"\nno timestamp here\n" + prefix(BASE + 1) + access("a", 3, 4) + b"\n"
    res = consume([data], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert res.extra == {"rejected:no_timestamp": 1}
    assert res.agg.subdomains == {"a": [4, 6, 2]}
    # the line without a stamp takes its predecessor's, so it is fingerprinted (consumed once)
    lines = [(BASE, access("a", 1, 2)), (BASE, b"no timestamp here"), (BASE + 1, access("a", 3, 4))]
    assert res.cursor == at(lines, BASE + 1, 1)


def test_rotation_past_the_cursor_is_a_gap_with_its_span():
    log = Log()
    log.add(BASE + 3 * NS + 5)  # the cursor's own lines (at BASE + 100) are gone
    log.add(BASE + 4 * NS)
    cursor = Cursor(CID, BASE + 100, 2)
    res = consume([log.read(cursor.t_ns, 1 << 20)], cursor, 0, 1 << 20, DOMAIN)
    assert (res.gap_from_ns, res.gap_to_ns) == (BASE + 100, BASE + 3 * NS + 5)
    assert res.consumed == 2  # what is there is still counted
    assert res.cursor == at(log.entries, BASE + 4 * NS, 1, start=cursor)


def test_no_gap_when_the_cursor_lines_are_still_there_or_only_earlier_ones_went():
    log = Log()
    log.add(BASE + 50)  # before T in T's second
    log.add(BASE + 100)
    log.add(BASE + 3 * NS)
    cursor = Cursor(CID, BASE + 100, 1)
    res = consume([log.read(cursor.t_ns, 1 << 20)], cursor, 0, 1 << 20, DOMAIN)
    assert res.gap_from_ns is None and res.consumed == 1
    # A first read (no cursor yet) never reports a gap.
    fresh = consume([log.read(None, 1 << 20)], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert fresh.gap_from_ns is None and fresh.consumed == 3


def test_cut_when_received_reaches_the_limit():
    log = Log()
    for i in range(4):
        log.add(BASE + i)
    data = log.read(None, 1 << 20)
    exact = len(data)
    assert consume([data], Cursor(CID, 0, 0), 0, exact, DOMAIN).cut  # received == limit
    assert not consume([data], Cursor(CID, 0, 0), 0, exact + 1, DOMAIN).cut
    cut = consume(chunked(data[: exact - 4], [9]), Cursor(CID, 0, 0), 0, exact - 4, DOMAIN)
    assert cut.cut and cut.received == exact - 4
    assert cut.consumed == 3  # the cut last line is not consumed
    assert cut.cursor == at(log.entries, BASE + 2, 1)


@given(
    steps=st.lists(st.sampled_from([0, 0, 0, 1, 999, NS // 3, NS, 2 * NS + 7]), min_size=1, max_size=60),
    subs=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=60),
    trimmed=st.booleans(),
    slack=st.integers(0, 300),
    seed=st.integers(0, 2**32),
)
def test_reading_in_rounds_counts_every_line_exactly_once(steps, subs, trimmed, slack, seed):
    log = Log(trimmed=trimmed)
    t = BASE
    for i, step in enumerate(steps):
        t += step
        log.add(t, sub=subs[i % len(subs)])
    # Big enough that a read from any cursor's second gets at least one new line.
    per_second: dict[int, int] = defaultdict(int)
    for ts, line in log.lines:
        per_second[ts // NS] += len(line)
    limit = max(per_second.values()) + max(len(line) for _, line in log.lines) + slack
    rng = random.Random(seed)

    cursor = Cursor(CID, 0, 0)
    got: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    consumed = 0
    for _ in range(len(log.lines) + 2):
        res = consume(chunked(log.read(cursor.t_ns or None, limit), rng=rng), cursor, 0, limit, DOMAIN)
        assert res.gap_from_ns is None
        for sub, counts in res.agg.subdomains.items():
            got[sub] = [a + b for a, b in zip(got[sub], counts, strict=True)]
        consumed += res.consumed
        cursor = res.cursor
        if not res.cut:
            break
        assert res.consumed > 0 or consumed == len(log.lines)
    else:
        pytest.fail("reading never finished")
    assert dict(got) == dict(log.truth)
    assert consumed == len(log.lines)
    last = log.lines[-1][0]
    assert cursor == at(log.entries, last, sum(1 for ts, _ in log.lines if ts == last))


# Two streams, zones, unreadable prefixes -------------------------------------------------

DAY = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp()) * NS
# Traefik v3's own log line, on stderr (colours as the real binary writes them)
ERROR_LINE = b"\x1b[90m2026-11-30T10:10:05Z\x1b[0m \x1b[31mERR\x1b[0m Error while proxying error=\"context canceled\""


def at_clock(h: int, m: int, s: int, nanos: int = 0) -> int:
    return DAY + (h * 3600 + m * 60 + s) * NS + nanos


def kubelet_read(entries: list[tuple[int, bytes]], cursor: Cursor, limit: int = 1 << 20) -> bytes:
    """What the kubelet serves for a read from ``cursor``: ``sinceTime = floor(F)``
    (whole seconds), then every line stamped before it dropped on its own."""
    since = cursor.floor_ns // NS * NS
    return b"".join(prefix(ts) + text + b"\n" for ts, text in entries if ts >= since)[:limit]


def totals(*results) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for res in results:
        for sub, counts in res.agg.subdomains.items():
            out[sub] = [a + b for a, b in zip(out[sub], counts, strict=True)]
    return dict(out)


def test_stderr_line_stamped_before_the_access_line_written_ahead_of_it():
    """Table row 1: read 1 ends with a stderr line stamped before the access line just
    ahead of it; read 2 returns both again and one more access line."""
    log = [(at_clock(10, 10, 5, 500_000_000), access("acme", 0, 1000)), (at_clock(10, 10, 5, 400_000_000), ERROR_LINE)]
    first = consume([kubelet_read(log, Cursor(CID, 0, 0))], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    log.append((at_clock(10, 10, 9), access("acme", 0, 500)))
    second = consume([kubelet_read(log, first.cursor)], first.cursor, 0, 1 << 20, DOMAIN)
    assert totals(first, second) == {"acme": [0, 1500, 2]}
    assert (first.consumed, second.consumed) == (2, 1)
    assert first.gap_from_ns is None and second.gap_from_ns is None


def test_access_line_stamped_before_the_stderr_line_that_ended_the_read():
    """Table row 2: read 1 ends with a stderr line stamped 05.5; an access line stamped
    05.4 is written after it, then one at 09.0."""
    log = [(at_clock(10, 10, 5, 500_000_000), ERROR_LINE)]
    first = consume([kubelet_read(log, Cursor(CID, 0, 0))], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    log += [(at_clock(10, 10, 5, 400_000_000), access("acme", 0, 300)), (at_clock(10, 10, 9), access("acme", 0, 700))]
    second = consume([kubelet_read(log, first.cursor)], first.cursor, 0, 1 << 20, DOMAIN)
    assert totals(first, second) == {"acme": [0, 1000, 2]}
    assert second.consumed == 2 and second.gap_from_ns is None


def test_stamps_with_a_zone_offset_are_read_as_utc():
    """Table row 3: containerd stamps in the node's zone, the kubelet keeps the offset."""
    data = (
        b"2026-11-30T18:08:00.250000000+08:00 " + access("acme", 70, 700) + b"\n"
        b"2026-11-30T18:08:01.250000000+08:00 " + access("acme", 30, 300) + b"\n"
    )
    first = consume([data], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert totals(first) == {"acme": [100, 1000, 2]}
    assert first.extra == {}
    assert first.cursor.t_ns == at_clock(10, 8, 1, 250_000_000)  # 18:08:01.25+08:00 = 10:08:01.25Z
    again = consume([data], first.cursor, 0, 1 << 20, DOMAIN)  # the same lines, read again
    assert again.consumed == 0 and again.cursor == first.cursor and again.gap_from_ns is None


@pytest.mark.parametrize(
    ("stamp", "utc"),
    [
        (b"2026-11-30T18:08:00.250000000+08:00", at_clock(10, 8, 0, 250_000_000)),
        (b"2026-11-30T04:38:00.25-05:30", at_clock(10, 8, 0, 250_000_000)),
        (b"2026-12-01T02:00:00+08:00", at_clock(18, 0, 0)),  # a date across midnight
        (b"2026-11-29T23:59:59.999999999-10:00", at_clock(9, 59, 59, 999_999_999)),
        (b"2026-11-30T10:08:00.1+00:30", at_clock(9, 38, 0, 100_000_000)),
        (b"2026-11-30T10:08:00.123456789Z", at_clock(10, 8, 0, 123_456_789)),
        (b"2026-11-30T10:08:00Z", at_clock(10, 8, 0)),
    ],
)
def test_parse_any_offset_and_fraction_width(stamp, utc):
    parsed = parse_timestamp(stamp + b" {}")
    assert parsed == (utc, len(stamp) + 1)


@pytest.mark.parametrize(
    "line",
    [
        b"2026-11-30T18:08:00.250000000+0800 text",
        b"2026-11-30T18:08:00.250000000+08 text",
        b"2026-11-30T18:08:00.250000000+24:00 text",
        b"2026-11-30T18:08:00.250000000+08:60 text",
        b"2026-11-30T18:08:00.250000000-00:00 text",
        b"2026-11-30T18:08:00.250000000 +08:00 text",
        b"2026-11-30T18:08:00.250000000z text",
    ],
)
def test_parse_rejects_malformed_offsets(line):
    assert parse_timestamp(line) is None


@given(
    t_ns=st.integers(min_value=NS, max_value=4_000_000_000 * NS),
    minutes=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).filter(bool),
    trimmed=st.booleans(),
)
def test_any_offset_gives_the_same_instant(t_ns, minutes, trimmed):
    local = prefix(t_ns + minutes * 60 * NS, trimmed)[:-2]  # without "Z "
    sign = "+" if minutes > 0 else "-"
    zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}".encode()
    assert parse_timestamp(local + zone + b" x") == (t_ns, len(local) + len(zone) + 1)


def test_unreadable_prefix_takes_its_predecessors_stamp_and_is_counted_once():
    good = prefix(BASE + 5) + access("a", 1, 2) + b"\n"
    bad = b"2026-11-24T01:50:22.000000005+0800 " + access("a", 5, 5) + b"\n"  # a stamp, unreadable
    later = prefix(BASE + 9) + access("a", 3, 4) + b"\n"
    first = consume([good + bad], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert first.extra == {"rejected:bad_timestamp": 1}
    assert first.consumed == 2 and totals(first) == {"a": [1, 2, 1]}
    # read again with a line after it: the unreadable line is matched, not counted again
    second = consume([good + bad + later], first.cursor, 0, 1 << 20, DOMAIN)
    assert second.extra == {} and second.consumed == 1 and totals(second) == {"a": [3, 4, 1]}
    assert second.gap_from_ns is None
    # first in a read, it takes the cursor's highest stamp
    only = consume([bad], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert only.consumed == 1 and only.cursor.t_ns == 0
    assert consume([bad], only.cursor, 0, 1 << 20, DOMAIN).consumed == 0


def test_unreadable_line_first_in_a_re_read_is_not_counted_again():
    """Its predecessor is older than sinceTime, so the re-read starts with it: it was
    consumed with its predecessor's stamp, and a re-read starts with consumed lines."""
    bad = b"2026-11-24T01:50:24.5+0800 " + b"text\n"  # the kubelet's instant: BASE + 2.5 s
    log = prefix(BASE) + access("a", 1, 1) + b"\n" + bad + prefix(BASE + 3 * NS) + access("a", 2, 2) + b"\n"
    first = consume([log], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert first.extra == {"rejected:bad_timestamp": 1} and first.consumed == 3
    assert first.cursor.floor_ns == BASE + 2 * NS  # sinceTime 01:50:24: the kubelet keeps the bad line
    re_read = bad + prefix(BASE + 3 * NS) + access("a", 2, 2) + b"\n" + prefix(BASE + 4 * NS) + access("a", 4, 4) + b"\n"
    second = consume([re_read], first.cursor, 0, 1 << 20, DOMAIN)
    assert second.extra == {} and second.consumed == 1 and totals(second) == {"a": [4, 4, 1]}
    assert second.gap_from_ns is None


def test_identical_lines_at_one_stamp_stay_distinct():
    line = prefix(BASE + 7) + access("dup", 1, 1) + b"\n"
    first = consume([line * 3], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert first.cursor.n == 3
    second = consume([line * 5], first.cursor, 0, 1 << 20, DOMAIN)  # two more, identical
    assert second.consumed == 2 and totals(second) == {"dup": [2, 2, 2]}
    assert second.cursor.n == 5


def test_old_cursor_form_is_understood():
    """A cursor stored as ``<cid>|<t_ns>|<n>``: lines before t and the first n at t are
    consumed; the next cursor is in the new form and covers the same lines."""
    log = Log()
    for t in (BASE + 3, BASE + 5, BASE + 5, BASE + 5, BASE + 8):
        log.add(t)
    old = Cursor.decode(f"{CID}|{BASE + 5}|2")
    assert old == Cursor(CID, BASE + 5, 2) and (old.t_ns, old.n, old.floor_ns) == (BASE + 5, 2, BASE + 5)
    res = consume([log.read(old.floor_ns, 1 << 20)], old, 0, 1 << 20, DOMAIN)
    assert res.consumed == 2 and res.gap_from_ns is None
    assert res.agg.subdomains == {"tun": [4 + 5, 1004 + 1005, 2]}
    assert res.cursor.encode().startswith("v2|")
    assert Cursor.decode(res.cursor.encode()) == res.cursor
    assert res.cursor.floor_ns == BASE + 5  # the floor never moves backwards
    again = consume([log.read(res.cursor.floor_ns, 1 << 20)], res.cursor, 0, 1 << 20, DOMAIN)
    assert again.consumed == 0 and again.gap_from_ns is None


def test_rotation_inside_the_window_is_no_gap_but_past_all_of_it_is():
    log = Log()
    for i in range(6):
        log.add(BASE + i * 1000)
    first = consume([log.read(None, 1 << 20)], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    log.add(BASE + 9000, sub="new")
    kept = [(t, line) for t, line in log.lines[3:]]  # the first three consumed lines rotated away
    res = consume([b"".join(line for _, line in kept)], first.cursor, 0, 1 << 20, DOMAIN)
    assert res.gap_from_ns is None and res.consumed == 1 and list(res.agg.subdomains) == ["new"]
    gone = consume([log.lines[-1][1]], first.cursor, 0, 1 << 20, DOMAIN)  # only the new line left
    assert (gone.gap_from_ns, gone.gap_to_ns) == (BASE + 5000, BASE + 9000)
    assert gone.consumed == 1


def test_cursor_of_a_busy_second_is_bounded_by_the_window():
    log = Log()
    for i in range(3000):  # 3 s at 1,000 lines/s
        log.add(BASE + i * NS // 1000)
    res = consume([log.read(None, 1 << 30)], Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN)
    assert res.cursor.floor_ns == res.cursor.t_ns - W
    assert len(res.cursor.seen) == 1001  # the lines of the last second, both ends included
    assert len(res.cursor.encode()) < 17 * 1001


STEPS = [-W, -W // 2, -3_000_000, -1, 0, 0, 1, 1_000_000, NS // 3, NS, 2 * NS + 7]


@given(data=st.data(), n=st.integers(1, 40), trimmed=st.booleans(), slack=st.integers(0, 200),
       seed=st.integers(0, 2**32))
def test_two_streams_within_the_window_are_read_exactly_once(data, n, trimmed, slack, seed):
    """Any interleaving of two monotonic streams, each line stamped no more than W before
    the newest line ahead of it, read in any cuts (limitBytes, chunking, lines appended
    between reads) from floor(F) with the kubelet's per-line sinceTime filter: every line
    is consumed exactly once, with no gap."""
    rng = random.Random(seed)
    last: dict[str, int] = {}
    entries: list[tuple[int, bytes]] = []
    truth: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    top = BASE + data.draw(st.integers(0, NS), label="start")
    for _ in range(n):
        stream = data.draw(st.sampled_from(["stdout", "stderr"]))
        ts = max(top + data.draw(st.sampled_from(STEPS)), top - W, last.get(stream, 0))
        last[stream] = ts
        top = max(top, ts)
        if stream == "stdout":  # small choices, so identical lines at one stamp happen
            sub, bi, bo = data.draw(st.sampled_from(["a", "b"])), data.draw(st.sampled_from([0, 7])), 100
            text = access(sub, bi, bo)
            t = truth[sub]
            t[0], t[1], t[2] = t[0] + bi, t[1] + bo, t[2] + 1
        else:
            text = data.draw(st.sampled_from([ERROR_LINE, b'{"level":"error","msg":"x"}']))
        entries.append((ts, text))
    reveal = sorted(data.draw(st.lists(st.integers(0, n), max_size=5))) + [n]

    def rendered(ts: int, text: bytes) -> bytes:
        return prefix(ts, trimmed) + text + b"\n"

    # a read must get past the lines it re-reads: those stamped within W + 1 s of H
    window = max(sum(len(rendered(t, x)) for t, x in entries if ts - W - NS <= t <= ts) for ts, _ in entries)
    limit = window + max(len(rendered(t, x)) for t, x in entries) + slack

    cursor = Cursor(CID, 0, 0)
    consumed = 0
    got: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for upto in reveal:
        visible = entries[:upto]
        for _ in range(2 * n + 2):
            since = cursor.floor_ns // NS * NS
            body = b"".join(rendered(t, x) for t, x in visible if t >= since)[:limit]
            res = consume(chunked(body, rng=rng), cursor, 0, limit, DOMAIN)
            assert res.gap_from_ns is None
            for sub, counts in res.agg.subdomains.items():
                got[sub] = [a + b for a, b in zip(got[sub], counts, strict=True)]
            consumed += res.consumed
            cursor = Cursor.decode(res.cursor.encode())  # through Redis's string form
            if not res.cut:
                break
            assert res.consumed > 0, "no progress"
        else:
            pytest.fail("reading never finished")
        assert consumed == upto
    assert dict(got) == {k: v for k, v in truth.items()}
    assert cursor.covers(entries)


# complete_lines: long lines ------------------------------------------------------------

MIB = 1024 * 1024


def _long_access(sub: str, bytes_in: int, bytes_out: int, length: int) -> bytes:
    """An access line of exactly ``length`` bytes (its RequestPath padded)."""
    head = access(sub, bytes_in, bytes_out)[:-1] + b',"RequestPath":"/p?pad='
    return head + b"a" * (length - len(head) - 2) + b'"}'


@pytest.mark.parametrize("length", [70_000, 20 * 1000 * 1000])
@pytest.mark.parametrize("size", [1000, 4096, 65_536, 100_003, 1 << 20, 30 * MIB])
def test_complete_lines_long_lines_in_any_chunk_size(length, size):
    long_line = _long_access("big", 7, 9, length)
    assert len(long_line) == length
    stream = b"first\n" + long_line + b"\nlast\nunfinished"
    # 20 MB is over the default bound (16 MiB): framed with a bound above it here
    got = list(complete_lines((stream[i : i + size] for i in range(0, len(stream), size)), 32 * MIB))
    assert got == [b"first", long_line, b"last"]


def test_complete_lines_is_linear_in_a_long_line():
    import time

    # 40,000 chunks of 500 bytes: re-joining the tail for every chunk (the old way)
    # copies about 400 GB (minutes); keeping the pieces copies the line once (0.05 s).
    long_line = _long_access("big", 7, 9, 20 * 1000 * 1000)
    chunks = [long_line[i : i + 500] for i in range(0, len(long_line), 500)] + [b"\nnext\n"]
    started = time.perf_counter()
    got = list(complete_lines(chunks, 32 * MIB))
    assert time.perf_counter() - started < 2
    assert got == [long_line, b"next"]


def test_complete_lines_hands_on_a_line_over_the_bound_once_and_resyncs():
    from app.parser import LongLine

    bound = 100_000
    over = b"2026-11-24T01:50:22.000000000Z " + b"{" + b"x" * 250_000
    stream = b"before\n" + over + b"\nafter\n" + b"y" * 150_000  # the last: unfinished and over
    for size in (1, 7, 4096, 65_536, len(stream)):
        if size == 1:
            chunks = [stream[:10], *[stream[i : i + 1] for i in range(10, 2000)], stream[2000:]]
        else:
            chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        got = list(complete_lines(chunks, bound))
        assert got[0] == b"before" and got[2] == b"after" and len(got) == 3
        assert type(got[1]) is LongLine and got[1].length == len(over)
        assert got[1].startswith(over[:200])


def test_complete_lines_memory_stays_bounded_on_a_100_mb_line():
    import gc
    import tracemalloc

    from app.parser import LongLine

    bound = 16 * MIB
    chunk = 64 * 1024

    def stream():
        yield b"2026-11-24T01:50:22.000000000Z before\n"
        for _ in range(100 * 1000 * 1000 // chunk):
            yield b"x" * chunk  # a fresh object each time, as a socket read gives
        yield b"\n2026-11-24T01:50:23.000000000Z after\n"

    gc.collect()
    tracemalloc.start()
    try:
        got = [(type(line), len(line), getattr(line, "length", None)) for line in complete_lines(stream(), bound)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got[0][0] is bytes and got[2][0] is bytes
    assert got[1][0] is LongLine and got[1][2] == 100 * 1000 * 1000 // chunk * chunk
    assert peak < 2 * bound, f"peak {peak / MIB:.1f} MiB"


def test_consume_counts_a_line_over_the_bound_once_and_its_neighbours():
    """Through consume(): the over-bound line (16 MiB default) is consumed like any line
    (the cursor covers it), rejected once as too_long with its length, and a re-read
    from the new cursor counts nothing again."""
    log = Log()
    log.add(BASE + 1, sub="acme")
    over = _long_access("acme", 1 << 30, 2, 17 * MIB)
    log.add(BASE + 2, text=over)
    seventy = _long_access("acme", 5, 6, 70_000)
    log.add(BASE + 3, text=seventy)
    log.add(BASE + 4, sub="acme")
    data = log.read(None, 1 << 30)
    res = consume(chunked(data, [65_536]), Cursor(CID, 0, 0), 0, 1 << 30, DOMAIN)
    assert res.consumed == 4
    assert res.agg.rejected == {"too_long": 1}
    assert res.agg.too_long_lengths == [len(over)]
    truth = log.truth["acme"]
    assert subdomains(res) == {"acme": [truth[0] + 5, truth[1] + 6, 3]}
    again = consume(chunked(data, [65_536]), res.cursor, 0, 1 << 30, DOMAIN)
    assert again.consumed == 0 and again.agg.total == 0


def test_consume_takes_its_line_bound_from_the_caller():
    """LOG_LINE_MAX_BYTES reaches the framing and the parser: a line over a low bound is
    rejected as too_long, the same line under the default bound is counted."""
    stamp = b"2026-11-24T01:50:22.000000000Z "
    body = (b'{"DownstreamContentSize":2,"DownstreamStatus":200,"RequestContentSize":1,'
            b'"RequestHost":"acme.t.lum.tools","RequestPath":"/' + b"p" * 6000 + b'","StartUTC":"x"}')
    data = stamp + body + b"\n"
    low = consume([data], Cursor("cid", 0, 0), 0, 1 << 20, "t.lum.tools", max_line_bytes=4096)
    assert low.agg.counted == 0 and low.agg.rejected == {"too_long": 1} and low.consumed == 1
    default = consume([data], Cursor("cid", 0, 0), 0, 1 << 20, "t.lum.tools")
    assert default.agg.subdomains == {"acme": [1, 2, 1]}


def test_a_new_line_stamped_behind_the_floor_after_a_new_line_is_counted():
    """Consumed lines come before new ones in log order, so after the first new line every
    line is new whatever its stamp: one stamped more than the window behind the newest
    (a node clock stepped back) but within the second the kubelet still returns is
    counted, once, and counted as late."""
    log = [(at_clock(10, 10, 7, 900_000_000), access("acme", 0, 100))]  # H = 07.9, F = 06.9
    first = consume([kubelet_read(log, Cursor(CID, 0, 0))], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert first.cursor.floor_ns == at_clock(10, 10, 6, 900_000_000)
    log += [
        (at_clock(10, 10, 8), access("acme", 0, 10)),  # new
        (at_clock(10, 10, 6, 100_000_000), access("acme", 0, 20)),  # behind F, but second 06 is served
        (at_clock(10, 10, 5, 500_000_000), access("acme", 0, 40)),  # before second 06: never served
    ]
    second = consume([kubelet_read(log, first.cursor)], first.cursor, 0, 1 << 20, DOMAIN)
    assert totals(second) == {"acme": [0, 30, 2]}
    assert (second.consumed, second.late) == (2, 1)
    assert counters_of(second)["lines_late"] == 1
    third = consume([kubelet_read(log, second.cursor)], second.cursor, 0, 1 << 20, DOMAIN)
    assert third.consumed == 0 and third.late == 0  # read again: nothing counted twice


def test_a_line_behind_the_floor_before_any_new_line_was_consumed_before():
    log = [(at_clock(10, 10, 6, 100_000_000), access("acme", 0, 20)), (at_clock(10, 10, 7, 900_000_000), access("acme", 0, 100))]
    first = consume([kubelet_read(log, Cursor(CID, 0, 0))], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    again = consume([kubelet_read(log, first.cursor)], first.cursor, 0, 1 << 20, DOMAIN)
    assert totals(first) == {"acme": [0, 120, 2]} and again.consumed == 0 and again.late == 0


# Event time: each line in the interval of its stamp ---------------------------------------


@given(
    steps=st.lists(st.sampled_from([0, 1, NS // 3, NS, 7 * NS, 59 * NS, 61 * NS]), min_size=1, max_size=60),
    subs=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=60),
    interval=st.sampled_from([1, 5, 60]),
    limit=st.integers(2_000, 20_000),
    seed=st.integers(0, 2**32),
)
def test_every_line_goes_to_the_interval_of_its_stamp_whatever_the_reads(steps, subs, interval, limit, seed):
    """Read in rounds of any size: the parts of all reads, per (interval, tunnel), are
    exactly the lines stamped in that interval (a read spanning intervals splits)."""
    log = Log()
    truth: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    t = BASE
    for i, step in enumerate(steps):
        t += step
        sub = subs[i % len(subs)]
        log.add(t, sub=sub)
        bi, bo = log.seq, 1000 + log.seq  # what Log.add wrote
        cell = truth[(t // NS // interval * interval, sub)]
        cell[0] += bi
        cell[1] += bo
        cell[2] += 1
    rng = random.Random(seed)
    cursor = Cursor(CID, 0, 0)
    got: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for _ in range(4 * len(log.lines) + 4):
        res = consume(chunked(log.read(cursor.t_ns or None, limit), rng=rng), cursor, 0, limit, DOMAIN,
                      report_interval=interval)
        assert totals(res) == {s: v for s, v in res.agg.subdomains.items()}
        for start, part in res.parts.items():
            assert start % interval == 0
            for sub, counts in part.subdomains.items():
                got[(start, sub)] = [a + b for a, b in zip(got[(start, sub)], counts, strict=True)]
        cursor = res.cursor
        if not res.cut:
            break
    assert dict(got) == dict(truth)
