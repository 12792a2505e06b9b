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

from app.fetching import complete_lines, consume, fmt_ns, parse_timestamp
from app.model import Cursor

NS = 1_000_000_000
DOMAIN = "t.lum.tools"
BASE = int(datetime(2026, 11, 24, 1, 50, 22, tzinfo=UTC).timestamp()) * NS  # a whole second
CID = "containerd://abc"


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
    assert res.cursor == Cursor(CID, BASE + 4000, 1)
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
    assert res.cursor == Cursor(CID, BASE + 9, 1)
    assert res.gap_from_ns is None


def test_cursor_n_grows_when_the_last_timestamp_is_still_t():
    log = Log()
    for _ in range(5):
        log.add(BASE + 7)
    cursor = Cursor(CID, BASE + 7, 3)
    res = consume([log.read(cursor.t_ns, 1 << 20)], cursor, 0, 1 << 20, DOMAIN)
    assert res.consumed == 2
    assert res.cursor == Cursor(CID, BASE + 7, 5)
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
    assert first.cursor == Cursor(CID, BASE, 5)

    second = consume(chunked(log.read(first.cursor.t_ns, 1 << 20), [5]), first.cursor, 0, 1 << 20, DOMAIN)
    assert not second.cut and second.gap_from_ns is None
    assert second.consumed == 6
    assert second.cursor == Cursor(CID, BASE + NS // 2, 1)
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
    assert res.cursor == Cursor(CID, BASE + 3 * NS, 1)


def test_lines_without_a_timestamp_are_counted_by_reason():
    data = prefix(BASE) + access("a", 1, 2) + b"\nno timestamp here\n" + prefix(BASE + 1) + access("a", 3, 4) + b"\n"
    res = consume([data], Cursor(CID, 0, 0), 0, 1 << 20, DOMAIN)
    assert res.extra == {"rejected:no_timestamp": 1}
    assert res.agg.subdomains == {"a": [4, 6, 2]}
    assert res.cursor == Cursor(CID, BASE + 1, 1)


def test_rotation_past_the_cursor_is_a_gap_with_its_span():
    log = Log()
    log.add(BASE + 3 * NS + 5)  # the cursor's own lines (at BASE + 100) are gone
    log.add(BASE + 4 * NS)
    cursor = Cursor(CID, BASE + 100, 2)
    res = consume([log.read(cursor.t_ns, 1 << 20)], cursor, 0, 1 << 20, DOMAIN)
    assert (res.gap_from_ns, res.gap_to_ns) == (BASE + 100, BASE + 3 * NS + 5)
    assert res.consumed == 2  # what is there is still counted
    assert res.cursor == Cursor(CID, BASE + 4 * NS, 1)


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
    assert cut.cursor == Cursor(CID, BASE + 2, 1)


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
    assert cursor == Cursor(CID, last, sum(1 for ts, _ in log.lines if ts == last))
