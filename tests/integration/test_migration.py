"""Migration from the processing-time ledger (docs/design.md, "Sealing", "Migration").

The previous version's ``commit.lua`` and ``seal.lua`` (taken from git: the commit before
event time) run on the same ledger as the new ones, as old and new workers do during a
rolling update: every line is counted once, no report key is made twice, an original is
never changed once made, and per (interval, tunnel) the originals plus amendments are
exactly what was committed there.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from app.ledger import Ledger, Partial, cursor_digest
from app.model import CommitStatus, ReportKey, ReportState

ROOT = Path(__file__).resolve().parents[2]
# The last commit before event-time intervals (its parent is processing-time throughout).
PRE11 = "eef8d93^"
RI = 60
FIELD = "uid-1/traefik"


def old_script(r, name: str):
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{PRE11}:app/lua/{name}"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:  # a checkout without history cannot run this test
        pytest.fail(f"cannot read the previous version's {name} from git: {e}")
    assert "TIME" in text
    return r.register_script(text)


class Old:
    """The previous version's scripts, called as its Ledger called them."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self.commit_ = old_script(led.r, "commit.lua")
        self.seal_ = old_script(led.r, "seal.lua")

    def commit(self, expected: str, new: str, partial: dict[str, list[int]]) -> int:
        led = self.led
        args: list[object] = [led.p, FIELD, cursor_digest(expected), new, RI, len(partial)]
        for sub, counts in partial.items():
            args += [sub, *counts]
        args += [0, 0]
        keys = [led.k("init"), led.k("cursors"), led.k("stats"), led.k("open"), led.k("sealed"), led.k("unmetered")]
        status, detail = self.commit_(keys=keys, args=args)
        assert status == b"ok", (status, detail)
        return int(detail)

    def seal(self, start: int) -> list[str]:
        led = self.led
        out = self.seal_(keys=[led.k("open"), led.k("sealed"), led.k("due")], args=[led.p, start, RI])
        return [] if out == [b"not_ended"] else [x.decode() for x in out]


def test_old_and_new_scripts_on_one_ledger_count_every_line_once_in_its_interval(r):
    led = Ledger(r, "migr", RI)
    assert led.initialise(0)
    old = Old(led)
    committed: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])

    def note(start: int, partial: dict[str, list[int]]) -> None:
        for sub, counts in partial.items():
            committed[(start, sub)] = [a + b for a, b in zip(committed[(start, sub)], counts, strict=True)]

    now = int(led.now())
    current = now - now % RI
    p2, p1 = current - 2 * RI, current - RI
    # What the old version left: P2 committed and sealed by wall clock (its reports made), P1
    # committed (by commit time), not sealed yet.
    for start, part in ((p2, {"a": [10, 100, 1]}), (p1, {"a": [20, 200, 2], "b": [1, 1, 1]})):
        for sub, (bi, bo, rq) in part.items():
            led.r.hincrby(led.k("iv", start), f"{sub}:i", bi)
            led.r.hincrby(led.k("iv", start), f"{sub}:o", bo)
            led.r.hincrby(led.k("iv", start), f"{sub}:r", rq)
        led.r.zadd(led.k("open"), {str(start): start})
        note(start, part)
    assert old.seal(p2) == ["a"]
    original = led.report(ReportKey(p2, "a"))

    # Rolling update: an old worker commits (the wall-clock interval), then a new one reads
    # the next lines (stamped in P2, P1 and now), then the old one again: one cursor chain.
    c1 = old.commit("", "cid|1|1", {"a": [1, 1, 1]})
    note(c1, {"a": [1, 1, 1]})
    parts = {p2: Partial({"a": [3, 30, 3]}), p1: Partial({"b": [4, 40, 4]}), current: Partial({"c": [5, 50, 5]})}
    res = led.commit(FIELD, "cid|1|1", "cid|2|1", counters={}, parts=parts, source="uid-1",
                     record=Ledger.read_record("cid", led.now(), 0))
    assert res.status == CommitStatus.OK and res.amendments == 1  # P2 was sealed by the old merge
    for start, part in parts.items():
        note(start, part.subdomains)
    c2 = old.commit("cid|2|1", "cid|3|1", {"b": [7, 70, 7]})
    note(c2, {"b": [7, 70, 7]})
    # A stale old commit (its cursor moved) changes nothing.
    assert old.commit_(keys=[led.k("init"), led.k("cursors"), led.k("stats"), led.k("open"), led.k("sealed"),
                             led.k("unmetered")],
                       args=[led.p, FIELD, cursor_digest("cid|2|1"), "x", RI, 1, "a", 9, 9, 9, 0, 0])[0] == b"conflict"

    # The new merge seals up to the watermark's mark (seal.lua); an old merge after it finds
    # nothing more to make, and the original the old one made is untouched.
    done = led.seal_upto(p1 + RI)
    assert done is not None and sorted(str(k) for k in done[1]) == [f"{p1}:a", f"{p1}:b"]
    assert old.seal(p1) == [] and old.seal(p2) == []
    assert led.report(ReportKey(p2, "a")) == original
    assert led.sealed_to() == p1 + RI

    # A line for P1 read now, by a new worker, is an amendment; by an old one, it would go
    # to the wall-clock interval (at or above the mark: never below it, never stranded).
    res = led.commit(FIELD, "cid|3|1", "cid|4|1", counters={}, parts={p1: Partial({"b": [1, 1, 1]})})
    assert res.amendments == 1
    note(p1, {"b": [1, 1, 1]})
    c3 = old.commit("cid|4|1", "cid|5|1", {"a": [2, 2, 2]})
    assert c3 >= led.sealed_to()
    note(c3, {"a": [2, 2, 2]})

    # Per (interval, tunnel): originals + amendments + what is still open == committed.
    got: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    keys = led.report_keys()
    assert len(keys) == len(set(keys)) and len({str(k) for k in keys}) == len(keys)
    for key in keys:
        rep = led.report(key)
        assert rep is not None and rep.state == ReportState.PENDING
        cell = got[(key.start, key.subdomain)]
        got[(key.start, key.subdomain)] = [cell[0] + rep.bytes_in, cell[1] + rep.bytes_out, cell[2] + rep.requests]
    for start in led.open_intervals(led.now() + 2 * RI):
        for sub, counts in led.interval_totals(start).items():
            got[(start, sub)] = [a + b for a, b in zip(got[(start, sub)], counts, strict=True)]
    assert dict(got) == dict(committed)
    amended = sorted(str(k) for k in keys if k.amendment)
    assert amended == sorted([f"{p1}:b:a1", f"{p2}:a:a1"])
