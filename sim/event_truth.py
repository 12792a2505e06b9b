"""Ground truth per (report interval, tunnel) for the event-time tests (issue 11).

The rule being checked: an access line belongs to the report interval
``[k * REPORT_INTERVAL, (k + 1) * REPORT_INTERVAL)`` (UTC, aligned to the epoch) that
holds its kubelet timestamp, i.e. the instant the container runtime's reader got the line
(containerd stamps ``time.Now()`` per line in ``redirectLogs``, pkg/cri/io/logger.go; the
fake API does the same, see ``FakeKube._stamp``). The truth here is taken from the stamps
the fake API actually gave the lines (``FakeKube.write_many`` returns it), never from the
test's own clock.

What the platform received is regrouped the same way: a report's ``timestamp`` is its
interval's end, its ``Idempotency-Key`` is ``<SCRAPER_ID>:<start>/<interval>:<sub>`` for the
original and ``...:<sub>:a<n>`` for the n-th amendment of that (interval, tunnel). Both are
checked against each other and the body (``subdomain``, ``timestamp``), so a record filed
under the wrong interval is caught, not only one with wrong sums.

- :class:`StampedMaker` / :func:`stamped_writer`: ``sim.chaos.PodWriter`` (the chaos
  run's line mix, at a rate, one kubelet stamp per batch) keeping each counted line's stamp.
- :func:`truth_cells`: lines written, per (interval start, tunnel): bytes in, bytes out,
  requests.
- :func:`delivered`: the platform stub's records parsed into :class:`Delivered`;
  :func:`platform_cells` sums them per (interval start, tunnel), originals plus amendments.
- :func:`diff` and :func:`table`: what differs, and a per-interval table for a report.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sim.chaos import LineMaker, PodWriter
from sim.fake_kube import NS_PER_S, FakeKube
from sim.platform_stub import Attempt, Record

Cell = tuple[int, str]  # (interval start, epoch seconds; tunnel subdomain)
Sums = tuple[int, int, int]  # (bytes_in, bytes_out, requests)

_KEY = re.compile(
    r"^(?P<scraper>.+):(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)/(?P<interval>\d+):(?P<sub>[^:]+)(?::a(?P<n>[1-9]\d*))?$"
)


def interval_of(stamp_ns: int, interval: int) -> int:
    """Start (epoch s) of the report interval holding a kubelet stamp (epoch ns):
    ``floor(t / interval) * interval``, in integers so no float rounds a line across."""
    return stamp_ns // (interval * NS_PER_S) * interval


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso_z: str) -> int:
    return int(datetime.strptime(iso_z, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def _naive_utc(text: str) -> datetime | None:
    """The contract's ``timestamp`` (``2025-12-07T12:00:00.000000``, UTC without a zone)."""
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


# Writers that keep the stamp of every line ---------------------------------------------


class StampedMaker(LineMaker):
    """``LineMaker`` that also keeps, for every tunnel line counted, the kubelet stamp
    its batch got: ``stamped`` is a list of (stamp ns, tunnel, bytes in, bytes out)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.stamp = 0
        self.stamped: list[tuple[int, str, int, int]] = []

    def count(self, sub: str | None, bi: int, bo: int) -> None:
        super().count(sub, bi, bo)
        if sub is not None:
            self.stamped.append((self.stamp, sub, bi, bo))


class _StampingKube:
    """What a ``PodWriter`` sees of the fake API: ``write_many`` hands the stamp the fake
    gave the batch to the writer's maker before the writer counts the batch's lines
    (both under the writer's lock)."""

    def __init__(self, kube: FakeKube, maker: StampedMaker) -> None:
        self.kube = kube
        self.maker = maker

    def write_many(self, name: str, lines: list[bytes]) -> int:
        ts = self.kube.write_many(name, lines)
        self.maker.stamp = ts
        return ts


def stamped_writer(kube: FakeKube, name: str, rate: float, seed: int, start: bool = True) -> PodWriter:
    """A ``PodWriter`` for pod ``name`` (``rate`` lines a second) whose maker is a
    :class:`StampedMaker`, started unless ``start`` is False (then only :func:`write_at`
    writes through it). Stop it with :func:`stop_writer` before the pod's container
    exits (no line may be written to an exited container)."""
    writer = PodWriter(kube, name, rate, seed)
    writer.maker = StampedMaker(seed)
    writer.kube = _StampingKube(kube, writer.maker)  # type: ignore[assignment]
    if start:
        writer.thread.start()
    return writer


def write_at(writer: PodWriter, ts_ns: int, n: int = 1) -> None:
    """Write ``n`` lines of the writer's mix, all stamped ``ts_ns`` (e.g. the last
    nanosecond of an interval), and count them. The pod's stdout must not have a later
    stamp already (``FakeKube.write_many`` refuses a stamp going backwards)."""
    with writer.lock:
        made = [writer.maker.make() for _ in range(n)]
        writer.kube.kube.write_many(writer.name, [m[0] for m in made], ts_ns)  # type: ignore[attr-defined]
        writer.maker.stamp = ts_ns  # type: ignore[attr-defined]
        for _line, kind, sub, bi, bo in made:
            writer.maker.count(sub, bi, bo)
            writer.maker.kinds[kind] += 1


def stop_writer(writer: PodWriter) -> None:
    """Stop a writer and wait for it: after this no line of it is written."""
    writer.stop.set()
    if writer.thread.ident is None:  # never started
        return
    writer.thread.join(10)
    if writer.thread.is_alive():
        raise RuntimeError(f"writer of {writer.name} did not stop")


def truth_cells(writers: Iterable[PodWriter], interval: int, since: int | None = None) -> dict[Cell, Sums]:
    """Per (interval start, tunnel), the lines the writers got stamped: (bytes in, bytes
    out, requests). ``since``: only intervals starting at or after it (epoch s)."""
    out: dict[Cell, list[int]] = defaultdict(lambda: [0, 0, 0])
    for w in writers:
        with w.lock:
            lines = list(w.maker.stamped)  # type: ignore[attr-defined]
        for stamp, sub, bi, bo in lines:
            start = interval_of(stamp, interval)
            if since is not None and start < since:
                continue
            cell = out[(start, sub)]
            cell[0] += bi
            cell[1] += bo
            cell[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def truth_totals(writers: Iterable[PodWriter]) -> dict[str, Sums]:
    """Per tunnel, over all intervals."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for w in writers:
        with w.lock:
            for sub, (bi, bo, rq) in w.maker.truth.items():
                t = out[sub]
                t[0] += bi
                t[1] += bo
                t[2] += rq
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


# What the platform received --------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """One accepted report: its interval, tunnel, amendment number (0 = the original),
    Idempotency-Key, sums and when the platform received it (``time.time()``)."""

    start: int
    sub: str
    amendment: int
    key: str
    sums: Sums
    received_at: float


def delivered(records: Iterable[Record], scraper_id: str, interval: int) -> list[Delivered]:
    """Parse the stub's logged records. ValueError for a record whose key is missing or
    malformed, whose key names another scraper, interval length or tunnel than its body,
    or whose ``timestamp`` is not the end of the key's interval."""
    out = []
    for rec in records:
        m = _KEY.match(rec.key or "")
        if m is None:
            raise ValueError(f"record with an unexpected Idempotency-Key {rec.key!r}: {rec.body}")
        start = _epoch(m["start"])
        problems = []
        if m["scraper"] != scraper_id:
            problems.append(f"scraper {m['scraper']!r} != {scraper_id!r}")
        if int(m["interval"]) != interval:
            problems.append(f"interval {m['interval']} != {interval}")
        if m["sub"] != rec.subdomain:
            problems.append(f"key names {m['sub']!r}, body {rec.subdomain!r}")
        if _naive_utc(rec.timestamp) != datetime.fromtimestamp(start + interval, UTC).replace(tzinfo=None):
            problems.append(f"timestamp {rec.timestamp!r} is not the end of {m['start']}")
        if start % interval:
            problems.append(f"start {m['start']} not aligned to {interval} s")
        if problems:
            raise ValueError(f"record {rec.key}: {'; '.join(problems)}")
        out.append(Delivered(start, rec.subdomain, int(m["n"] or 0), rec.key or "",
                             (rec.bytes_in, rec.bytes_out, rec.requests), rec.received_at))
    return out


def platform_cells(reports: Iterable[Delivered], since: int | None = None) -> dict[Cell, Sums]:
    """Per (interval start, tunnel), originals plus amendments summed."""
    out: dict[Cell, list[int]] = defaultdict(lambda: [0, 0, 0])
    for d in reports:
        if since is not None and d.start < since:
            continue
        cell = out[(d.start, d.sub)]
        for i in range(3):
            cell[i] += d.sums[i]
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def platform_totals(reports: Iterable[Delivered]) -> dict[str, Sums]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for d in reports:
        for i in range(3):
            out[d.sub][i] += d.sums[i]
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def repeated_keys(records: Iterable[Record]) -> dict[str, int]:
    """Idempotency-Keys the platform logged more than once (key -> times)."""
    return {k: n for k, n in Counter(r.key for r in records).items() if n > 1}


def needless_resends(attempts: Iterable[Attempt], kills: Iterable[float] = (), window: float = 5.0) -> list[str]:
    """Keys POSTed again after an attempt the client got a final answer to (2xx, not
    lost): "a report known to be delivered is never sent again". A resend after a fault,
    a dropped answer or a client that hung up (``lost``) is the retry it should be; the
    stub checks that one carries the same body (422 otherwise). So is one whose answer
    reached a worker at most ``window`` seconds before it was killed (``kills``: epoch
    s): it had the answer but may have died before it recorded it."""
    kills = list(kills)
    by_key: dict[str | None, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_key[a.key].append(a)
    bad = []
    for key, tries in by_key.items():
        tries.sort(key=lambda a: a.received_at)
        for t in tries[:-1]:
            if t.status not in (200, 201) or t.lost:
                continue
            at = t.answered_at or t.received_at
            if not any(0 <= k - at <= window for k in kills):
                bad.append(str(key))
                break
    return sorted(bad)


def amendment_gaps(reports: Iterable[Delivered]) -> list[str]:
    """(interval, tunnel) pairs with more than one original, or whose amendment numbers
    are not 1..n (``n`` is allocated atomically: no number is skipped or used twice)."""
    seen: dict[Cell, list[int]] = defaultdict(list)
    for d in reports:
        seen[(d.start, d.sub)].append(d.amendment)
    bad = []
    for (start, sub), ns in sorted(seen.items()):
        amendments = sorted(n for n in ns if n)
        if ns.count(0) > 1 or amendments != list(range(1, len(amendments) + 1)):
            bad.append(f"{_iso(start)} {sub}: {sorted(ns)}")
    return bad


def diff(truth: dict[Cell, Sums], got: dict[Cell, Sums]) -> list[str]:
    """Cells that differ: ``<interval> <tunnel>: platform (bi, bo, rq) != truth (...)``."""
    out = []
    for cell in sorted(set(truth) | set(got)):
        t, g = truth.get(cell, (0, 0, 0)), got.get(cell, (0, 0, 0))
        if t != g:
            out.append(f"{_iso(cell[0])} {cell[1]}: platform {g} != truth {t}")
    return out


def table(truth: dict[Cell, Sums], reports: list[Delivered]) -> str:
    """One row per interval: requests and bytes out summed over tunnels, platform
    (originals + amendments, with the amendments' count) against the truth, and how
    many (interval, tunnel) cells differ."""
    got = platform_cells(reports)
    amendments = Counter(d.start for d in reports if d.amendment)
    starts = sorted({c[0] for c in truth} | {c[0] for c in got})
    rows = [f"{'interval (UTC)':<22}{'platform req':>13}{'truth req':>11}{'platform bytes_out':>20}"
            f"{'truth bytes_out':>17}{'amend':>7}{'cells off':>11}"]
    for s in starts:
        t = [v for c, v in truth.items() if c[0] == s]
        g = [v for c, v in got.items() if c[0] == s]
        off = sum(1 for c in set(truth) | set(got) if c[0] == s and truth.get(c) != got.get(c))
        rows.append(f"{_iso(s):<22}{sum(v[2] for v in g):>13}{sum(v[2] for v in t):>11}"
                    f"{sum(v[1] for v in g):>20}{sum(v[1] for v in t):>17}{amendments[s]:>7}{off:>11}")
    return "\n".join(rows)
