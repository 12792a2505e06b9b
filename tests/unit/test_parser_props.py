"""Properties of ``app.parser.Aggregator`` (hypothesis).

- no input bytes ever make it raise, and its accounting always balances;
- its totals equal the sum over the lines an independent model says are counted;
- cutting the input into chunks anywhere, or feeding lines one by one, changes nothing.

The model below is written separately from the parser (regular expressions, no msgspec)
so that the two can disagree.
"""

from __future__ import annotations

import json
import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from app.parser import (
    IGNORED_REASONS,
    LONG_LINE_HEAD,
    MAX_SIZE,
    REJECTED_REASONS,
    Aggregator,
    LineFramer,
    LongLine,
)

# tests/conftest.py registers the same profiles; keep this module usable on its own.
try:
    settings.get_profile("ci")
except InvalidArgument:
    settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

DOMAIN = "t.lum.tools"
ABSENT = object()
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TUNNEL = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.t\.lum\.tools")


def model_subdomain(host: str) -> str | None:
    """The counting rule's host clause, restated with regular expressions."""
    name = host.translate(_ASCII_LOWER)
    name = re.sub(r":[0-9]*\Z", "", name)
    if name.endswith("."):
        name = name[:-1]
    match = _TUNNEL.fullmatch(name)
    return match.group(1) if match else None


def check_accounting(agg: Aggregator) -> None:
    assert agg.total == agg.counted + sum(agg.ignored.values()) + sum(agg.rejected.values())
    assert agg.counted == sum(slot[2] for slot in agg.subdomains.values())
    assert set(agg.ignored) <= set(IGNORED_REASONS)
    assert set(agg.rejected) <= set(REJECTED_REASONS)
    assert all(min(slot) >= 0 for slot in agg.subdomains.values())


# --------------------------------------------------------------------------- strategies

labels = st.one_of(
    st.sampled_from(["a", "x1", "my-tunnel", "a" * 63, "a" * 64, "-a", "a-", "xn--p1ai"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCZ0129-_.", min_size=0, max_size=70),
)
suffixes = st.sampled_from(
    [
        ".t.lum.tools",
        ".T.LUM.TOOLS",
        ".t.lum.tools.",
        "t.lum.tools",
        ".t.lum.tools.evil.com",
        ".lum.tools",
        "",
    ]
)
ports = st.sampled_from(["", "", ":80", ":8443", ":", ":x"])
tunnelish_hosts = st.builds(
    lambda label, suffix, port: label + suffix + port, labels, suffixes, ports
)
hosts = st.one_of(
    tunnelish_hosts,
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30),
    st.sampled_from(["\u212aelvin.t.lum.tools", "t.lum.tools", "", "[::1]:80"]),
    st.sampled_from([None, 1, 2.5, True, [], {}]),  # wrong types
    st.just(ABSENT),
)
good_sizes = st.one_of(st.integers(0, MAX_SIZE), st.integers(0, 10**6), st.just(ABSENT))
bad_sizes = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=MAX_SIZE + 1),
    st.integers(MAX_SIZE + 1, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)
sizes = st.one_of(good_sizes, good_sizes, bad_sizes)
fillers = st.dictionaries(
    st.sampled_from(
        ["DownstreamStatus", "StartUTC", "RequestPath", "level", "msg", "ServiceURL", "x"]
    ),
    st.one_of(
        st.integers(), st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
    ),
    max_size=4,
)


@st.composite
def access_lines(draw) -> tuple[bytes, tuple[str, int, int] | None]:
    """A JSON object line and what the model expects: (sub, in, out) or None."""
    entry = draw(fillers)
    host = draw(hosts)
    size_in = draw(sizes)
    size_out = draw(sizes)
    for key, value in (
        ("RequestHost", host),
        ("RequestContentSize", size_in),
        ("DownstreamContentSize", size_out),
    ):
        if value is not ABSENT:
            entry[key] = value
    line = json.dumps(
        entry,
        sort_keys=draw(st.booleans()),
        separators=(",", ":"),
        ensure_ascii=draw(st.booleans()),
    )
    expected = None
    good = all(v is ABSENT or (type(v) is int and 0 <= v <= MAX_SIZE) for v in (size_in, size_out))
    if good and isinstance(host, str):
        sub = model_subdomain(host)
        if sub is not None:
            expected = (
                sub,
                0 if size_in is ABSENT else size_in,
                0 if size_out is ABSENT else size_out,
            )
    return line.encode(), expected


@st.composite
def odd_lines(draw) -> tuple[bytes, None]:
    """Lines that must never be counted."""
    kind = draw(st.integers(0, 4))
    if kind == 0:  # any bytes without a brace cannot be a JSON object
        line = draw(st.binary(max_size=80).filter(lambda b: b"{" not in b))
    elif kind == 1:  # a strict prefix of an object line is never valid JSON
        whole, _ = draw(access_lines())
        line = whole[: draw(st.integers(0, len(whole) - 1))]
    elif kind == 2:
        line = draw(
            st.sampled_from(
                [b"\x1b[90m2026-11-24T03:11:53Z\x1b[0m \x1b[32mINF\x1b[0m x", b"", b"\r", b"[1]"]
            )
        )
    elif kind == 3:
        line = (
            b'127.0.0.1 - - [24/Nov/2026:03:12:03 +0000] "GET / HTTP/1.1" 200 '
            + str(draw(st.integers(0, 10**6))).encode()
            + b' "-" "-" 1 "r@file" "http://x" 1ms'
        )
    else:  # an otherwise good line spoiled by invalid UTF-8
        whole, _ = draw(access_lines())
        line = whole.replace(b'"', b'"\xff', 1) if whole.count(b'"') else b"\xfe"
    return line.replace(b"\n", b" "), None


lines_with_expectations = st.lists(
    st.one_of(access_lines(), access_lines(), odd_lines()), max_size=40
)


def model_totals(items) -> dict[str, list[int]]:
    totals: dict[str, list[int]] = {}
    for _, expected in items:
        if expected is not None:
            slot = totals.setdefault(expected[0], [0, 0, 0])
            slot[0] += expected[1]
            slot[1] += expected[2]
            slot[2] += 1
    return totals


def feed_in_chunks(data: bytes, cuts: list[int], max_line_bytes: int | None = None) -> Aggregator:
    agg = Aggregator(DOMAIN) if max_line_bytes is None else Aggregator(DOMAIN, max_line_bytes)
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        agg.feed_chunk(data[start:cut])
        start = cut
    agg.finish()
    return agg


# --------------------------------------------------------------------------- properties


@PROPS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
def test_any_bytes_never_raise(data, cuts):
    agg = feed_in_chunks(data, [c for c in cuts if c <= len(data)])
    check_accounting(agg)
    lines = Aggregator(DOMAIN)
    lines.feed_lines(data.split(b"\n"))
    check_accounting(lines)
    assert lines.total == data.count(b"\n") + 1


@PROPS
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_any_lines_never_raise(lines):
    agg = Aggregator(DOMAIN)
    agg.feed_lines(lines)
    check_accounting(agg)
    assert agg.total == len(lines)


@PROPS
@given(lines_with_expectations)
def test_totals_equal_the_sum_over_counted_lines(items):
    agg = Aggregator(DOMAIN)
    agg.feed_lines([line for line, _ in items])
    check_accounting(agg)
    assert agg.subdomains == model_totals(items)
    assert agg.counted == sum(expected is not None for _, expected in items)


@PROPS
@given(
    lines_with_expectations,
    st.lists(st.integers(0, 10**5), max_size=12),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_any_chunking_gives_the_same_totals(items, cuts, newline, final_newline):
    lines = [line for line, _ in items]
    data = newline.join(lines) + (newline if final_newline and lines else b"")
    chunked = feed_in_chunks(data, [c for c in cuts if c <= len(data)])
    check_accounting(chunked)

    reference = Aggregator(DOMAIN)
    split = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        split.pop()  # a final newline ends the last line; it does not start another
    reference.feed_lines(split)
    assert chunked.to_dict() == reference.to_dict()
    assert chunked.subdomains == model_totals(items)

    one_by_one = Aggregator(DOMAIN)
    for line in split:
        one_by_one.feed_lines([line])
    assert one_by_one.to_dict() == reference.to_dict()


@PROPS
@given(lines_with_expectations, lines_with_expectations)
def test_merge_equals_feeding_both(first, second):
    a = Aggregator(DOMAIN)
    a.feed_lines([line for line, _ in first])
    b = Aggregator(DOMAIN)
    b.feed_lines([line for line, _ in second])
    both = Aggregator(DOMAIN)
    both.feed_lines([line for line, _ in first + second])
    a.merge(b)
    assert a.to_dict() == both.to_dict()


@PROPS
@given(
    st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.lists(st.integers(0, 3000), max_size=12),
    st.integers(1, 100),
)
def test_any_bound_and_chunking_agree_with_whole_lines(lines, cuts, bound):
    """Framing with a bound is the same as splitting first: lines over the bound are
    too_long with their lengths, the others are classified alike."""
    data = b"".join(line + b"\n" for line in lines)
    chunked = feed_in_chunks(data, [c for c in cuts if c <= len(data)], max_line_bytes=bound)
    check_accounting(chunked)
    whole = Aggregator(DOMAIN, bound)
    whole.feed_lines(lines)
    assert chunked.to_dict() == whole.to_dict()
    assert chunked.too_long_lengths == [len(line) for line in lines if len(line) > bound]


def _seen(line: bytes) -> bytes | tuple[int, bytes]:
    """A framed line as a comparable value: a LongLine as (length, its head)."""
    if type(line) is LongLine:
        return line.length, bytes.__getitem__(line, slice(0, line._head_size))
    return line


@PROPS
@given(
    st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    st.lists(st.integers(0, 3000), max_size=12),
    st.integers(1, 300),
)
def test_framer_gives_the_lines_whatever_the_chunking(lines, tail, cuts, bound):
    """Each line, or for one over the bound its length and first bytes; never more than
    the bound held; the unfinished last line only from finish()."""
    data = b"".join(line + b"\n" for line in lines) + tail
    cuts = sorted(c for c in cuts if c <= len(data))
    framer = LineFramer(bound)
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        out += framer.feed(data[start:end])
        assert framer.held <= bound
    last = framer.finish()

    def expected(line: bytes):
        return line if len(line) <= bound else (len(line), line[:LONG_LINE_HEAD])

    assert [_seen(line) for line in out] == [expected(line) for line in lines]
    assert (None if last is None else _seen(last)) == (expected(tail) if tail else None)
    assert framer.finish() is None and framer.pending == 0
