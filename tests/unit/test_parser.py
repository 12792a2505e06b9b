"""The counting rule of ``app.parser``, clause by clause, on real-shaped Traefik lines.

The v3 line below has the shape of Traefik 3.7's output (sorted keys, compact); the
v2.11 line differs in its fields (no TLS/trace fields here, ``ServiceURL`` is Go's
url.URL object).
"""

from __future__ import annotations

import json

import pytest

from app import parser
from app.parser import (
    IGNORED_REASONS,
    MAX_LINE_BYTES,
    MAX_SIZE,
    REJECTED_REASONS,
    Aggregator,
    LongLine,
    is_tunnel_label,
    tunnel_subdomain,
)
from tests.data.make_sample import V211_SERVICE_URL  # Go's url.URL, as v2.11 logs ServiceURL

DROP = object()
# A bound for tests that cut or build long lines many times (the default is 16 MiB).
SMALL = 64 * 1024

V3 = {
    "ClientAddr": "10.1.2.3:53402",
    "ClientHost": "10.1.2.3",
    "ClientPort": "53402",
    "ClientUsername": "-",
    "DownstreamContentSize": 337,
    "DownstreamStatus": 200,
    "Duration": 2237326,
    "OriginContentSize": 337,
    "OriginDuration": 2144122,
    "OriginStatus": 200,
    "Overhead": 93204,
    "RequestAddr": "my-tunnel.t.lum.tools",
    "RequestContentSize": 1024,
    "RequestCount": 1,
    "RequestHost": "my-tunnel.t.lum.tools",
    "RequestMethod": "POST",
    "RequestPath": "/api/upload?x=1",
    "RequestPort": "-",
    "RequestProtocol": "HTTP/2.0",
    "RequestScheme": "https",
    "RetryAttempts": 0,
    "RouterName": "tunnels@kubernetescrd",
    "ServiceAddr": "10.42.1.7:8080",
    "ServiceName": "tunnels-gateway-80@kubernetescrd",
    "ServiceURL": "http://10.42.1.7:8080",
    "SpanId": "4f2a9c0d1e3b5a67",
    "StartLocal": "2026-11-24T02:52:57.945505791Z",
    "StartUTC": "2026-11-24T02:52:57.945505791Z",
    "TLSCipher": "TLS_AES_128_GCM_SHA256",
    "TLSVersion": "1.3",
    "TraceId": "0af7651916cd43dd8448eb211c80319c",
    "entryPointName": "websecure",
    "level": "info",
    "msg": "",
    "time": "2026-11-24T02:52:57Z",
}

V211 = {
    key: value
    for key, value in V3.items()
    if key not in ("SpanId", "TraceId", "TLSCipher", "TLSVersion")
} | {"ServiceURL": V211_SERVICE_URL}


def make(base: dict = V3, **fields) -> bytes:
    """A compact, sorted-keys JSON access line; a field set to DROP is removed."""
    entry = dict(base)
    for key, value in fields.items():
        if value is DROP:
            entry.pop(key, None)
        else:
            entry[key] = value
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def host_line(host, **fields) -> bytes:
    return make(RequestHost=host, RequestAddr=host if isinstance(host, str) else "x", **fields)


def feed(*lines: bytes, domain: str = "t.lum.tools", max_line_bytes: int = MAX_LINE_BYTES) -> Aggregator:
    agg = Aggregator(domain, max_line_bytes)
    agg.feed_lines(list(lines))
    check_accounting(agg)
    return agg


def check_accounting(agg: Aggregator) -> None:
    assert agg.total == agg.counted + sum(agg.ignored.values()) + sum(agg.rejected.values())
    assert agg.counted == sum(slot[2] for slot in agg.subdomains.values())
    assert set(agg.ignored) <= set(IGNORED_REASONS)
    assert set(agg.rejected) <= set(REJECTED_REASONS)


def only_reason(agg: Aggregator) -> str:
    reasons = {**agg.ignored, **agg.rejected}
    assert len(reasons) == 1 and agg.counted == 0, (agg.to_dict(), reasons)
    return next(iter(reasons))


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("base", [V3, V211], ids=["v3", "v2.11"])
def test_counts_bytes_in_out_and_requests(base):
    agg = feed(make(base), make(base, RequestContentSize=0, DownstreamContentSize=5000))
    assert agg.to_dict() == {
        "subdomains": {"my-tunnel": {"bytes_in": 1024, "bytes_out": 337 + 5000, "requests": 2}},
        "lines": {"total": 2, "counted": 2, "ignored": {}, "rejected": {}},
        "unmetered": {},
    }
    assert agg.access_lines() == 2


@pytest.mark.parametrize(
    "host",
    [
        "my-tunnel.t.lum.tools",
        "My-Tunnel.T.LUM.TOOLS",  # Traefik keeps the client's case
        "my-tunnel.t.lum.tools:8443",  # a port, if one ever shows up in RequestHost
        "my-tunnel.t.lum.tools.",  # fully qualified
        "MY-TUNNEL.t.lum.tools.:443",
        "my-tunnel.t.lum.tools:",  # empty port
    ],
)
def test_host_normalised_to_the_label(host):
    assert tunnel_subdomain(host) == "my-tunnel"
    assert feed(host_line(host)).subdomains == {"my-tunnel": [1024, 337, 1]}


@pytest.mark.parametrize(
    "label",
    ["a", "0", "x1", "a-b", "xn--bcher-kva", "a" * 63, "1-2-3", "a--b"],
)
def test_valid_labels(label):
    assert is_tunnel_label(label)
    assert tunnel_subdomain(f"{label}.t.lum.tools") == label


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "evilt.lum.tools",  # lookalike: no dot before the domain
        "x.t.lum.tools.evil.com",  # lookalike: domain inside another
        "t.lum.tools.evil.com",
        "lum.tools",
        "www.lum.tools",
        "xt.lum.tools",
        "10.0.0.1",
        "::1",
        "[::1]:80",
        "x.t.lum.tools:http",  # not a numeric port: the host keeps its colon
        "x.t.lum.tools..",  # one trailing dot is removed; "x.t.lum.tools." is not the domain
    ],
)
def test_other_hosts_ignored(host):
    assert tunnel_subdomain(host) is None
    agg = feed(host_line(host))
    assert only_reason(agg) == "other_host"
    assert agg.access_lines() == 1


@pytest.mark.parametrize(
    "host",
    [
        "t.lum.tools",
        "t.lum.tools.",
        "T.LUM.TOOLS:80",
        "a.b.t.lum.tools",
        ".t.lum.tools",
        "-x.t.lum.tools",
        "x-.t.lum.tools",
        "a" * 64 + ".t.lum.tools",
        "a_b.t.lum.tools",
        "a b.t.lum.tools",
        "bücher.t.lum.tools",
        "\u212aelvin.t.lum.tools",  # KELVIN SIGN: str.lower() would make it "kelvin"
        "\u0130x.t.lum.tools",  # dotted capital I
    ],
)
def test_not_one_label_ignored(host):
    assert tunnel_subdomain(host) is None
    agg = feed(host_line(host))
    assert only_reason(agg) == "not_a_tunnel"


def test_other_domain():
    assert tunnel_subdomain("t.lum.tools", "lum.tools") == "t"
    assert tunnel_subdomain("a.t.lum.tools", "lum.tools") is None
    agg = feed(
        host_line("Foo.Example.ORG"), host_line("my-tunnel.t.lum.tools"), domain="Example.org."
    )
    assert agg.subdomains == {"foo": [1024, 337, 1]}
    assert agg.ignored == {"other_host": 1}


def test_invalid_domain():
    for domain in ("", " ", ".", ".lum.tools", "a b"):
        with pytest.raises(ValueError):
            Aggregator(domain)


# --------------------------------------------------------------------------- absent fields


def test_absent_request_size_counts_as_zero_request_still_counted():
    agg = feed(make(RequestContentSize=DROP))
    assert agg.subdomains == {"my-tunnel": [0, 337, 1]}


def test_absent_downstream_size_counts_as_zero():
    agg = feed(make(DownstreamContentSize=DROP))
    assert agg.subdomains == {"my-tunnel": [1024, 0, 1]}


def test_minimal_entry_with_only_host():
    # accessLog.fields.defaultMode=drop with RequestHost kept: still an access entry.
    assert feed(b'{"RequestHost":"my-tunnel.t.lum.tools"}').subdomains == {"my-tunnel": [0, 0, 1]}


@pytest.mark.parametrize("base", [V3, V211], ids=["v3", "v2.11"])
def test_absent_host_is_no_host(base):
    # What Traefik writes for an empty Host header: no RequestHost, no RequestAddr.
    line = make(base, RequestHost=DROP, RequestAddr=DROP, RouterName=DROP, DownstreamStatus=404)
    agg = feed(line)
    assert only_reason(agg) == "no_host"
    assert agg.access_lines() == 1


def test_empty_host_is_no_host():
    assert only_reason(feed(host_line(""))) == "no_host"


def test_hostless_line_with_only_other_access_keys_is_no_host():
    assert (
        only_reason(feed(b'{"DownstreamStatus":404,"StartUTC":"2026-11-24T02:52:57Z"}'))
        == "no_host"
    )
    assert only_reason(feed(b'{"StartLocal":"2026-11-24T02:52:57Z"}')) == "no_host"


# --------------------------------------------------------------------------- not access log


@pytest.mark.parametrize(
    "line",
    [
        b"\x1b[90m2026-11-24T03:11:53Z\x1b[0m \x1b[32mINF\x1b[0m \x1b[1mStarting provider *file.Provider\x1b[0m",
        b"\x1b[90m2026-11-24T03:11:53Z\x1b[0m \x1b[32mINF\x1b[0m \x1b[1m",
        b"Version check is disabled.",
        b"You will not be notified if a new version is available.",
        b"\x1b[0m",
        b"2026-11-24T03:11:53Z INF Starting provider *file.Provider",  # log.noColor
        b'{"level":"info","msg":"Starting provider *file.Provider","providerName":"file","time":"2026-11-24T03:11:53Z"}',
        b'{"entryPointName":"web","level":"warn","msg":"aliasHeadersStrategy is not configured","time":"x"}',
        b"{}",
        b"",
        b"\r",
        b"   ",
        b"\x00\x00\x00",
        b"\x0c{}",  # form feed is not JSON whitespace
        b"GET / HTTP/1.1",
    ],
)
def test_not_access_log(line):
    agg = feed(line)
    assert only_reason(agg) == "not_access_log"
    assert agg.access_lines() == 0


@pytest.mark.parametrize(
    "line",
    [
        b'127.0.0.1 - - [24/Nov/2026:03:12:03 +0000] "POST / HTTP/1.1" 200 10 "-" "-" 1 "tunnel@file" "http://127.0.0.1:44983" 1ms',
        b'127.0.0.1 - - [24/Nov/2026:03:12:03 +0000] "POST /no-route/x HTTP/1.1" 404 19 "-" "-" 3 "-" "-" 0ms',
        b'10.0.0.9 - alice [02/Jan/2006:15:04:05 -0700] "GET /a?b=\\"c\\" HTTP/2.0" 200 5 "https://r/" "Mozilla/5.0 (X11)" 42 "r@k8s" "http://10.0.0.1:80" 12ms\r',
    ],
)
def test_clf_recognised(line):
    agg = feed(line)
    assert only_reason(agg) == "clf_no_host"
    assert agg.access_lines() == 0


@pytest.mark.parametrize(
    "line",
    [
        b'127.0.0.1 - - [24/Nov/2026:03:12:03 +0000] "POST / HTTP/1.1" 200 10',  # cut short
        b"127.0.0.1 - - 24/Nov/2026 GET / 200 10 1ms",
    ],
)
def test_clf_lookalikes_are_not_clf(line):
    assert only_reason(feed(line)) == "not_access_log"


def test_clf_check_is_linear_on_hostile_lines():
    # A naive regex with ".*" followed by quoted groups backtracks quadratically here.
    line = b'1 2 3 [02/Jan/2006:15:04:05 -0700] "' + b' 1 "" ""' * 7000
    agg = feed(line)
    assert only_reason(agg) == "not_access_log"


# --------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("bound", [SMALL, MAX_LINE_BYTES])
def test_too_long_limit_is_inclusive(bound):
    base_length = len(make(msg=""))
    fitting = make(msg="x" * (bound - base_length))
    assert len(fitting) == bound
    assert feed(fitting, max_line_bytes=bound).counted == 1
    too_long = make(msg="x" * (bound - base_length + 1))
    assert len(too_long) == bound + 1
    agg = feed(too_long, max_line_bytes=bound)
    assert only_reason(agg) == "too_long"
    assert agg.too_long_lengths == [bound + 1]
    # the CR is part of the line
    assert only_reason(feed(fitting + b"\r", max_line_bytes=bound)) == "too_long"


def test_default_bound_is_16_mib():
    assert MAX_LINE_BYTES == 16 * 1024 * 1024
    assert Aggregator().max_line_bytes == MAX_LINE_BYTES


@pytest.mark.parametrize(
    "line",
    [
        make(RequestPath="/\udcff").replace(b"\\udcff", b"\xff"),  # in a field we skip
        make(RequestHost="my-tunnel.t.lum.tools\udcff").replace(b"\\udcff", b"\xfe"),  # in the host
        make().replace(b'"msg":""', b'"msg":"\xed\xa0\x80"'),  # an encoded surrogate
        b"\xff\xfe plain text",
        make()[:-1] + b"\xc3",  # cut inside a multi-byte sequence
    ],
)
def test_invalid_utf8_rejected(line):
    assert only_reason(feed(line)) == "invalid_utf8"


def test_valid_utf8_accepted():
    agg = feed(make(RequestPath="/bücher/日本"), b"caf\xc3\xa9 text")
    assert agg.counted == 1 and agg.ignored == {"not_access_log": 1}


@pytest.mark.parametrize(
    "line",
    [
        make()[:-1],
        make()[:100],
        make()[: make().index(b"RequestHost") + 20],
        b"{",
        b'{"RequestHost":"my-tunnel.t.lum.tools"',
        make() + b"x",
        make() + b" " + make(),  # two objects on one line
        make() + b",",
        b"{'RequestHost': 'my-tunnel.t.lum.tools'}",
        b'{"RequestHost":"my-tunnel.t.lum.tools\\ud800"}',  # lone surrogate escape
        b'{"a":'
        + b"[" * 5000
        + b"]" * 5000
        + b',"RequestHost":"my-tunnel.t.lum.tools"}',  # too deep
        b'{"RequestHost":"a\x01b.t.lum.tools"}',  # raw control character
    ],
)
def test_invalid_json_rejected(line):
    assert only_reason(feed(line)) == "invalid_json"


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b"[" + make() + b"]",
        b'"my-tunnel.t.lum.tools"',
        b"42",
        b"-1",
        b"null",
        b"true",
        b"[" * 5000,
    ],
)
def test_not_object_rejected(line):
    assert only_reason(feed(line)) == "not_object"


@pytest.mark.parametrize("host", [None, 1, 1.5, True, [], {}, ["my-tunnel.t.lum.tools"]])
def test_bad_host_type(host):
    agg = feed(host_line(host))
    assert only_reason(agg) == "bad_host_type"
    assert agg.access_lines() == 1


@pytest.mark.parametrize("field", ["RequestContentSize", "DownstreamContentSize"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("12", "bad_size_type"),
        (12.0, "bad_size_type"),
        (1e3, "bad_size_type"),
        (True, "bad_size_type"),
        (False, "bad_size_type"),
        (None, "bad_size_type"),
        ([1], "bad_size_type"),
        ({"n": 1}, "bad_size_type"),
        (-1, "negative_size"),
        (-(2**63), "negative_size"),
        (-(2**70), "negative_size"),
        (2**53, "size_too_large"),
        (9_210_000_000_000_000_000, "size_too_large"),  # a new user's corrupt line (commit.lua refused its sum)
        (2**63 - 1, "size_too_large"),
        (2**63, "size_too_large"),
        (2**64, "size_too_large"),
        (10**30, "size_too_large"),
    ],
)
def test_bad_sizes_rejected(field, value, reason):
    agg = feed(make(**{field: value}))
    assert only_reason(agg) == reason
    assert agg.access_lines() == 1


def test_size_bounds():
    top = MAX_SIZE
    assert top == 2**53 - 1  # I-JSON's exact integers (RFC 7493, 2.2): see MAX_SIZE
    agg = feed(
        make(RequestContentSize=top, DownstreamContentSize=top), make(RequestContentSize=top)
    )
    assert agg.subdomains == {"my-tunnel": [2 * top, top + 337, 2]}  # sums exact past 2**53
    assert feed(make(RequestContentSize=0, DownstreamContentSize=0)).subdomains == {
        "my-tunnel": [0, 0, 1]
    }
    assert (
        feed(make().replace(b'"RequestContentSize":1024', b'"RequestContentSize":-0')).counted == 1
    )


def test_defect_order():
    # too_long before invalid_utf8 before JSON; host before sizes; request size first.
    assert only_reason(feed(b"\xff" * (SMALL + 1), max_line_bytes=SMALL)) == "too_long"
    assert only_reason(feed(b"{\xff")) == "invalid_utf8"
    assert only_reason(feed(host_line(None, RequestContentSize="x"))) == "bad_host_type"
    assert (
        only_reason(feed(make(RequestContentSize=-1, DownstreamContentSize="x"))) == "negative_size"
    )
    assert (
        only_reason(feed(make(RequestContentSize="x", DownstreamContentSize=-1))) == "bad_size_type"
    )


def test_whitespace_and_crlf_tolerated():
    agg = feed(make() + b"\r", b"  \t" + make() + b"  ", b"\r\n".join([make()]) + b"\r")
    assert agg.subdomains == {"my-tunnel": [3 * 1024, 3 * 337, 3]}


def test_buffer_types_accepted():
    agg = feed(bytearray(make()), memoryview(make()), make())
    assert agg.subdomains == {"my-tunnel": [3 * 1024, 3 * 337, 3]}


def test_fields_decoded_by_json_rules():
    # Escapes in keys and values are JSON: these are the same field and host.
    line = b'{"Request\\u0048ost":"my-tunnel\\u002et.lum.tools","DownstreamContentSize":7}'
    assert feed(line).subdomains == {"my-tunnel": [0, 7, 1]}


# --------------------------------------------------------------------------- batches and chunks

ODD = [
    b"\x1b[90m2026-11-24T03:11:53Z\x1b[0m \x1b[31mERR\x1b[0m boom",
    make()[:57],
    make(RequestContentSize="1024"),
    host_line(None),
    b'127.0.0.1 - - [24/Nov/2026:03:12:03 +0000] "GET / HTTP/1.1" 200 10 "-" "-" 1 "r" "u" 1ms',
    b"[1,2]",
    b"\xff",
    b"",
    make(DownstreamContentSize=-3),
]


def mixed_lines() -> list[bytes]:
    lines = []
    for i in range(60):
        lines.append(
            host_line(f"t{i % 7}.t.lum.tools", RequestContentSize=i, DownstreamContentSize=3 * i)
        )
        lines.append(host_line("example.com"))
        lines.append(ODD[i % len(ODD)])
    lines.append(b"x" * (SMALL + 5))
    return lines


def test_batch_with_odd_lines_equals_per_line():
    lines = mixed_lines()
    batch = feed(*lines, max_line_bytes=SMALL)
    single = Aggregator(max_line_bytes=SMALL)
    for line in lines:
        single.feed_lines([line])
    assert batch.to_dict() == single.to_dict()
    assert batch.counted == 60
    assert sum(batch.rejected.values()) > 0 and sum(batch.ignored.values()) > 0
    expected = {}
    for i in range(60):
        slot = expected.setdefault(f"t{i % 7}", [0, 0, 0])
        slot[0] += i
        slot[1] += 3 * i
        slot[2] += 1
    assert batch.subdomains == expected


def feed_in_chunks(data: bytes, size: int, max_line_bytes: int = SMALL) -> Aggregator:
    agg = Aggregator(max_line_bytes=max_line_bytes)
    for start in range(0, len(data), size):
        agg.feed_chunk(data[start : start + size])
        assert agg._framer.held <= max_line_bytes
    agg.finish()
    check_accounting(agg)
    return agg


@pytest.mark.parametrize("size", [1, 2, 3, 50, 1000, 70_000, 10**7])
def test_chunks_equal_lines(size):
    lines = mixed_lines()
    agg = feed_in_chunks(b"\n".join(lines), size)
    assert agg.to_dict() == feed(*lines, max_line_bytes=SMALL).to_dict()
    assert agg.too_long_lengths == [SMALL + 5]


@pytest.mark.parametrize("length", [SMALL - 1, SMALL, SMALL + 1, 3 * SMALL])
@pytest.mark.parametrize("before", [0, 1, 5, 200])
def test_long_line_found_anywhere_in_a_big_chunk(length, before):
    base_length = len(make(msg=""))
    long_line = make(msg="x" * (length - base_length))
    assert len(long_line) == length
    lines = [make()] * before + [long_line] + [make()] * 300
    agg = Aggregator(max_line_bytes=SMALL)
    agg.feed_chunk(b"\n".join(lines) + b"\n")  # one chunk, larger than the bound
    agg.finish()
    assert agg.to_dict() == feed(*lines, max_line_bytes=SMALL).to_dict()
    assert agg.rejected == ({"too_long": 1} if length > SMALL else {})
    assert agg.too_long_lengths == ([length] if length > SMALL else [])
    assert agg.counted == before + 300 + (length <= SMALL)


def test_feed_chunk_keeps_the_unfinished_line():
    agg = Aggregator()
    agg.feed_chunk(make() + b"\n" + make()[:30])
    assert agg.counted == 1 and agg.total == 1
    agg.feed_chunk(b"")
    agg.feed_chunk(make()[30:] + b"\n")  # the rest of the line
    assert agg.counted == 2 and agg.total == 2
    agg.finish()
    assert agg.total == 2  # nothing left over is no line
    agg.feed_chunk(make())
    agg.finish()  # a last line without a newline is a line
    assert agg.counted == 3


def test_over_long_line_without_newline_is_skipped_in_constant_memory():
    agg = Aggregator(max_line_bytes=SMALL)
    agg.feed_chunk(make() + b"\n" + b"x" * 40_000)
    assert agg._framer.held == 40_000
    agg.feed_chunk(b"y" * 40_000)  # now over the bound: its bytes are dropped
    assert agg._framer.held == 0 and agg._framer.pending == 80_000
    for _ in range(5):
        agg.feed_chunk(b"z" * 100_000)  # still inside it: skipped
        assert agg._framer.held == 0
    agg.feed_chunk(b"end of the long line\n" + make() + b"\n" + make()[:10])
    assert agg.too_long_lengths == [80_000 + 500_000 + len(b"end of the long line")]
    agg.finish()
    check_accounting(agg)
    assert agg.total == 4 and agg.counted == 2
    assert agg.rejected == {"too_long": 1, "invalid_json": 1}


def test_finish_inside_an_over_long_line_counts_it_once():
    agg = Aggregator(max_line_bytes=SMALL)
    agg.feed_chunk(b"{" + b"x" * (SMALL + 10))
    agg.finish()
    assert agg.total == 1 and agg.rejected == {"too_long": 1}
    assert agg.too_long_lengths == [SMALL + 11]


# --------------------------------------------------------------------------- long lines

GIB = 1 << 30


def acme_lines(pad: int = 70_000) -> list[bytes]:
    """A PUT whose URL is padded to ``pad`` characters, with a 1 GiB body, and an ordinary
    GET (100 B in, 200 B out), as Traefik writes them: Go escapes '&', '<', '>' in JSON
    strings as \\u0026 and so on (6 bytes each), and the client-chosen ClientHost,
    RequestAddr and path sort before RequestHost and mimic its text."""
    decoy = '","RequestHost":"victim.t.lum.tools","RequestContentSize":7,"x":"'
    path = "/upload?pad=" + ("a&b<c>" * pad)[: pad - len(decoy)] + decoy
    upload = make(
        RequestMethod="PUT",
        RequestPath=path,
        ClientHost="victim.t.lum.tools",
        RequestAddr="acme.t.lum.tools",
        RequestHost="acme.t.lum.tools",
        RequestContentSize=GIB,
        DownstreamContentSize=2,
    )
    for char, escaped in (b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"):
        upload = upload.replace(char, escaped)
    get = make(RequestMethod="GET", RequestHost="acme.t.lum.tools", RequestContentSize=100, DownstreamContentSize=200)
    return [upload, get]


ACME = {"acme": {"bytes_in": GIB + 100, "bytes_out": 202, "requests": 2}}


def test_a_70000_character_url_is_billed_exactly():
    upload, get = acme_lines()
    assert json.loads(upload)["RequestPath"].startswith("/upload?pad=a&b<c>a&b<c>")
    assert len(json.loads(upload)["RequestPath"]) == len("/upload?pad=") + 70_000
    assert len(upload) > 200_000  # escaped: the line is far over the old 64 KiB bound
    agg = feed(upload, get)
    assert agg.to_dict()["subdomains"] == ACME
    assert agg.to_dict()["subdomains"]["acme"] == {"bytes_in": 1_073_741_924, "bytes_out": 202, "requests": 2}
    assert agg.rejected == {} and agg.ignored == {}


@pytest.mark.parametrize("size", [1000, 4096, 65_536, 100_003, 1 << 20])
def test_a_70000_character_url_is_billed_exactly_in_any_chunking(size):
    lines = acme_lines()
    stream = b"\n".join([make(), *lines, make()]) + b"\n"
    agg = feed_in_chunks(stream, size, max_line_bytes=MAX_LINE_BYTES)
    assert agg.to_dict()["subdomains"] == ACME | {"my-tunnel": {"bytes_in": 2048, "bytes_out": 674, "requests": 2}}
    assert agg.rejected == {}


def test_a_line_over_the_default_bound_is_too_long_once_and_its_neighbours_count():
    upload, get = acme_lines(pad=MAX_LINE_BYTES // 3)  # "a&b<c>" escaped: 3.5 bytes a character
    assert MAX_LINE_BYTES < len(upload) < 2 * MAX_LINE_BYTES
    stream = get + b"\n" + upload + b"\n" + get + b"\n"
    agg = feed_in_chunks(stream, 1 << 20, max_line_bytes=MAX_LINE_BYTES)
    assert agg.rejected == {"too_long": 1}
    assert agg.too_long_lengths == [len(upload)]
    assert agg.subdomains == {"acme": [200, 400, 2]}
    assert agg.total == 3


def test_long_line_stands_in_for_a_line_it_never_holds():
    line = LongLine(b"2026-11-24T01:50:22.000000000Z " + b"{" * 1000, 5_000_000)
    assert len(line) < 300 and line.length == 5_000_000
    rest = line[31:]  # what consume() does to drop the kubelet's timestamp
    assert type(rest) is LongLine and rest.length == 5_000_000 - 31 and rest.startswith(b"{{{")
    assert type(line[:19]) is bytes and line[:19] == b"2026-11-24T01:50:22"
    assert not rest.isascii()  # never valid UTF-8: nothing can count it by mistake
    agg = feed(rest, make())
    assert agg.rejected == {"too_long": 1} and agg.counted == 1
    assert agg.too_long_lengths == [5_000_000 - 31]
    merged = feed(make())
    merged.merge(agg)
    assert merged.too_long_lengths == [5_000_000 - 31]


def test_too_long_lengths_kept_are_bounded():
    agg = feed(*[b"x" * (SMALL + i) for i in range(1, parser.TOO_LONG_KEPT + 50)], max_line_bytes=SMALL)
    assert agg.rejected == {"too_long": parser.TOO_LONG_KEPT + 49}
    assert agg.too_long_lengths == [SMALL + i for i in range(1, parser.TOO_LONG_KEPT + 1)]


# --------------------------------------------------------------------------- results


def test_merge():
    a = feed(make(), host_line("example.com"), b"junk", make()[:20])
    b = feed(make(RequestHost="other.t.lum.tools"), make(), b"junk")
    a.merge(b)
    check_accounting(a)
    assert a.subdomains == {"my-tunnel": [2048, 674, 2], "other": [1024, 337, 1]}
    assert a.ignored == {"other_host": 1, "not_access_log": 2}
    assert a.rejected == {"invalid_json": 1}
    assert a.total == 7 and a.counted == 3
    with pytest.raises(ValueError):
        a.merge(Aggregator("example.org"))


def test_merge_keeps_cached_hosts_counting_into_the_same_list():
    a = feed(make())
    a.merge(feed(make()))
    a.feed_lines([make()])
    assert a.subdomains == {"my-tunnel": [3072, 1011, 3]}


def test_access_lines_counts_known_access_entries():
    agg = feed(
        make(),
        host_line("example.com"),
        host_line("a.b.t.lum.tools"),
        make(RequestHost=DROP),
        make(RequestContentSize=-1),
        host_line(None),
        b"text",
        b'127.0.0.1 - - [24/Nov/2026:03:12:03 +0000] "GET / HTTP/1.1" 200 1 "-" "-" 1 "r" "u" 1ms',
        make()[:40],
    )
    assert agg.access_lines() == 6


def test_to_dict_shape_and_order():
    agg = feed(make(RequestHost="b.t.lum.tools"), make(RequestHost="a.t.lum.tools"), b"x", b"[1]")
    result = agg.to_dict()
    assert list(result) == ["subdomains", "lines", "unmetered"]  # unmetered: added last
    assert list(result["subdomains"]) == ["a", "b"]
    assert result["subdomains"]["a"] == {"bytes_in": 1024, "bytes_out": 337, "requests": 1}
    assert result["lines"] == {
        "total": 4,
        "counted": 2,
        "ignored": {"not_access_log": 1},
        "rejected": {"not_object": 1},
    }
    assert result["unmetered"] == {}
    json.dumps(result)  # plain JSON types


def test_host_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(parser, "_CACHE_MAX", 10)
    agg = Aggregator()
    lines = [host_line(f"h{i}.t.lum.tools", DownstreamContentSize=i) for i in range(100)] * 2
    agg.feed_lines(lines)
    assert len(agg._slots) <= 10
    assert agg.subdomains == {f"h{i}": [2048, 2 * i, 2] for i in range(100)}


def test_huge_hosts_are_not_cached():
    agg = Aggregator()
    huge = [f"h{i}" + "x" * 20_000 + ".example.com" for i in range(20)]
    agg.feed_lines([host_line(host) for host in huge] * 2 + [make()])
    assert agg.ignored == {"other_host": 40}
    assert all(len(host) <= 512 for host in agg._slots)
    assert all(len(host) <= 512 for host in agg._hosts)  # the classification cache too
    long_label = "a" * 63 + ".t.lum.tools:65535"
    assert tunnel_subdomain(long_label) == "a" * 63


def test_fallback_counts_a_line_the_typed_decoder_would_accept():
    # The slow path is only reached for refused lines; if it ever sees a sound one it
    # applies the rule instead of losing the line.
    agg = Aggregator()
    agg.total += 3
    agg._classify_odd(make())
    agg._classify_odd(make(RequestHost=DROP))
    agg._classify_odd(host_line("example.com"))
    check_accounting(agg)
    assert agg.subdomains == {"my-tunnel": [1024, 337, 1]}
    assert agg.ignored == {"no_host": 1, "other_host": 1}


def test_reason_constants_are_a_closed_documented_set():
    assert set(IGNORED_REASONS) == {
        "other_host",
        "not_a_tunnel",
        "no_host",
        "not_access_log",
        "clf_no_host",
    }
    assert set(REJECTED_REASONS) == {
        "too_long",
        "invalid_utf8",
        "invalid_json",
        "split_line",
        "not_object",
        "bad_host_type",
        "bad_size_type",
        "negative_size",
        "size_too_large",
    }
    for reason in (*IGNORED_REASONS, *REJECTED_REASONS):
        assert f"``{reason}``" in parser.__doc__


def _hostile_lines(size: int):
    """Lines of about ``size`` bytes built to make a careless parser allocate a lot."""
    count = size // 3
    yield "host of nested arrays", b'{"RequestHost":[' + b"[]," * count + b"[]]}", 0.5
    yield "array of arrays", b"[" + b"[]," * count + b"[]]", 0.5
    yield "size of nested arrays", b'{"RequestContentSize":[' + b"[]," * count + b'[]],"RequestHost":"a.t.lum.tools"}', 0.5
    yield "many keys, no host", b"{" + b",".join(b'"k%d":[]' % i for i in range(size // 12)) + b"}", 0.5
    yield "a huge integer size", b'{"RequestContentSize":' + b"1" * size + b',"RequestHost":"a.t.lum.tools"}', 0.5
    yield "non-ASCII text", b'{"RequestHost":"a.t.lum.tools","msg":"' + "é😀".encode() * (size // 6) + b'"}', 0.5
    # The host string itself is built (4 bytes a character once one is outside the BMP);
    # classifying it copies only bounded slices. Traefik's hosts are ASCII (Go refuses
    # other bytes in a Host header), 1 byte a character.
    yield "astral host", b'{"RequestHost":"' + "😀".encode() + b"a" * size + b'.t.lum.tools:1"}', 6


@pytest.mark.parametrize("name", [name for name, _, _ in _hostile_lines(10)])
def test_memory_per_line_is_a_small_multiple_of_its_length(name):
    import gc
    import tracemalloc

    size = 4 * 1024 * 1024
    ((_, line, factor),) = [item for item in _hostile_lines(size) if item[0] == name]
    agg = Aggregator(max_line_bytes=2 * size)
    gc.collect()
    tracemalloc.start()
    try:
        agg.feed_lines([line])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    check_accounting(agg)
    assert agg.counted == (1 if name == "non-ASCII text" else 0)
    assert peak < factor * len(line), f"{name}: peak {peak / len(line):.2f} times the line"


def test_host_caches_are_emptied_when_full(monkeypatch):
    """Both per-host caches (slots and classifications, the latter shared by a read's
    aggregators) hold at most _CACHE_MAX hosts; counts do not depend on it."""
    import app.parser

    monkeypatch.setattr(app.parser, "_CACHE_MAX", 8)
    shared: dict = {}
    aggs = [Aggregator(hosts=shared), Aggregator(hosts=shared)]
    hosts = [f"t{i}.t.lum.tools" for i in range(50)] + [f"x{i}.example.com" for i in range(50)]
    for agg in aggs:
        agg.feed_lines([host_line(h) for h in hosts])
        assert len(agg._slots) <= 8
        assert agg.counted == 50 and agg.ignored == {"other_host": 50}
    assert len(shared) <= 8


def test_hostless_lines_among_refused_lines_are_told_apart_by_their_own_keys():
    """Lines without a host are sorted out after the batch is decoded, by index: each
    must be judged by its own keys however many refused lines come before it."""
    lines = [
        b"not json",
        b'{"level":"info","msg":"Configuration loaded"}',  # no access key
        b'{"RequestHost":"a.t.lum.tools","RequestContentSize":"1"}',  # refused: bad size type
        b"{",
        b'{"StartUTC":"2026-11-24T02:52:57Z"}',  # an access key, no host
        b'{"RequestHost":"a.t.lum.tools","RequestContentSize":5,"DownstreamContentSize":7}',
        b"[1]",
        b'{"RequestHost":"","Duration":12}',
        b'{"msg":"x"}',
    ]
    agg = Aggregator()
    agg.feed_lines(lines)
    assert agg.subdomains == {"a": [5, 7, 1]}
    assert agg.ignored == {"not_access_log": 3, "no_host": 2}
    assert agg.rejected == {"bad_size_type": 1, "invalid_json": 1, "not_object": 1}
    assert agg.total == len(lines) and agg.counted == 1
    one_by_one = Aggregator()
    for line in lines:
        one_by_one.feed_lines([line])
    assert one_by_one.to_dict() == agg.to_dict()
