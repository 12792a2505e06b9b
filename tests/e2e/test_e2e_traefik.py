"""End to end with real Traefik: Traefik processes behind the fake Kubernetes API, real
HTTP and WebSocket traffic, the whole pipeline. Each pod log holds both of Traefik's
streams as containerd captures them: stdout (the access log) and stderr (Traefik's own
log, at INFO, kept busy by a failing health check) read by separate readers, each line
stamped when read, merged in arrival order. The platform must receive exactly the bodies
the clients sent and received, per tunnel; WebSocket sessions are billed as requests of
0 bytes and counted as unmetered."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from sim.demo import TraefikFleet
from sim.procs import wait_until
from sim.ws import WebSocketClient
from tests.e2e.test_traefik_real import _send_counted

pytestmark = [pytest.mark.traefik, pytest.mark.slow]


def _inversions(kube, names: list[str]) -> int:
    """Adjacent lines of a pod log whose stamps go backwards in file order (a line of one
    stream written after a line of the other stamped later)."""
    count = 0
    for name in names:
        stamps = [ts for ts, _ in kube.log_lines(name)]
        count += sum(b < a for a, b in zip(stamps, stamps[1:], strict=False))
    return count


def _both_streams_read_once(pipeline, fleet: TraefikFleet) -> dict[str, int]:
    streams = fleet.stream_lines()
    stats = pipeline.ledger.stats()
    assert streams["stderr"] > 0, "Traefik wrote nothing on stderr"
    assert stats["lines_read"] == streams["stdout"] + streams["stderr"]  # every line of both, once
    # Traefik's own log is all on stderr, and every line of it is not an access line.
    assert stats["ignored:not_access_log"] == streams["stderr"]
    for proc in fleet.procs.values():
        assert "--log.level=INFO" in proc.command and "--log.filePath=/dev/stderr" in proc.command
    return streams


def test_real_traefik_restart_midway_delivers_exact_totals(pipeline, kube):
    pipeline.init_ledger()
    fleet = TraefikFleet(kube, pods=3, rate=15, seed=7)
    try:
        fleet.start()
        pipeline.worker()
        pipeline.beat()
        wait_until(lambda: sum(load.completed for load in fleet.loads) >= 100, 60, what="traffic")
        fleet.restart("traefik-1")
        done = sum(load.completed for load in fleet.loads)
        wait_until(lambda: sum(load.completed for load in fleet.loads) >= done + 100, 60, what="more traffic")
        fleet.stop_load()
        fleet.stop_traefik()  # the busy own log never pauses: stop it so the logs end
        started = time.monotonic()
        pipeline.wait_quiescent(fleet.names, timeout=90)
        assert time.monotonic() - started < 90
        assert fleet.errors() == 0, "a request failed on the client side: its truth is unknown"
        truth = fleet.truth()
        assert truth and pipeline.delivered() == truth
        assert pipeline.ledger.unmetered() == fleet.unmetered()  # WebSocket sessions, per tunnel
        assert pipeline.ledger.gaps() == []
        stats = pipeline.ledger.stats()
        assert stats["ignored:other_host"] > 0 and stats["ignored:not_access_log"] > 0
        streams = _both_streams_read_once(pipeline, fleet)
        inversions = _inversions(kube, fleet.names)
        print(f"\nstdout {streams['stdout']} lines, stderr {streams['stderr']} lines, "
              f"stamps out of order across the streams: {inversions}, WebSocket sessions {fleet.unmetered()}")
        assert inversions > 0, "no line of one stream landed after a later-stamped line of the other"
    finally:
        fleet.stop()


def test_websocket_session_closed_by_the_test_is_unmetered(pipeline, kube):
    """One Traefik pod with its ordinary mix (no WebSocket in it), a WebSocket session to
    alpha that the test opens, uses and closes, and a PUT with a 70,000-character URL and
    a 5 MB body read in full by the backend (sent as tests/e2e/test_traefik_real.py sends
    it): alpha gets one more request of 0 bytes and one unmetered connection; every other
    total is the clients' own."""
    pipeline.init_ledger()
    fleet = TraefikFleet(kube, pods=1, rate=20, seed=11, websocket_share=0.0)
    try:
        fleet.start()
        pipeline.worker()
        pipeline.beat()
        port = fleet.procs["traefik-0"].port
        wait_until(lambda: fleet.loads[0].completed >= 30, 60, what="traffic")
        with WebSocketClient.connect("127.0.0.1", port, host="Alpha.T.LUM.TOOLS:443", path="/chat?room=1") as ws:
            for size in (10, 1000, 70_000):
                assert ws.echo(b"m" * size) == b"m" * size
            moved = ws.sent + ws.received
        assert moved == 2 * 71_010
        pad = ("a&b<c>" * 12_000)[:70_000]
        upload = b"u" * 5_000_000
        status, out, read = _send_counted(port, "acme.t.lum.tools", "PUT", "/upload?pad=" + pad, upload, 7)
        assert (status, out, read) == (200, 7, len(upload))
        wait_until(lambda: fleet.loads[0].completed >= 60, 60, what="more traffic")
        fleet.stop_load()
        fleet.stop_traefik()
        pipeline.wait_quiescent(fleet.names, timeout=90)
        assert fleet.errors() == 0

        truth = fleet.truth()
        assert fleet.unmetered() == {}
        expected = {sub: dict(totals) for sub, totals in truth.items()}
        expected.setdefault("alpha", {"bytes_in": 0, "bytes_out": 0, "requests": 0})["requests"] += 1
        expected["acme"] = {"bytes_in": len(upload), "bytes_out": 7, "requests": 1}
        assert pipeline.delivered() == expected
        assert pipeline.ledger.unmetered() == {"alpha": 1}
        stats = pipeline.ledger.stats()
        assert stats["unmetered_requests"] == 1 and "rejected:split_line" not in stats
        # The report record of alpha's interval keeps the count; the platform never saw it.
        reports = [pipeline.ledger.report(key) for key in pipeline.ledger.report_keys()]
        assert sum(rep.unmetered for rep in reports if rep.subdomain == "alpha") == 1
        assert all(set(rec.body) == {"subdomain", "bytes_in", "bytes_out", "requests", "timestamp"}
                   for rec in pipeline.platform.records)  # the contract's body, unchanged
        _both_streams_read_once(pipeline, fleet)

        status_doc = json.loads(subprocess.run(
            [sys.executable, "-m", "app", "status", "--json"], env=pipeline.env, capture_output=True, text=True,
            timeout=60, check=True).stdout)
        assert status_doc["unmetered"] == {"alpha": 1}
    finally:
        fleet.stop()
