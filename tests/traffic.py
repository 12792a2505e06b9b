"""Realistic Traefik v3 JSON access-log lines for pipeline tests, with ground truth."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict


def _rfc3339_nano(t_ns: int) -> str:
    """UTC, nanoseconds always written (Traefik's ``StartUTC`` trims trailing zeros; the
    parser reads both)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_ns // 10**9)) + f".{t_ns % 10**9:09d}Z"


WRITTEN_NS = 1_795_485_022_124_656_789  # StartUTC 2026-11-24T01:50:22.123456789Z, time 2026-11-24T01:50:22Z


class Traffic:
    """Makes access lines for a few tunnels and other hosts, and keeps the truth:
    per tunnel, the request and response body bytes and the request count."""

    def __init__(self, seed: int = 1, tunnels: int = 5, domain: str = "t.lum.tools",
                 written_ns: int | None = WRITTEN_NS) -> None:
        """``written_ns``: the time (epoch ns) every line says it was written; None: when
        it is made. The default is a fixed time (the kubelet's stamp, not the line's own
        time, places a line read from a pod); the file source places a line at its own
        time (StartUTC + Duration), so its tests take None: a fixed time falls out of
        INTERVAL_RETENTION (7 days) and would no longer be reported."""
        self.written_ns = written_ns
        self.rng = random.Random(seed)
        self.domain = domain
        self.tunnels = [f"tun-{i}" for i in range(tunnels)]
        self.truth: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.seq = 0
        self.made: list[tuple[str | None, int, int]] = []  # (tunnel or None, bytes in, bytes out) per line

    def line(self, sub: str | None = None) -> bytes:
        """One access line; ``sub`` None picks at random, with some other hosts."""
        rng = self.rng
        self.seq += 1
        if sub is None:
            sub = rng.choice(self.tunnels) if rng.random() < 0.8 else None
        host = f"{sub}.{self.domain}" if sub else rng.choice(["example.com", "api.lum.tools", "a.b." + self.domain])
        if sub and rng.random() < 0.2:
            host = host.upper()
        bi = rng.choice([0, 0, rng.randrange(1, 5000)])
        bo = rng.randrange(0, 100_000)
        self.made.append((sub, bi, bo))
        if sub:
            t = self.truth[sub]
            t[0] += bi
            t[1] += bo
            t[2] += 1
        # As Traefik stamps a line: StartUTC is the request's start, Duration (1.2 ms)
        # before it was written; "time" the second it was written.
        written = time.time_ns() if self.written_ns is None else self.written_ns
        start = _rfc3339_nano(written - 1_200_000)
        entry = {
            "ClientAddr": "10.0.0.7:51234", "ClientHost": "10.0.0.7", "ClientPort": "51234", "ClientUsername": "-",
            "DownstreamContentSize": bo, "DownstreamStatus": 200, "Duration": 1_200_000,
            "OriginContentSize": bo, "OriginDuration": 1_000_000, "OriginStatus": 200, "Overhead": 200_000,
            "RequestAddr": host, "RequestContentSize": bi, "RequestCount": self.seq, "RequestHost": host,
            "RequestMethod": "POST" if bi else "GET", "RequestPath": f"/p/{self.seq}", "RequestPort": "-",
            "RequestProtocol": "HTTP/1.1", "RequestScheme": "http", "RetryAttempts": 0,
            "RouterName": "tunnels@file", "ServiceAddr": "10.0.1.2:8080", "ServiceName": "tunnels@file",
            "ServiceURL": "http://10.0.1.2:8080", "StartLocal": start,
            "StartUTC": start, "entryPointName": "web", "level": "info",
            "msg": "", "time": _rfc3339_nano(written // 10**9 * 10**9).replace(".000000000", ""),
        }
        return json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()

    def lines(self, n: int) -> list[bytes]:
        return [self.line() for _ in range(n)]

    def merged(self, *others: Traffic) -> dict[str, dict[str, int]]:
        total: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for t in (self, *others):
            for sub, (bi, bo, rq) in t.truth.items():
                total[sub][0] += bi
                total[sub][1] += bo
                total[sub][2] += rq
        return {s: {"bytes_in": v[0], "bytes_out": v[1], "requests": v[2]} for s, v in total.items()}

    def expected(self) -> dict[str, dict[str, int]]:
        return self.merged()

    def first(self, n: int) -> Traffic:
        """A Traffic holding the truth of only the first ``n`` lines made."""
        part = Traffic(tunnels=0)
        for sub, bi, bo in self.made[:n]:
            if sub:
                t = part.truth[sub]
                t[0] += bi
                t[1] += bo
                t[2] += 1
        return part


TRAEFIK_TEXT = b'\x1b[90m2026-11-24T01:50:22Z\x1b[0m \x1b[32mINF\x1b[0m Starting provider *file.Provider'
