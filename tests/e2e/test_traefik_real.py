"""The parser against the real Traefik binary: what a client sent and received, per
tunnel, must be exactly what the parser sums from Traefik's actual stdout."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from app.fetching import consume, fmt_ns
from app.model import Cursor
from app.parser import Aggregator
from sim.loadgen import LoadGen
from sim.traefik import TraefikProcess
from sim.ws import WebSocketClient

pytestmark = pytest.mark.traefik

DOMAIN = "t.lum.tools"
TUNNELS = ["alpha", "bravo-2", "charlie", "delta-echo", "x1"]


def _access_lines(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"{") and b'"StartUTC"' in line]


@pytest.fixture(scope="module")
def traefik():
    with TraefikProcess(DOMAIN) as proc:
        yield proc


def _send(port: int, host: str, method: str = "GET", path: str = "/", body=None, size: int = 0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host, "X-Size": str(size)})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_loadgen_mix_totals_equal_client_truth_exactly(traefik):
    before = len(_access_lines(traefik.lines()))
    gen = LoadGen(traefik.port, DOMAIN, tunnels=TUNNELS, seed=7, workers=4)
    gen.run(n_requests=400, duration=120)
    assert gen.errors == 0
    assert gen.sent == gen.completed == 400
    kinds = gen.by_kind
    assert {"tunnel", "other", "no_route", "empty_host"} <= set(kinds), kinds

    lines = traefik.wait_for_lines(
        lambda ls: len(_access_lines(ls)) >= before + gen.sent, timeout=30
    )
    ours = _access_lines(lines)[before:]
    assert len(ours) == gen.sent

    agg = Aggregator(DOMAIN)
    agg.feed_lines(ours)
    result = agg.to_dict()
    assert result["subdomains"] == gen.truth
    assert agg.rejected == {}
    assert agg.counted == sum(t["requests"] for t in gen.truth.values())
    ignored = agg.ignored
    # Every request that was not for a tunnel is an ignored access line, for a reason.
    assert sum(ignored.values()) == gen.sent - agg.counted
    assert set(ignored) <= {"other_host", "not_a_tunnel", "no_host"}
    assert ignored["no_host"] == kinds["empty_host"]
    assert agg.access_lines() == gen.sent


def test_traefik_own_lines_are_not_access_log(traefik):
    lines = traefik.lines()
    own = [line for line in lines if not line.startswith(b"{")]
    assert own, "Traefik wrote no log line of its own"
    assert any(b"\x1b[" in line for line in own), "expected ANSI colour codes"
    agg = Aggregator(DOMAIN)
    agg.feed_lines(own)
    assert agg.ignored == {"not_access_log": len(own)}
    assert agg.counted == 0 and agg.rejected == {}
    # The whole stdout in one stream, as a pod log would be read.
    whole = Aggregator(DOMAIN)
    whole.feed_chunk(b"\n".join(lines) + b"\n")
    whole.finish()
    assert whole.total == len(lines)
    assert whole.ignored["not_access_log"] == len(own)


def test_real_quirks_host_case_port_and_missing_host(traefik):
    before = len(_access_lines(traefik.lines()))
    assert _send(traefik.port, "My-Tunnel.T.LUM.TOOLS:8080", size=5)[0] == 200
    assert _send(traefik.port, "quirk.t.lum.tools.", "POST", body=b"abc", size=2)[0] == 200
    assert _send(traefik.port, "")[0] == 404
    assert _send(traefik.port, "quirk.t.lum.tools", "PUT", path="/no-route/x")[0] == 404
    assert _send(traefik.port, "head.t.lum.tools", "HEAD", path="/no-route/x") == (404, b"")
    lines = traefik.wait_for_lines(lambda ls: len(_access_lines(ls)) >= before + 5, timeout=30)
    first, dotted, hostless, unrouted, head = (
        json.loads(line) for line in _access_lines(lines)[before:]
    )

    assert first["RequestHost"] == "My-Tunnel.T.LUM.TOOLS"  # case kept, port split off
    assert first["RequestPort"] == "8080"
    assert first["RequestAddr"] == "My-Tunnel.T.LUM.TOOLS:8080"
    assert first["RouterName"] == "tunnel@file"
    assert dotted["RequestHost"] == "quirk.t.lum.tools."
    assert "RequestHost" not in hostless and "RouterName" not in hostless
    assert "RouterName" not in unrouted and unrouted["DownstreamStatus"] == 404
    # Traefik's own 404 to a HEAD: logged as 19 bytes out, though the client got none.
    assert head["DownstreamContentSize"] == len(b"404 page not found\n")

    agg = Aggregator(DOMAIN)
    agg.feed_lines(_access_lines(lines)[before:])
    assert agg.to_dict()["subdomains"] == {
        "my-tunnel": {"bytes_in": 0, "bytes_out": 5, "requests": 1},
        "quirk": {"bytes_in": 3, "bytes_out": 2 + len(b"404 page not found\n"), "requests": 2},
        "head": {"bytes_in": 0, "bytes_out": len(b"404 page not found\n"), "requests": 1},
    }
    assert agg.ignored == {"no_host": 1}


def test_clf_access_lines_are_recognised():
    with TraefikProcess(DOMAIN, access_format="common") as proc:
        assert _send(proc.port, "alpha.t.lum.tools", size=10)[0] == 200
        assert _send(proc.port, "example.com", path="/no-route")[0] == 404
        lines = proc.wait_for_lines(
            lambda ls: sum(b'" 200 ' in x or b'" 404 ' in x for x in ls) >= 2
        )
    agg = Aggregator(DOMAIN)
    agg.feed_lines(lines)
    assert agg.ignored.get("clf_no_host") == 2
    assert agg.counted == 0 and agg.access_lines() == 0


def _send_counted(port: int, host: str, method: str, path: str, body: bytes, size: int) -> tuple[int, int, int]:
    """One request on its own connection (Connection: close: see sim.loadgen on Go's
    Content-Length body race); (status, body bytes received, bytes the backend read)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Host": host, "X-Size": str(size), "Connection": "close"})
        resp = conn.getresponse()
        answer = resp.read()
        return resp.status, len(answer), int(resp.getheader("X-Received") or -1)
    finally:
        conn.close()


def test_url_over_64_kib_with_a_large_body_is_billed_exactly(traefik):
    """A client padding its URL must not move traffic unbilled: a PUT to acme with a
    70,000-character URL and a 20 MB body, and an ordinary GET (100 B in, 200 B out)."""
    before = len(_access_lines(traefik.lines()))
    pad = ("a&b<c>" * 12_000)[:70_000]  # Go writes & < > as 6-byte escapes
    upload = b"u" * 20_000_000
    status, out_1, read_1 = _send_counted(traefik.port, "acme.t.lum.tools", "PUT", "/upload?pad=" + pad, upload, 2)
    assert (status, out_1, read_1) == (200, 2, len(upload))  # the backend read it all
    status, out_2, read_2 = _send_counted(traefik.port, "acme.t.lum.tools", "GET", "/", b"g" * 100, 200)
    assert (status, out_2, read_2) == (200, 200, 100)
    truth = {"acme": {"bytes_in": len(upload) + 100, "bytes_out": out_1 + out_2, "requests": 2}}
    assert truth == {"acme": {"bytes_in": 20_000_100, "bytes_out": 202, "requests": 2}}

    lines = traefik.wait_for_lines(lambda ls: len(_access_lines(ls)) >= before + 2, timeout=30)
    long_line, short_line = _access_lines(lines)[before:]
    assert len(long_line) > 3 * 70_000  # over the old 64 KiB bound, thanks to the escapes
    assert b"\\u0026" in long_line and b"\\u003c" in long_line and b"\\u003e" in long_line
    assert json.loads(long_line)["RequestPath"] == "/upload?pad=" + pad

    agg = Aggregator(DOMAIN)
    agg.feed_lines([long_line, short_line])
    assert agg.to_dict()["subdomains"] == truth
    assert agg.rejected == {}

    # The whole stdout as a stream in 64 KiB chunks, as scan reads a file.
    stream = b"\n".join(lines) + b"\n"
    whole = Aggregator(DOMAIN)
    for start in range(0, len(stream), 65_536):
        whole.feed_chunk(stream[start : start + 65_536])
    whole.finish()
    assert whole.rejected == {} and whole.subdomains["acme"] == [20_000_100, 202, 2]

    # As a worker reads it: kubelet timestamps in front, chunks as the API sends them.
    t0 = 1_795_000_000 * 1_000_000_000
    pod_log = b"".join(
        f"{fmt_ns(t0 + i * 1000)} ".encode() + line + b"\n" for i, line in enumerate([long_line, short_line])
    )
    chunks = [pod_log[i : i + 16_384] for i in range(0, len(pod_log), 16_384)]
    res = consume(chunks, Cursor("containerd://x", 0, 0), 0, 1 << 30, DOMAIN)
    assert res.consumed == 2 and res.agg.rejected == {}
    assert res.agg.to_dict()["subdomains"] == truth


def test_websocket_session_is_one_unmetered_line(traefik):
    """What Traefik 3.7 writes for a WebSocket session: nothing while it is open, then one
    line when it closes, with status 0 (a hijacked connection never gets WriteHeader) and
    both sizes 0, whatever went through. The exact line: REAL_WEBSOCKET_LINE in
    tests/unit/test_parser_pod_logs.py."""
    before = len(_access_lines(traefik.lines()))
    ws = WebSocketClient.connect("127.0.0.1", traefik.port, host="Alpha.T.LUM.TOOLS", path="/ws?x=1")
    for size in (5, 1000, 70_000):
        assert ws.echo(b"e" * size) == b"e" * size
    time.sleep(0.5)
    assert len(_access_lines(traefik.lines())) == before  # not logged while open
    ws.close()
    assert _send(traefik.port, "alpha.t.lum.tools", size=3)[0] == 200  # and an ordinary request
    lines = traefik.wait_for_lines(lambda ls: len(_access_lines(ls)) >= before + 2, timeout=30)
    session, plain = (json.loads(line) for line in _access_lines(lines)[before:])

    assert (session["DownstreamStatus"], session["OriginStatus"]) == (0, 0)
    assert (session["RequestContentSize"], session["DownstreamContentSize"], session["OriginContentSize"]) == (0, 0, 0)
    assert session["RequestMethod"] == "GET" and session["RequestPath"] == "/ws?x=1"
    assert session["RouterName"] == "tunnel@file" and session["Duration"] >= 500_000_000
    assert list(session)[-1] == "time"  # the end split_line knows a later piece by
    assert not any(key.startswith(("request_", "origin_", "downstream_")) for key in session)
    assert plain["DownstreamStatus"] == 200

    agg = Aggregator(DOMAIN)
    agg.feed_lines(_access_lines(lines)[before:])
    assert agg.to_dict()["subdomains"] == {"alpha": {"bytes_in": 0, "bytes_out": 3, "requests": 2}}
    assert agg.unmetered == {"alpha": 1}


def test_websocket_with_upgrade_headers_kept_and_the_own_log_on_stderr():
    args = ("--accesslog.fields.headers.defaultmode=drop", "--accesslog.fields.headers.names.Upgrade=keep")
    with TraefikProcess(DOMAIN, extra_args=args, own_log="stderr") as proc:
        with WebSocketClient.connect("127.0.0.1", proc.port, host="bravo.t.lum.tools") as ws:
            ws.echo(b"x" * 10)
        lines = proc.wait_for_lines(lambda ls: len(_access_lines(ls)) >= 1, timeout=30)
        stdout, stderr = proc.lines("stdout"), proc.lines("stderr")
    session = json.loads(_access_lines(lines)[0])
    assert session["request_Upgrade"] == session["origin_Upgrade"] == session["downstream_Upgrade"] == "websocket"
    assert session["DownstreamStatus"] == 0
    # Traefik's own log went to stderr alone, the access log to stdout alone.
    assert stdout == _access_lines(lines) and stderr
    assert not any(line.startswith(b"{") for line in stderr)
    agg = Aggregator(DOMAIN)
    agg.feed_lines(stdout + stderr)
    assert agg.unmetered == {"bravo": 1} and agg.ignored == {"not_access_log": len(stderr)}
