"""Regenerate ``sample.log`` and ``sample.expected.json`` (needs the real Traefik binary).

    .venv/bin/python tests/data/make_sample.py

``sample.log`` is the real stdout of Traefik 3.7 (its own text log lines with ANSI
colours and multi-line messages, and its JSON access lines) while ``LoadGen`` sent its
mix and a few WebSocket sessions went through it (unmetered: status 0, both sizes 0),
with synthetic lines inserted at seeded random places: a Traefik v2.11-shaped
line, lines with absent fields, CLF lines, Traefik JSON log lines, truncated JSON, wrong
types, invalid UTF-8, a blank line, a CRLF line, a 70 KB line (counted: over-long means
over 16 MiB, see tests/unit/test_scan.py for that), the pieces of a 40 KB line split at
16 KiB as the kubelet hands them on (``split_line``, and the old kubelet's stamp inside a
string, which still parses), a status-101 upgrade; the file does not end with a newline.

The expected ``scan --json`` output is *not* produced by the parser under test:

- per-tunnel totals = the load generator's client-side truth (bytes it sent and
  received), one request per WebSocket session, plus the totals written down for the
  synthetic lines;
- unmetered = the WebSocket sessions the client opened per tunnel, checked against an
  independent reading of the real lines (status 0, both sizes 0), plus the synthetic
  upgrade;
- line counts = an independent classification of the real lines (``json`` and a
  regular expression, below) plus the reason written down for each synthetic line.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from sim.loadgen import LoadGen  # noqa: E402
from sim.traefik import TraefikProcess  # noqa: E402
from sim.ws import WebSocketClient  # noqa: E402

DOMAIN = "t.lum.tools"
SEED = 2026
# WebSocket sessions sent through Traefik: host, frames of 1000 bytes echoed.
WS_SESSIONS = [("alpha.t.lum.tools", 3), ("Charlie.T.LUM.TOOLS:8080", 1), ("alpha.t.lum.tools", 0),
               ("example.com", 2)]
PIECE = 16 * 1024  # containerd's max_container_log_line_size
TUNNEL_RE = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.t\.lum\.tools")


# Traefik v2.11 logs ServiceURL as Go's url.URL struct, not as a string.
V211_SERVICE_URL = {
    "ForceQuery": False,
    "Fragment": "",
    "Host": "10.42.1.7:8080",
    "OmitHost": False,
    "Opaque": "",
    "Path": "",
    "RawFragment": "",
    "RawPath": "",
    "RawQuery": "",
    "Scheme": "http",
    "User": None,
}


def v211_line(host: str, size_in: int, size_out: int) -> bytes:
    entry = {
        "ClientAddr": "10.0.3.4:51234",
        "ClientHost": "10.0.3.4",
        "ClientPort": "51234",
        "ClientUsername": "-",
        "DownstreamContentSize": size_out,
        "DownstreamStatus": 200,
        "Duration": 2345678,
        "OriginContentSize": size_out,
        "OriginDuration": 2200000,
        "OriginStatus": 200,
        "Overhead": 145678,
        "RequestAddr": host,
        "RequestContentSize": size_in,
        "RequestCount": 77,
        "RequestHost": host,
        "RequestMethod": "POST",
        "RequestPath": "/upload",
        "RequestPort": "-",
        "RequestProtocol": "HTTP/1.1",
        "RequestScheme": "https",
        "RetryAttempts": 0,
        "RouterName": "tunnels@kubernetescrd",
        "ServiceAddr": "10.42.1.7:8080",
        "ServiceName": "tunnels-gateway-80@kubernetescrd",
        "ServiceURL": V211_SERVICE_URL,
        "StartLocal": "2026-11-24T02:52:57.945505791Z",
        "StartUTC": "2026-11-24T02:52:57.945505791Z",
        "entryPointName": "websecure",
        "level": "info",
        "msg": "",
        "time": "2026-11-24T02:52:57Z",
    }
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def synthetic() -> list[tuple[bytes, str | tuple[str, int, int]]]:
    """(line, expected): expected is a reason, or (tunnel, bytes_in, bytes_out)."""
    base = json.loads(v211_line("legacy.t.lum.tools", 1, 2))
    no_in = dict(base, RequestHost="absent-in.t.lum.tools")
    del no_in["RequestContentSize"]
    no_sizes = dict(base, RequestHost="ABSENT-BOTH.T.LUM.TOOLS")
    del no_sizes["RequestContentSize"], no_sizes["DownstreamContentSize"]
    no_host = dict(base)
    del no_host["RequestHost"], no_host["RequestAddr"]

    def dump(entry: dict) -> bytes:
        return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()

    good = v211_line("legacy.t.lum.tools", 4096, 123456)
    # A 40 KB line cut by the runtime at 16 KiB, as kubelets hand it on (app/parser.py,
    # split_line): 1.26+ glues a stderr line between two pieces to the first one and starts
    # a line with the next; before 1.26 each piece's stamp lands inside the line (here in
    # the middle of RequestPath: the line still parses, and is billed).
    split = v211_line("split.t.lum.tools", 7, 8).replace(b'"RequestPath":"/upload"',
                                                         b'"RequestPath":"/' + b"s" * 40_000 + b'"')
    stderr_line = b"\x1b[90m2026-11-24T03:11:54Z\x1b[0m \x1b[32mINF\x1b[0m Something on stderr"
    upgraded = json.loads(v211_line("legacy.t.lum.tools", 0, 0))
    upgraded.update(DownstreamStatus=101, OriginStatus=101, RequestMethod="GET", request_Upgrade="websocket")
    return [
        (split[:PIECE] + stderr_line, "split_line"),
        (split[PIECE:], "split_line"),  # the later pieces, re-joined
        (split[:PIECE] + b"2026-11-24T03:11:54.123456789Z " + split[PIECE:], ("split", 7, 8)),
        (dump(upgraded), ("legacy", 0, 0, True)),
        (good, ("legacy", 4096, 123456)),
        (v211_line("Legacy.T.Lum.Tools.", 10, 20), ("legacy", 10, 20)),
        (dump(no_in), ("absent-in", 0, 2)),
        (dump(no_sizes), ("absent-both", 0, 0)),
        (dump(no_host), "no_host"),
        (v211_line("crlf.t.lum.tools", 5, 6) + b"\r", ("crlf", 5, 6)),
        (
            b'10.0.0.9 - - [24/Nov/2026:03:12:03 +0000] "GET /a HTTP/1.1" 200 10 "-" "curl/8.11.0" '
            b'12 "tunnel@file" "http://127.0.0.1:8080" 1ms',
            "clf_no_host",
        ),
        (
            b'10.0.0.9 - alice [24/Nov/2026:03:12:04 +0000] "POST /b?x=\\"y\\" HTTP/2.0" 404 19 '
            b'"https://ref.example/" "Mozilla/5.0 (X11)" 13 "-" "-" 0ms',
            "clf_no_host",
        ),
        (
            b'{"level":"info","msg":"Starting provider *file.Provider","providerName":"file",'
            b'"time":"2026-11-24T03:11:53Z"}',
            "not_access_log",
        ),
        (b"", "not_access_log"),
        (b"   \t", "not_access_log"),
        (good[:200], "invalid_json"),
        (good[: good.rfind(b",")], "invalid_json"),
        (
            good.replace(b'"RequestContentSize":4096', b'"RequestContentSize":"4096"'),
            "bad_size_type",
        ),
        (
            good.replace(b'"DownstreamContentSize":123456', b'"DownstreamContentSize":123456.0'),
            "bad_size_type",
        ),
        (
            good.replace(b'"DownstreamContentSize":123456', b'"DownstreamContentSize":null'),
            "bad_size_type",
        ),
        (good.replace(b'"RequestContentSize":4096', b'"RequestContentSize":-1'), "negative_size"),
        (
            good.replace(
                b'"DownstreamContentSize":123456', b'"DownstreamContentSize":9223372036854775808'
            ),
            "size_too_large",
        ),
        (
            good.replace(b'"RequestHost":"legacy.t.lum.tools"', b'"RequestHost":null'),
            "bad_host_type",
        ),
        (good.replace(b'"RequestPath":"/upload"', b'"RequestPath":"/\xff\xfe"'), "invalid_utf8"),
        (b'[{"RequestHost":"legacy.t.lum.tools","DownstreamContentSize":1}]', "not_object"),
        (  # a 70 KB line: request heads up to 1 MiB are legitimate, so it is billed
            good.replace(b'"RequestPath":"/upload"', b'"RequestPath":"/' + b"a" * 70_000 + b'"'),
            ("legacy", 4096, 123456),
        ),
        (dump(dict(base, RequestHost="evilt.lum.tools")), "other_host"),
        (dump(dict(base, RequestHost="legacy.t.lum.tools.evil.com")), "other_host"),
        (dump(dict(base, RequestHost="a.legacy.t.lum.tools")), "not_a_tunnel"),
    ]


def classify_real(line: bytes) -> str | tuple[str, int, int, bool]:
    """Independent oracle for a line of Traefik's real output (well-formed); a tunnel's
    line says whether it is an upgraded connection (Traefik logs status 0, sizes 0)."""
    if not line.startswith(b"{"):
        return "not_access_log"
    entry = json.loads(line)
    host = entry.get("RequestHost")
    if host is None:
        return "no_host"
    host = re.sub(r":[0-9]*$", "", host.lower()).removesuffix(".")
    match = TUNNEL_RE.fullmatch(host)
    if match:
        sizes = (entry["RequestContentSize"], entry["DownstreamContentSize"])
        return (match.group(1), *sizes, entry["DownstreamStatus"] == 0 and sizes == (0, 0))
    return "not_a_tunnel" if host == DOMAIN or host.endswith("." + DOMAIN) else "other_host"


def main() -> None:
    with TraefikProcess(DOMAIN) as traefik:
        gen = LoadGen(traefik.port, DOMAIN, tunnels=["alpha", "bravo-2", "charlie"], seed=SEED)
        gen.run(n_requests=150, duration=120)
        assert gen.errors == 0, gen.errors
        truth = gen.truth
        websockets: dict[str, int] = {}
        for host, frames in WS_SESSIONS:
            with WebSocketClient.connect("127.0.0.1", traefik.port, host=host) as client:
                for _ in range(frames):
                    assert client.echo(b"w" * 1000) == b"w" * 1000
            sub = TUNNEL_RE.fullmatch(host.lower().split(":")[0])
            if sub:  # one request of 0 bytes, and one unmetered connection
                _add(truth, sub.group(1), 0, 0)
                websockets[sub.group(1)] = websockets.get(sub.group(1), 0) + 1

        def access_count(lines: list[bytes]) -> int:
            return sum(line.startswith(b"{") for line in lines)

        sent = gen.sent + len(WS_SESSIONS)
        real = traefik.wait_for_lines(lambda ls: access_count(ls) >= sent, timeout=30)

    rng = random.Random(SEED)
    # (line, expected, synthetic?)
    items = [(line, classify_real(line), False) for line in real]
    # The oracle must agree with the client's truth on the real lines.
    oracle: dict[str, dict[str, int]] = {}
    oracle_upgraded: dict[str, int] = {}
    for _, expected, _ in items:
        if isinstance(expected, tuple):
            _add(oracle, *expected[:3])
            if expected[3]:
                oracle_upgraded[expected[0]] = oracle_upgraded.get(expected[0], 0) + 1
    assert oracle == truth, (oracle, truth)
    assert oracle_upgraded == websockets, (oracle_upgraded, websockets)

    for line, expected in synthetic():
        items.insert(rng.randrange(len(items) + 1), (line, expected, True))
    # The file ends without a newline: its last line must still count.
    items.append((v211_line("alpha.t.lum.tools", 1, 1), ("alpha", 1, 1), True))

    subdomains = {name: dict(totals) for name, totals in truth.items()}
    unmetered = dict(websockets)
    ignored: dict[str, int] = {}
    rejected: dict[str, int] = {}
    counted = 0
    for _, expected, is_synthetic in items:
        if isinstance(expected, tuple):
            counted += 1
            if is_synthetic:  # the real lines are in the client's truth already
                _add(subdomains, *expected[:3])
                if expected[3:] == (True,):
                    unmetered[expected[0]] = unmetered.get(expected[0], 0) + 1
        elif expected in IGNORED:
            ignored[expected] = ignored.get(expected, 0) + 1
        else:
            rejected[expected] = rejected.get(expected, 0) + 1

    (HERE / "sample.log").write_bytes(b"\n".join(line for line, _, _ in items))
    result = {
        "subdomains": dict(sorted(subdomains.items())),
        "lines": {
            "total": len(items),
            "counted": counted,
            "ignored": dict(sorted(ignored.items())),
            "rejected": dict(sorted(rejected.items())),
        },
        "unmetered": dict(sorted(unmetered.items())),
    }
    (HERE / "sample.expected.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"sample.log: {len(items)} lines; expected: {result['lines']}")


IGNORED = {"other_host", "not_a_tunnel", "no_host", "not_access_log", "clf_no_host"}


def _add(totals: dict[str, dict[str, int]], name: str, bytes_in: int, bytes_out: int) -> None:
    slot = totals.setdefault(name, {"bytes_in": 0, "bytes_out": 0, "requests": 0})
    slot["bytes_in"] += bytes_in
    slot["bytes_out"] += bytes_out
    slot["requests"] += 1


if __name__ == "__main__":
    main()
