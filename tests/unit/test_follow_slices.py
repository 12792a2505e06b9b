"""``follow._Stream._slice`` joins the chunks waiting in the queue up to ``JOIN_BYTES`` and
still reports the stream's end (eof / broken / stopped) found while joining; the bytes of
all slices are the stream's bytes, in order, whatever the timing; and ``quiet()`` is never
true while the counting thread holds chunks (a probe dates what it records from the
lease's QUIET). Written by the fifth review of the follower."""

from __future__ import annotations

import queue
import random
import threading
import time
from types import SimpleNamespace

import pytest

from app import follow
from app.follow import JOIN_BYTES, QUEUED_CHUNKS, _End, _read, _Stream


def a_stream(slice_seconds: float = 0.3) -> _Stream:
    return _Stream(SimpleNamespace(slice_seconds=slice_seconds), "pod", "uid", "tok")


def drain_slices(s: _Stream, chunks: queue.Queue, max_slices: int = 1000):
    """Slices as _consume takes them, until one ends the stream."""
    out = []
    s.ended = ""
    n = 0
    while not s.ended and n < max_slices:
        out.append(list(s._slice(chunks)))
        n += 1
    return out


@pytest.mark.parametrize("reason", ["eof", "broken"])
def test_end_found_while_joining_is_reported(reason):
    q: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
    for c in (b"a\n", b"b\n", b"c\n"):
        q.put(c)
    q.put(_End(reason))
    s = a_stream()
    got = list(s._slice(q))
    assert got == [b"a\nb\nc\n"]
    assert s.ended == reason


def test_end_found_while_joining_after_stop_says_stopped():
    q: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
    q.put(b"a\n")
    q.put(b"b\n")
    q.put(_End("broken"))
    s = a_stream()
    s._stopped.set()
    assert list(s._slice(q)) == [b"a\nb\n"]
    assert s.ended == "stopped"


def test_end_alone_after_one_chunk():
    q: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
    q.put(b"a\n")
    q.put(_End("eof"))
    s = a_stream()
    assert list(s._slice(q)) == [b"a\n"]
    assert s.ended == "eof"


def test_join_stops_at_join_bytes_and_end_after_a_full_join():
    big = b"x" * (JOIN_BYTES // 2 + 10) + b"\n"
    q: queue.Queue = queue.Queue()
    for _ in range(3):
        q.put(big)
    q.put(_End("eof"))
    s = a_stream()
    got = list(s._slice(q))
    assert got == [big + big, big]
    assert s.ended == "eof"


@pytest.mark.parametrize("seed", range(20))
def test_slices_of_a_live_reader_give_the_stream_and_its_end(seed):
    """A real _read thread filling the bounded queue with random chunks at random times,
    then ending (eof or broken); slices of 50 ms. Every byte once, in order, and the end
    reason."""
    rng = random.Random(seed)
    pieces = [bytes([65 + i % 26]) * rng.choice([1, 10, 1000, 70_000, 300_000]) for i in range(rng.randint(1, 40))]
    broken = rng.random() < 0.5

    class FakeFollow:
        what = "fake"

        def chunks(self):
            for p in pieces:
                if rng.random() < 0.2:
                    time.sleep(rng.choice([0.0, 0.01, 0.06]))
                yield p
            if broken:
                from app.errors import KubeUnavailable
                raise KubeUnavailable("gone")

    q: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
    t = threading.Thread(target=_read, args=(FakeFollow(), q, lambda: None), daemon=True)
    t.start()
    s = a_stream(0.05)
    out = drain_slices(s, q)
    t.join(5)
    assert b"".join(b"".join(x) for x in out) == b"".join(pieces)
    assert s.ended == ("broken" if broken else "eof")
    assert all(len(c) <= JOIN_BYTES + max(len(p) for p in pieces) for x in out for c in x)


def test_idle_is_reported():
    q: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
    s = a_stream(0.05)
    s.last_byte = time.monotonic() - follow.IDLE_RELEASE - 1
    assert list(s._slice(q)) == []
    assert s.ended == "idle"


class _HookedQueue(queue.Queue):
    """A queue that runs ``hook`` right after each item is taken (what another thread,
    the lease renewer, may see at that instant)."""

    def __init__(self, hook):
        super().__init__()
        self.hook = hook

    def get(self, *a, **kw):
        item = super().get(*a, **kw)
        self.hook()
        return item

    def get_nowait(self):
        item = super().get_nowait()
        self.hook()
        return item


def test_quiet_is_false_while_the_counting_thread_holds_chunks():
    """follow._Stream.quiet() (read by the renewer thread, no lock) after an idle spell:
    between the counting thread taking chunks (get, then the join's get_nowait) and its
    ``self.last_byte = time.monotonic()``, the queue is empty, last_byte is old and
    committed_at is after it: QUIET with uncommitted chunks in hand. The window exists
    before dbc242a too (get, then last_byte); the join widens it. With 006c2ac a probe
    then records the pod up to that renewal - 2.5 s, past the held lines if they were
    written more than 2.5 s before (a stream delivering late): amendments, not a loss."""
    s = a_stream(1.0)  # FETCH_MIN_INTERVAL: quiet() asks for 1 s without a byte
    now = time.monotonic()
    s.last_byte, s.committed_at = now - 5, now - 4  # idle for 5 s, all committed
    seen: list[bool] = []
    q = _HookedQueue(lambda: seen.append(s.quiet(time.monotonic())))  # the renewer's look, at that instant
    s.chunks = q
    q.put(b"a\n")
    q.put(b"b\n")
    assert next(s._slice(q)) == b"a\nb\n"  # the first (joined) chunk of the slice
    assert not any(seen), f"quiet() seen by the renewer while chunks were in hand: {seen}"
