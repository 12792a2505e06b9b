"""A ledger that starts inside a log (``START_AT``, or the automatic initialisation's
"now"): a never-read cursor's read asks sinceTime at the start's second, and the cursor it
leaves must not send the next read to an earlier second, whose lines the first read never
saw (a review found them taken for new lines, and the first read's lines billed again).

Reads follow the Fetcher's rule (``since = cursor.floor_ns or start_at``) and the
kubelet's: sinceTime truncated to whole seconds, each line stamped before it dropped
(``(*logWriter).write`` in pkg/kubelet/kuberuntime/logs/logs.go)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import app.fetching as fetching
from app.fetching import consume
from app.model import Cursor
from tests.unit.test_fetching import BASE, CID, DOMAIN, NS, access, prefix

MS = 1_000_000


@pytest.fixture(params=[1, 10**9], ids=["batch path", "line walk"])
def path(request, monkeypatch):
    monkeypatch.setattr(fetching, "FAST_BATCH_MIN", request.param)


def served(log: list[tuple[int, bytes]], since_ns: int, upto: int | None = None) -> bytes:
    """What the kubelet sends of the first ``upto`` lines from ``since_ns``'s second."""
    since = since_ns // NS * NS
    return b"".join(raw for t, raw in log[:upto] if t >= since)


def billed(*results) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for res in results:
        for sub, sums in res.agg.subdomains.items():
            out[sub] = [a + b for a, b in zip(out.get(sub, [0, 0, 0]), sums, strict=True)]
    return out


def test_a_second_read_does_not_go_back_before_the_first_reads_second(path):
    start_at = BASE + 5437 * MS
    log = [(t, prefix(t) + text + b"\n") for t, text in [
        (BASE + 4700 * MS, access("x", 1, 1)),  # before the start: never billed
        (BASE + 5200 * MS, access("x", 2, 2)),  # before the start, in its second
        (BASE + 5500 * MS, access("a", 10, 100)),
        (BASE + 5600 * MS, access("a", 20, 200)),
    ]]
    first = consume([served(log, start_at)], Cursor(CID, 0, 0), start_at, 1 << 30, DOMAIN)
    assert billed(first) == {"a": [30, 300, 2]}
    assert first.cursor.floor_ns == BASE + 5 * NS  # not 04.6 (H - the window)
    second = consume([served(log, first.cursor.floor_ns)], first.cursor, start_at, 1 << 30, DOMAIN)
    assert (billed(second), second.gap_from_ns, second.late) == ({}, None, 0)


def test_a_first_read_of_unreadable_stamps_only_leaves_a_cursor_that_encodes(path):
    # Such a line takes the stamp of the line before it, 0 in a first read: the floor
    # stays at most the highest stamp (a cursor's encoding needs floor <= high).
    start_at = BASE + 5437 * MS
    res = consume([b"not a stamp " + access("a", 1, 1) + b"\n"], Cursor(CID, 0, 0), start_at, 1 << 30, DOMAIN)
    assert res.consumed == 1 and res.cursor.floor_ns <= res.cursor.high_ns
    assert Cursor.decode(res.cursor.encode()) == res.cursor


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), start_ms=st.integers(0, 4000), window_ms=st.sampled_from([1, 400, 1000, 2000]))
def test_reads_from_a_start_inside_the_log_bill_each_line_after_it_once(seed, start_ms, window_ms):
    rng = random.Random(seed)
    window = window_ms * MS
    t = BASE
    log: list[tuple[int, bytes]] = []
    for _ in range(rng.randint(1, 40)):
        t += rng.choice([0, 1, 50, 300, 700]) * MS
        log.append((t, prefix(t) + access(rng.choice("ab"), rng.randrange(100), rng.randrange(1000)) + b"\n"))
    start_at = BASE + start_ms * MS
    truth: dict[str, list[int]] = {}
    for stamp_, raw in log:
        if stamp_ >= start_at:
            sums = fetching.Aggregator(DOMAIN)
            sums.feed_lines([raw[raw.index(b" ") + 1:-1]])
            for sub, v in sums.subdomains.items():
                truth[sub] = [a + b for a, b in zip(truth.get(sub, [0, 0, 0]), v, strict=True)]
    cursor = Cursor(CID, 0, 0)
    results = []
    written = 0
    while written < len(log) or len(results) < 3:  # the log grows between reads; then quiet reads
        written = min(len(log), written + rng.randint(0, 6))
        res = consume([served(log, cursor.floor_ns or start_at, written)], cursor, start_at, 1 << 30, DOMAIN,
                      window_ns=window)
        results.append(res)
        cursor = res.cursor
        if written == len(log):
            results.append(consume([served(log, cursor.floor_ns or start_at)], cursor, start_at, 1 << 30, DOMAIN,
                                   window_ns=window))
            break
    assert billed(*results) == truth
