"""``traefik-metrics-scraper scan [FILE ...|-] [--json] [--domain D]``.

Sums a Traefik access log per tunnel subdomain with the same parser and counting rule
as the workers (``app.parser``), to check a log by hand or to compare with billing.
Files (or stdin, ``-`` or no FILE) are streamed in large chunks, so memory stays
constant whatever their size. Prints a table per subdomain, sorted by bytes out
(human units and exact bytes), the totals, and the lines ignored or rejected by reason;
``--json`` prints the same numbers in the shape of ``Aggregator.to_dict()``. Upgraded
connections (WebSocket...), which the access log shows with 0 bytes, are listed per
tunnel (``unmetered``, a line of the table or a map of the JSON). A file that starts
with a timestamp is read as a pod's log (``PodLogLines``): ``kubectl logs --timestamps``'
output, or a CRI file of /var/log/pods.

The default domain is ``$TUNNEL_DOMAIN``, else ``t.lum.tools``; the longest line parsed
is ``$LOG_LINE_MAX_BYTES``, else 16 MiB, as in the workers (longer lines are rejected as
``too_long``); a bound the workers would refuse is refused, in one line naming the
option or the variable. This module reads the environment directly and imports only the
parser: starting ``scan`` must not load the settings, Celery or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import stat
import sys
import time
from typing import BinaryIO, TextIO

from app.model import whole_number
from app.parser import (
    DEFAULT_DOMAIN,
    LINE_BOUND_MAX,
    LINE_BOUND_MIN,
    LINE_PREFIX_ROOM,
    LONG_LINE_HEAD,
    MAX_LINE_BYTES,
    Aggregator,
    LineFramer,
    LongLine,
)

CHUNK_BYTES = 256 * 1024
PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # show a progress bar only for files this large
PROGRESS_EVERY = 0.25  # seconds between progress updates

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


class ScanError(Exception):
    """A file could not be read, or LOG_LINE_MAX_BYTES is bad; the message is the one
    line shown to the user."""


def human_bytes(value: int) -> str:
    """``1.2 MiB`` style (binary units, one decimal); plain bytes below 1 KiB."""
    if value < 1024:
        return f"{value} B"
    amount = float(value)
    for unit in _UNITS[1:]:
        amount /= 1024
        if amount < 1024 or unit == _UNITS[-1]:
            return f"{amount:.1f} {unit}"
    raise AssertionError("unreachable")


DESCRIPTION = "Sum a Traefik JSON access log per tunnel subdomain."


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments of ``scan`` (also used by the ``traefik-metrics-scraper`` CLI)."""
    ap.add_argument(
        "files", nargs="*", metavar="FILE", help="log files to read; '-' or none reads stdin"
    )
    ap.add_argument("--json", action="store_true", help="print the totals as JSON")
    ap.add_argument(
        "--domain",
        help=f"tunnel domain (default: $TUNNEL_DOMAIN, else {DEFAULT_DOMAIN})",
    )
    ap.add_argument(
        "--max-line-bytes",
        type=_line_bytes,
        metavar="BYTES",
        help=f"longest line parsed, from {LINE_BOUND_MIN} to {LINE_BOUND_MAX}; longer ones are "
        f"rejected as too_long (default: $LOG_LINE_MAX_BYTES, else {MAX_LINE_BYTES})",
    )


_LINE_BOUNDS = f"not a whole number of bytes from {LINE_BOUND_MIN} to {LINE_BOUND_MAX}"


def _line_bytes(text: str) -> int:
    """``--max-line-bytes``: ASCII digits (as every count the CLI takes), within
    ``LOG_LINE_MAX_BYTES``'s range."""
    value = whole_number(text)
    if value is None or not LINE_BOUND_MIN <= value <= LINE_BOUND_MAX:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is {_LINE_BOUNDS}")
    return value


def _env_line_bytes(text: str) -> int | None:
    """``$LOG_LINE_MAX_BYTES`` read as the workers' settings read it (pydantic's lax
    integer: a sign, ``_`` between digits and a zero fraction are taken), or None when it
    is not a whole number within its range.
    Pydantic is imported here only: a scan without the variable does not load it."""
    from pydantic import TypeAdapter, ValidationError

    try:
        value = TypeAdapter(int).validate_python(text)
    except ValidationError:
        return None
    return value if LINE_BOUND_MIN <= value <= LINE_BOUND_MAX else None


def _max_line_bytes(args: argparse.Namespace) -> int:
    """``--max-line-bytes``, else ``$LOG_LINE_MAX_BYTES`` (ScanError naming the variable
    when it is outside the workers' range, or set but empty; scan does not read
    ``FETCH_MAX_BYTES``, which the workers also hold it against), else ``MAX_LINE_BYTES``."""
    if args.max_line_bytes is not None:
        return args.max_line_bytes
    env = os.environ.get("LOG_LINE_MAX_BYTES")
    if env is None:
        return MAX_LINE_BYTES
    value = _env_line_bytes(env)
    if value is None:  # without the value, as the workers' settings lines (README, Configuration)
        raise ScanError(f"scan: LOG_LINE_MAX_BYTES is {_LINE_BOUNDS}")
    return value


class _Progress:
    """A one-line progress bar on stderr, for large regular files on a terminal."""

    def __init__(self, name: str, size: int, out: TextIO) -> None:
        self.name = name
        self.size = size
        self.out = out
        self.done = 0
        self.last = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            share = self.done / self.size if self.size else 1.0
            bar = "#" * int(share * 30)
            self.out.write(
                f"\rscan: {self.name} [{bar:<30}] {share:6.1%} "
                f"({human_bytes(self.done)} of {human_bytes(self.size)})"
            )
            self.out.flush()

    def close(self) -> None:
        if self.last:
            self.out.write("\r\x1b[K")
            self.out.flush()


# A pod's log as `kubectl logs --timestamps` prints it: the kubelet's stamp and a space
# before each line (RFC3339NanoFixed, or the runtime's zone, pkg/kubelet/kuberuntime/logs/
# logs.go); or as the container runtime writes it under /var/log/pods, the CRI format
# "<stamp> <stdout|stderr> <F|P> <text>", a line over 16 KiB written as P pieces ended by
# an F one (containerd's and CRI-O's CRI logger; the kubelet joins them, ReadLogs in the
# same file). Traefik's own lines start with "{" (JSON) or a letter, never with a stamp.
_POD_STAMP = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2}) ")
_CRI_TAGS = re.compile(rb"(stdout|stderr) ([FP]) ")


class PodLogLines:
    """Traefik's own lines from a pod log's (``_POD_STAMP``): the stamp dropped, and in
    the CRI format the stream and tag too, with a line's P pieces joined to its F piece,
    per stream. A line without a stamp is kept as it is, to be counted by reason. A line
    over ``max_line_bytes`` is a ``LongLine`` of Traefik's line (its head and length,
    never held whole, however many pieces it came in)."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._pieces: dict[bytes, list[bytes]] = {b"stdout": [], b"stderr": []}
        self._sizes = {b"stdout": 0, b"stderr": 0}

    def lines(self, lines: list[bytes]) -> list[bytes]:
        out = []
        for line in lines:
            stamp = _POD_STAMP.match(line)  # (a LongLine's bytes start with the line's head)
            if stamp is None:
                out.append(line)
                continue
            tags = _CRI_TAGS.match(line, stamp.end())
            if tags is None:
                out.append(line[stamp.end():])  # a LongLine's slice is the LongLine of the rest
                continue
            self._add(tags[1], line[tags.end():])
            if tags[2] == b"F":
                out.append(self._take(tags[1]))
        return out

    def finish(self) -> list[bytes]:
        """The pieces of lines whose F piece never came (the log ended inside one)."""
        return [self._take(stream) for stream, pieces in self._pieces.items() if pieces]

    def _add(self, stream: bytes, piece: bytes) -> None:
        pieces = self._pieces[stream]
        size = self._sizes[stream] + (piece.length if type(piece) is LongLine else len(piece))
        if size <= self.max_line_bytes:
            pieces.append(piece)
        else:  # too long: from now on only its head and its length
            head = b"".join([*pieces, piece[:LONG_LINE_HEAD]])[:LONG_LINE_HEAD]
            pieces[:] = [head]
        self._sizes[stream] = size

    def _take(self, stream: bytes) -> bytes:
        pieces, size = self._pieces[stream], self._sizes[stream]
        line = LongLine(pieces[0], size) if size > self.max_line_bytes else b"".join(pieces)
        pieces.clear()
        self._sizes[stream] = 0
        return line


def _stream(agg: Aggregator, stream: BinaryIO, progress: _Progress | None) -> bool:
    """Feed ``stream`` to ``agg``; True when it was read as a pod's log (``PodLogLines``),
    which its first bytes tell."""
    read = getattr(stream, "read1", stream.read)
    head = b""  # enough of the start to hold a stamp
    while len(head) < LINE_PREFIX_ROOM and b"\n" not in head and (chunk := read(CHUNK_BYTES)):
        head += chunk
    pod: PodLogLines | None = None
    framer: LineFramer | None = None
    stamp = _POD_STAMP.match(head)
    # A fraction of a second (the kubelet writes nine digits, a CRI log RFC3339Nano) or the
    # CRI tags: not Traefik v3's own text log, whose lines start "<RFC 3339 to the second> INF".
    if stamp and (b"." in stamp[0] or _CRI_TAGS.match(head, stamp.end())):
        # The bound applies to Traefik's line, as in the workers (LINE_PREFIX_ROOM).
        pod, framer = PodLogLines(agg.max_line_bytes), LineFramer(agg.max_line_bytes + LINE_PREFIX_ROOM)
    for chunk in itertools.chain((head,), iter(lambda: read(CHUNK_BYTES), b"")):
        if pod is None:
            agg.feed_chunk(chunk)
        else:
            agg.feed_lines(pod.lines(framer.feed(chunk)))  # type: ignore[union-attr]
        if progress is not None:
            progress.advance(len(chunk))
    if pod is None:
        agg.finish()  # a last line without a newline is a line; files never run together
        return False
    last = framer.finish()  # type: ignore[union-attr]
    agg.feed_lines(pod.lines([last] if last is not None else []) + pod.finish())
    return True


def _scan_file(agg: Aggregator, name: str, stderr: TextIO) -> None:
    if name == "-":
        try:
            pod = _stream(agg, sys.stdin.buffer, None)
        except OSError as exc:
            raise ScanError(f"scan: cannot read stdin: {exc.strerror or exc}") from None
        _note_pod_log("stdin", pod, stderr)
        return
    try:
        with open(name, "rb", buffering=0) as stream:
            info = os.fstat(stream.fileno())
            progress = None
            if (
                stat.S_ISREG(info.st_mode)
                and info.st_size >= PROGRESS_MIN_BYTES
                and stderr.isatty()
            ):
                progress = _Progress(name, info.st_size, stderr)
            try:
                pod = _stream(agg, stream, progress)
            finally:
                if progress is not None:
                    progress.close()
    except OSError as exc:
        raise ScanError(f"scan: cannot read {name}: {exc.strerror or exc}") from None
    _note_pod_log(name, pod, stderr)


def _note_pod_log(name: str, pod: bool, stderr: TextIO) -> None:
    if pod:
        print(f"scan: {name} is a pod's log (kubectl logs --timestamps, or the CRI format of /var/log/pods): "
              "read without the stamps, each line whole", file=stderr)


def _table(agg: Aggregator) -> str:
    rows = sorted(agg.subdomains.items(), key=lambda item: (-item[1][1], item[0]))
    total_in = sum(slot[0] for _, slot in rows)
    total_out = sum(slot[1] for _, slot in rows)
    total_requests = sum(slot[2] for _, slot in rows)

    def cells(name: str, bytes_in: int, bytes_out: int, requests: int) -> list[str]:
        return [
            name,
            f"{human_bytes(bytes_in)} ({bytes_in})",
            f"{human_bytes(bytes_out)} ({bytes_out})",
            str(requests),
        ]

    header = ["SUBDOMAIN", "BYTES IN", "BYTES OUT", "REQUESTS"]
    body = [cells(name, *slot) for name, slot in rows]
    footer = cells(f"TOTAL ({_plural(len(rows), 'tunnel', 'tunnels')})", total_in, total_out, total_requests)
    widths = [max(len(row[i]) for row in [header, *body, footer]) for i in range(4)]

    def fmt(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [fmt(header), rule, *(fmt(row) for row in body), rule, fmt(footer), ""]
    out.append(f"lines: {agg.total} read, {agg.counted} counted")
    for label, counts in (("ignored", agg.ignored), ("rejected", agg.rejected)):
        detail = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
        out.append(f"{label}: {sum(counts.values())}" + (f" ({detail})" if detail else ""))
    if agg.unmetered:
        detail = ", ".join(f"{sub} {count}" for sub, count in sorted(agg.unmetered.items()))
        upgraded = _plural(sum(agg.unmetered.values()), "upgraded connection", "upgraded connections")
        out.append(f"unmetered: {upgraded} counted with 0 bytes "
                   f"(WebSocket...: their traffic is not in the access log) ({detail})")
    return "\n".join(out)


def _plural(count: int, one: str, many: str) -> str:
    """``1 line``, ``2 lines``: the count and the words that agree with it."""
    return f"{count} {one if count == 1 else many}"


def _notes(agg: Aggregator) -> list[str]:
    notes = []
    clf = agg.ignored.get("clf_no_host", 0)
    if clf:
        notes.append(
            f"scan: {_plural(clf, 'access line is', 'access lines are')} in Common Log Format, "
            "which carries no Host and no request size: set Traefik's accessLog.format to json "
            "to meter tunnels."
        )
    if agg.total and not agg.access_lines() and not clf:
        read = "1 line read but it is not" if agg.total == 1 else f"{agg.total} lines read but none is"
        notes.append(
            f"scan: {read} an access-log entry: is Traefik's access log enabled, or moved to a "
            "file by accessLog.filePath?"
        )
    return notes


def main(argv: list[str]) -> int:
    """Run ``scan`` with the arguments after the word ``scan``; return the exit code."""
    ap = argparse.ArgumentParser(prog="traefik-metrics-scraper scan", description=DESCRIPTION)
    add_arguments(ap)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Scan with parsed arguments: 0 done, 2 a file could not be read, a bad domain or a
    bad line bound (``$LOG_LINE_MAX_BYTES``)."""
    stdout, stderr = sys.stdout, sys.stderr
    from_env = args.domain is None and "TUNNEL_DOMAIN" in os.environ  # set but empty: refused, as by the workers
    domain = os.environ.get("TUNNEL_DOMAIN", DEFAULT_DOMAIN) if args.domain is None else args.domain
    try:
        agg = Aggregator(domain, _max_line_bytes(args))
    except ScanError as exc:
        print(exc, file=stderr)
        return 2
    except ValueError as exc:
        print(f"scan: {'TUNNEL_DOMAIN: ' if from_env else ''}{exc}", file=stderr)
        return 2
    try:
        for name in args.files or ["-"]:
            _scan_file(agg, name, stderr)
    except ScanError as exc:
        print(exc, file=stderr)
        return 2
    except KeyboardInterrupt:
        print("scan: interrupted", file=stderr)
        return 130
    try:
        if args.json:
            stdout.write(json.dumps(agg.to_dict(), indent=2) + "\n")
        else:
            stdout.write(_table(agg) + "\n")
        stdout.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        return 0
    for note in _notes(agg):
        print(note, file=stderr)
    return 0
