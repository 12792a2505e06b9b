"""What Traefik's access log cannot meter, as the parser sees it: upgraded connections
(counted as requests of 0 bytes, and as unmetered per tunnel) and the pieces of lines the
runtime split at 16 KiB and the kubelet re-joined wrongly (``split_line``). See
app/parser.py, "Upgraded connections" and ``split_line``."""

from __future__ import annotations

import json

import pytest

from app.fetching import consume, counters_of, fmt_ns
from app.model import Cursor
from app.parser import SPLIT_PIECE_BYTES, Aggregator
from tests.unit.test_parser import DROP, check_accounting, feed, make, only_reason

# The access line a real Traefik 3.7.15 wrote for a WebSocket session through it (five
# 1000-byte echoes, closed by the client after 0.5 s; sim/traefik.py's echo backend), as
# seen in tests/e2e/test_traefik_real.py: written when the connection closed, status 0
# (Traefik never calls WriteHeader on a hijacked connection), both sizes 0.
REAL_WEBSOCKET_LINE = (
    b'{"ClientAddr":"127.0.0.1:47948","ClientHost":"127.0.0.1","ClientPort":"47948","ClientUsername":"-",'
    b'"DownstreamContentSize":0,"DownstreamStatus":0,"Duration":504005459,"OriginContentSize":0,'
    b'"OriginDuration":503908715,"OriginStatus":0,"Overhead":96744,"RequestAddr":"alpha.t.lum.tools",'
    b'"RequestContentSize":0,"RequestCount":1,"RequestHost":"alpha.t.lum.tools","RequestMethod":"GET",'
    b'"RequestPath":"/ws?x=1","RequestPort":"-","RequestProtocol":"HTTP/1.1","RequestScheme":"http",'
    b'"RetryAttempts":0,"RouterName":"tunnel@file","ServiceAddr":"127.0.0.1:33323","ServiceName":"backend@file",'
    b'"ServiceURL":"http://127.0.0.1:33323","StartLocal":"2026-11-30T06:18:43.067016227Z",'
    b'"StartUTC":"2026-11-30T06:18:43.067016227Z","entryPointName":"web","level":"info","msg":"",'
    b'"time":"2026-11-30T06:18:43Z"}'
)
# The same with accessLog.fields.headers keeping Upgrade and Connection.
REAL_WEBSOCKET_LINE_WITH_HEADERS = REAL_WEBSOCKET_LINE.replace(
    b'"StartUTC":"2026-11-30T06:18:43.067016227Z",',
    b'"StartUTC":"2026-11-30T06:18:43.067016227Z","downstream_Connection":"Upgrade",'
    b'"downstream_Upgrade":"websocket",',
).replace(
    b'"msg":"",',
    b'"msg":"","origin_Connection":"Upgrade","origin_Upgrade":"websocket","request_Connection":"Upgrade",'
    b'"request_Upgrade":"websocket",',
)


# ------------------------------------------------------------------ upgraded connections


@pytest.mark.parametrize("line", [REAL_WEBSOCKET_LINE, REAL_WEBSOCKET_LINE_WITH_HEADERS], ids=["plain", "headers"])
def test_real_websocket_line_is_a_request_of_0_bytes_and_unmetered(line):
    json.loads(line)
    agg = feed(line, make())
    assert agg.subdomains == {"alpha": [0, 0, 1], "my-tunnel": [1024, 337, 1]}
    assert agg.unmetered == {"alpha": 1}
    assert agg.counted == 2 and agg.rejected == {} and agg.ignored == {}


@pytest.mark.parametrize(
    ("status", "size_in", "size_out", "upgrade", "unmetered"),
    [
        (0, 0, 0, DROP, True),  # what Traefik 3.7 writes
        (101, 0, 0, DROP, True),
        (101, 5, 7, "websocket", True),  # the sizes are counted as logged all the same
        (0, 0, 0, "websocket", True),
        (0, 3, 0, "websocket", True),  # status 0 and the header: upgraded, whatever the sizes
        (0, 0, 0, "", True),
        (0, 3, 0, DROP, False),
        (0, 0, 3, DROP, False),
        (0, 3, 0, "", False),
        (200, 0, 0, "websocket", False),  # the backend refused the upgrade: an ordinary request
        (200, 0, 0, DROP, False),
        (404, 0, 0, DROP, False),
        (499, 0, 0, DROP, False),
        (-1, 0, 0, DROP, False),
        (DROP, 0, 0, "websocket", False),  # no status, no telling
        (DROP, 0, 0, DROP, False),
    ],
)
def test_upgraded_connection_rule(status, size_in, size_out, upgrade, unmetered):
    line = make(DownstreamStatus=status, RequestContentSize=size_in, DownstreamContentSize=size_out,
                request_Upgrade=upgrade)
    agg = feed(line)
    assert agg.subdomains == {"my-tunnel": [size_in, size_out, 1]}  # counted either way
    assert agg.unmetered == ({"my-tunnel": 1} if unmetered else {})


def test_absent_sizes_count_as_0_for_the_rule_too():
    agg = feed(make(DownstreamStatus=0, RequestContentSize=DROP, DownstreamContentSize=DROP))
    assert agg.subdomains == {"my-tunnel": [0, 0, 1]} and agg.unmetered == {"my-tunnel": 1}


def test_unmetered_is_per_tunnel_and_only_for_tunnels():
    ws = {"DownstreamStatus": 0, "RequestContentSize": 0, "DownstreamContentSize": 0}
    agg = feed(
        make(**ws),
        make(**ws, RequestHost="My-Tunnel.T.LUM.TOOLS:443"),
        make(**ws, RequestHost="other.t.lum.tools."),
        make(**ws, RequestHost="example.com"),
        make(**ws, RequestHost="a.b.t.lum.tools"),
        make(**ws, RequestHost=DROP),
        make(),
    )
    assert agg.unmetered == {"my-tunnel": 2, "other": 1}
    assert agg.subdomains == {"my-tunnel": [1024, 337, 3], "other": [0, 0, 1]}
    assert agg.ignored == {"other_host": 1, "not_a_tunnel": 1, "no_host": 1}


def test_a_status_or_header_of_another_type_takes_the_slow_path_and_still_counts():
    agg = feed(
        make(DownstreamStatus="0", RequestContentSize=0, DownstreamContentSize=0),  # not an integer: no rule
        make(DownstreamStatus=0, RequestContentSize=0, DownstreamContentSize=0, request_Upgrade=1),
        make(DownstreamStatus=101.0, RequestContentSize=0, DownstreamContentSize=0),
        make(DownstreamStatus=0, RequestContentSize=2, DownstreamContentSize=0, request_Upgrade=["x"]),
        make(DownstreamStatus=2**70),
    )
    assert agg.subdomains == {"my-tunnel": [1024 + 2, 337, 5]}
    assert agg.unmetered == {"my-tunnel": 1}  # the second: status 0, sizes 0


def test_unmetered_whatever_the_chunking_and_through_merge():
    lines = [REAL_WEBSOCKET_LINE, make(), REAL_WEBSOCKET_LINE_WITH_HEADERS, make(DownstreamStatus=101)] * 3
    data = b"\n".join(lines)
    for size in (1, 7, 100, len(data)):
        agg = Aggregator()
        for start in range(0, len(data), size):
            agg.feed_chunk(data[start : start + size])
        agg.finish()
        assert agg.unmetered == {"alpha": 6, "my-tunnel": 3}
    first, second = Aggregator(), Aggregator()
    first.feed_lines(lines[:5])
    second.feed_lines(lines[5:])
    first.merge(second)
    assert first.unmetered == {"alpha": 6, "my-tunnel": 3}
    assert first.to_dict()["unmetered"] == {"alpha": 6, "my-tunnel": 3}


def test_a_pod_read_commits_the_unmetered_counter():
    t0 = 1_795_000_000 * 1_000_000_000
    log = b"".join(f"{fmt_ns(t0 + i)} ".encode() + line + b"\n"
                   for i, line in enumerate([REAL_WEBSOCKET_LINE, make(), REAL_WEBSOCKET_LINE]))
    res = consume([log], Cursor("containerd://x", 0, 0), 0, 1 << 20, "t.lum.tools")
    assert res.agg.unmetered == {"alpha": 2}
    counters = counters_of(res)
    assert counters["unmetered_requests"] == 2 and counters["requests"] == 3


# ------------------------------------------------------------------------ split lines

STDERR = b"\x1b[90m2026-11-30T06:18:44Z\x1b[0m \x1b[32mINF\x1b[0m Something happened on stderr"
STAMP = b"2026-11-30T06:18:44.123456789Z "  # what a kubelet before 1.26 puts before each piece


def long_line(path_bytes: int = 40_000, **fields) -> bytes:
    return make(RequestPath="/" + "p" * path_bytes, **fields)


def pieces(line: bytes) -> list[bytes]:
    """How containerd cuts a line longer than 16 KiB (redirectLogs: exactly 16 KiB each)."""
    return [line[i : i + SPLIT_PIECE_BYTES] for i in range(0, len(line), SPLIT_PIECE_BYTES)]


def test_pieces_glued_to_a_stderr_line_by_a_kubelet_since_1_26():
    # stdout P piece1, stderr F line, stdout F piece2: the kubelet's one isNewLine flag
    # writes piece1 and the stderr line as one line, then piece2 as a line of its own.
    first, second, third = pieces(long_line())
    agg = feed(first + STDERR, second + third, make())
    assert agg.rejected == {"split_line": 2}
    assert agg.subdomains == {"my-tunnel": [1024, 337, 1]}  # the split request is lost: never billed
    # The stderr line between the second and the third piece instead.
    agg = feed(first + second + STDERR, third)
    assert agg.rejected == {"split_line": 2}


def test_a_kubelet_before_1_26_puts_the_next_stamp_inside_the_line():
    line = long_line()
    first, rest = line[:SPLIT_PIECE_BYTES], line[SPLIT_PIECE_BYTES:]
    # The cut falls inside RequestPath: the stamp becomes part of the path, the line
    # still parses, and host and sizes (sorted before RequestPath) are right: billed.
    agg = feed(first + STAMP + rest)
    assert agg.subdomains == {"my-tunnel": [1024, 337, 1]} and agg.rejected == {}
    # A cut between two tokens (here just after the path's closing quote) does not parse.
    base = make(RequestPath="/")
    quote = base.index(b'","RequestPort"')  # the path's closing quote
    pad = SPLIT_PIECE_BYTES - 1 - quote
    between = make(RequestPath="/" + "p" * pad)
    assert between[SPLIT_PIECE_BYTES - 1 : SPLIT_PIECE_BYTES + 1] == b'",'
    assert only_reason(feed(between[:SPLIT_PIECE_BYTES] + STAMP + between[SPLIT_PIECE_BYTES:])) == "split_line"
    # A stderr line between the pieces, stamped too.
    assert feed(first + STAMP + STDERR, rest).rejected == {"split_line": 2}


@pytest.mark.parametrize(
    "cut_after",
    [b'"DownstreamContentSize":3', b'"DownstreamContentSize":', b'"Duration":2237326', b"1.", b"1e", b"tr", b'\\u00'],
)
def test_a_first_piece_is_recognised_wherever_the_cut_falls(cut_after):
    # Build a line whose first 16 KiB end right after `cut_after`, inside a padding field
    # sorted first ("A...": still an access line's first piece, whatever it holds).
    value = {b"1.": 1.5, b"1e": 1e300, b"tr": True, b'\\u00': "\u00e9"}.get(cut_after)  # json escapes it
    fields = {"AAA": value} if value is not None else {}
    line = make(**fields, RequestPath="/" + "p" * 40_000)
    at = line.index(cut_after) + len(cut_after)
    pad = SPLIT_PIECE_BYTES - at
    assert pad > 0
    line = make(**fields, AA="z" * (pad - len('"AA":"",')), RequestPath="/" + "p" * 40_000)
    assert line[:SPLIT_PIECE_BYTES].endswith(cut_after)
    assert only_reason(feed(line[:SPLIT_PIECE_BYTES] + STDERR)) == "split_line"
    assert only_reason(feed(line[:SPLIT_PIECE_BYTES])) == "split_line"  # exactly one piece


def test_a_cut_inside_a_utf8_character_is_still_a_split_line():
    # Go writes non-ASCII characters as UTF-8 (Python's json would escape them).
    prefix = make(RequestPath="/")
    at = prefix.index(b'"/"') + 2  # where the path's characters start
    line = make(RequestPath="/" + "p" * (SPLIT_PIECE_BYTES - at - 1) + "E" * 20_000).replace(b"E", "é".encode())
    assert line[SPLIT_PIECE_BYTES - 1 : SPLIT_PIECE_BYTES + 1] == "é".encode()  # the cut splits it
    first, rest = line[:SPLIT_PIECE_BYTES], line[SPLIT_PIECE_BYTES:]
    agg = feed(first + STDERR, rest)
    assert agg.rejected == {"split_line": 2}
    assert only_reason(feed(first + STAMP + rest)) == "split_line"  # not UTF-8 any more either


def test_a_later_piece_with_a_crlf_or_another_zone_is_a_split_line():
    line = long_line()
    assert only_reason(feed(line[SPLIT_PIECE_BYTES:] + b"\r")) == "split_line"
    zoned = line.replace(b'"time":"2026-11-24T02:52:57Z"', b'"time":"2026-11-24T10:52:57.5+08:00"')
    assert only_reason(feed(zoned[SPLIT_PIECE_BYTES:])) == "split_line"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (long_line()[: SPLIT_PIECE_BYTES - 1] + STDERR, "invalid_json"),  # not cut at 16 KiB: unknown cause
        (long_line()[: SPLIT_PIECE_BYTES - 1], "invalid_json"),
        (b'{"x":1 oops' + b" " * SPLIT_PIECE_BYTES, "invalid_json"),  # broken long before the cut
        (make()[:-1], "invalid_json"),
        (b'54Z"}', "not_access_log"),  # a later piece shorter than the end it is known by
        (b'"}', "not_access_log"),
        (b'x"time":"2026-11-24T02:52:57Z"}', "not_access_log"),  # no comma before "time"
        (b'\x1b[90m2026\x1b[0m \x1b[32mINF\x1b[0m config={"a":"b","time":"soon"}', "not_access_log"),
        (b'{"level":"info","msg":"x","time":"2026-11-24T02:52:57Z"}', "not_access_log"),  # whole JSON
        (b'{"level":"info","msg":"x",' + b'"time":"2026-11-24T02:52:57Z"}'[1:], "invalid_json"),
        (b"\x80\x80" + b"plain text", "invalid_utf8"),
    ],
)
def test_what_is_not_a_split_line(line, reason):
    assert only_reason(feed(line)) == reason


def test_split_lines_are_rejected_and_accounted_in_any_chunking():
    first, second, third = pieces(long_line())
    lines = [first + STDERR, second + third, make(), REAL_WEBSOCKET_LINE]
    data = b"\n".join(lines) + b"\n"
    for size in (1000, 16_384, 65_536):
        agg = Aggregator()
        for start in range(0, len(data), size):
            agg.feed_chunk(data[start : start + size])
        agg.finish()
        check_accounting(agg)
        assert agg.rejected == {"split_line": 2} and agg.counted == 2 and agg.unmetered == {"alpha": 1}
        assert agg.access_lines() == 2  # a piece is not known to be an access line
