"""Traefik access-log parser: sums body bytes and requests per tunnel subdomain.

This is the hot loop of the product (every line of every Traefik pod log goes through
it), so it is a plain module that imports only the standard library and msgspec.

The counting rule
=================

A line is *counted* for tunnel ``<sub>`` when all of these hold:

1. It is at most ``MAX_LINE_BYTES`` (64 KiB) long and valid UTF-8.
2. It is a JSON object (surrounding whitespace and a trailing ``\\r`` are tolerated).
3. It is an access-log entry: it has at least one of the keys in ``ACCESS_KEYS``
   (Traefik's own log lines never carry these capitalised core fields).
4. ``RequestContentSize`` and ``DownstreamContentSize`` are JSON integers in
   ``0 .. 2**63-1``. A size field that is *absent* (Traefik's ``accessLog.fields`` can
   drop it) counts as 0 while the request itself is still counted.
5. ``RequestHost`` is a string. The host is lower-cased (ASCII letters only, so no
   Unicode case folding can turn a lookalike into a tunnel name), a ``:port`` suffix
   (digits, possibly none) is removed, then one trailing dot is removed. What remains
   must be exactly one DNS label -- 1 to 63 characters of ``a-z0-9-``, not starting or
   ending with ``-`` -- followed by ``"." + domain``. That label is the subdomain.

The counts are: bytes in = ``RequestContentSize``, bytes out = ``DownstreamContentSize``
(body bytes, as Traefik reports them), requests = number of counted lines.

Every other line is either *ignored* (it is fine but not tunnel traffic) or *rejected*
(it is damaged or has wrong types). Both are counted by reason; nothing ever raises,
whatever the bytes.

Ignored reasons (``IGNORED_REASONS``):

- ``other_host``: an access entry for a host outside the domain, including lookalikes
  such as ``evilt.lum.tools`` and ``x.t.lum.tools.evil.com``.
- ``not_a_tunnel``: under the domain but not exactly one valid label, e.g.
  ``a.b.t.lum.tools``, the bare ``t.lum.tools``, ``-x.t.lum.tools``.
- ``no_host``: an access entry without ``RequestHost`` (Traefik omits it when the
  request's Host header is empty) or with an empty one. It cannot be attributed to any
  tunnel, so it is ignored rather than rejected.
- ``not_access_log``: anything that is not an access entry: Traefik's own log lines
  (text with ANSI colours, the continuation lines of its multi-line messages, or its
  JSON log lines), blank lines, other text.
- ``clf_no_host``: an access line in Traefik's Common Log Format. CLF carries neither
  the Host nor the request size, so it cannot be metered: Traefik must be configured
  with ``accessLog.format: json``.

Rejected reasons (``REJECTED_REASONS``):

- ``too_long``: longer than ``MAX_LINE_BYTES`` (checked first).
- ``invalid_utf8``: not valid UTF-8 anywhere in the line. Traefik (Go's JSON encoder)
  never writes invalid UTF-8, so such a line is corrupt and is not trusted.
- ``invalid_json``: starts like a JSON object (``{``) but is not valid JSON, e.g. a
  truncated line, or nested too deeply to decode.
- ``not_object``: valid JSON that is not an object (an array, a string, a number...).
- ``bad_host_type``: ``RequestHost`` present but not a string (null included).
- ``bad_size_type``: a size present but not a JSON integer (string, float such as
  ``1.0``, bool, null, array, object).
- ``negative_size``: a size below 0.
- ``size_too_large``: a size above ``2**63 - 1``.

When a line has several defects, the first in the order above wins; within a JSON
object, the host is checked before ``RequestContentSize`` before
``DownstreamContentSize``.

Accounting: ``total == counted + sum(ignored.values()) + sum(rejected.values())`` and
``counted == sum(requests over subdomains)`` always hold.

``access_lines()`` counts the lines known to be access entries: counted ones, the
ignored ``other_host``, ``not_a_tunnel`` and ``no_host``, and the rejected
``bad_host_type``, ``bad_size_type``, ``negative_size`` and ``size_too_large`` (those
reasons imply an access key is present). ``too_long``, ``invalid_utf8``,
``invalid_json`` and ``not_object`` lines are not counted there (we cannot tell), nor
are CLF lines (reported separately as ``clf_no_host``).

How it is fast
==============

Each line is decoded on its own by a typed msgspec decoder into a small ``Struct``
holding only the three fields needed; sizes carry their range constraint, so type and
range checks happen in C and a bad line raises, sending it to the slow path (which
decodes the same three fields with any type to name the reason). Per-line decoding
keeps the semantics exact -- no damaged line can merge with its neighbours -- and
measured as fast as the batch alternatives: joining lines into one JSON array costs a
copy and a big list for what it saves in calls, and ``Decoder.decode_lines`` (a
whitespace-separated stream, so it needs ``bytes.count`` checks to prove one value per
line) lost more on those checks than it gained. Host classification is cached per
distinct host string (at most 65536 hosts of at most 512 characters; cleared when full); the cache maps a host straight to the
``[in, out, requests]`` list it adds to -- a tunnel's list, or a per-reason bucket for
ignored hosts -- so the common path is one dict lookup and three additions, and a miss
is a ``KeyError``. ``feed_chunk`` checks UTF-8 once per chunk (``bytes.isascii``; per
line only when the chunk holds non-ASCII bytes) and line lengths with one ``rfind`` per
64 KiB window rather than per line. On ``bench/parse.py`` this runs at about 0.8 of a
bare loop that only decodes each line with msgspec, and 5 to 6 times a ``json.loads``
baseline.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

MAX_LINE_BYTES = 64 * 1024
MAX_SIZE = 2**63 - 1
DEFAULT_DOMAIN = "t.lum.tools"

# Ignored reasons.
OTHER_HOST = "other_host"
NOT_A_TUNNEL = "not_a_tunnel"
NO_HOST = "no_host"
NOT_ACCESS_LOG = "not_access_log"
CLF_NO_HOST = "clf_no_host"
IGNORED_REASONS = (OTHER_HOST, NOT_A_TUNNEL, NO_HOST, NOT_ACCESS_LOG, CLF_NO_HOST)

# Rejected reasons.
TOO_LONG = "too_long"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"
BAD_HOST_TYPE = "bad_host_type"
BAD_SIZE_TYPE = "bad_size_type"
NEGATIVE_SIZE = "negative_size"
SIZE_TOO_LARGE = "size_too_large"
REJECTED_REASONS = (
    TOO_LONG,
    INVALID_UTF8,
    INVALID_JSON,
    NOT_OBJECT,
    BAD_HOST_TYPE,
    BAD_SIZE_TYPE,
    NEGATIVE_SIZE,
    SIZE_TOO_LARGE,
)

# Reasons that imply the line was an access-log entry (see access_lines()).
_ACCESS_IGNORED = (OTHER_HOST, NOT_A_TUNNEL, NO_HOST)
_ACCESS_REJECTED = (BAD_HOST_TYPE, BAD_SIZE_TYPE, NEGATIVE_SIZE, SIZE_TOO_LARGE)

# Traefik's core access-log fields (v2.11 and v3). Its own log lines (text or JSON)
# use lower-case keys (level, msg, time, entryPointName, providerName...), never these.
ACCESS_KEYS = frozenset(
    {
        "ClientAddr",
        "ClientHost",
        "ClientPort",
        "ClientUsername",
        "DownstreamContentSize",
        "DownstreamStatus",
        "Duration",
        "OriginContentSize",
        "OriginDuration",
        "OriginStatus",
        "Overhead",
        "RequestAddr",
        "RequestContentSize",
        "RequestCount",
        "RequestHost",
        "RequestMethod",
        "RequestPath",
        "RequestPort",
        "RequestProtocol",
        "RequestScheme",
        "RetryAttempts",
        "RouterName",
        "ServiceAddr",
        "ServiceName",
        "ServiceURL",
        "StartLocal",
        "StartUTC",
    }
)

SIZE_FIELDS = ("RequestContentSize", "DownstreamContentSize")

_CACHE_MAX = 65536
# Longer hosts (a client can send a Host header of many kilobytes) are classified
# every time rather than cached; no tunnel host is anywhere near this long.
_CACHE_HOST_MAX = 512
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

_Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE)]


class _Entry(msgspec.Struct, gc=False):
    """The only fields the hot loop reads. Absent host decodes as "" (see no_host)."""

    RequestHost: str = ""
    RequestContentSize: _Size = 0
    DownstreamContentSize: _Size = 0


class _LooseEntry(msgspec.Struct, gc=False):
    """The same fields with any JSON type, to tell why the typed decoder refused a line."""

    RequestHost: Any = msgspec.UNSET
    RequestContentSize: Any = msgspec.UNSET
    DownstreamContentSize: Any = msgspec.UNSET


_decode_entry = msgspec.json.Decoder(_Entry).decode
_decode_loose = msgspec.json.Decoder(_LooseEntry).decode
_decode_any = msgspec.json.Decoder().decode
_decode_keys = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode

# What msgspec can raise on hostile input: DecodeError (ValidationError is a subclass),
# UnicodeDecodeError for invalid UTF-8 inside a string it decodes, RecursionError for
# deep nesting.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

# Traefik's CLF line:
# ClientHost - User [02/Jan/2006:15:04:05 -0700] "METHOD path PROTO" status bytes
# "referer" "agent" count "router" "serviceURL" Nms
# Recognised by its fixed-shape head (anchored, no nested repetition, so linear time)
# plus the "<digits>ms" end; used only on lines that already failed to decode as JSON.
_CLF_HEAD = re.compile(rb'[^ ]+ [^ ]+ [^ ]+ \[\d\d/[A-Za-z]{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "')
_CLF_TAIL = re.compile(rb" \d+ms")

# JSON's whitespace (bytes.strip() would also strip \x0b and \x0c, which JSON refuses).
_JSON_SPACE = b" \t\r\n"
_OPEN_BRACE = ord("{")
# First bytes of the JSON values that are not objects: array, string, number, literals.
_JSON_VALUE_START = frozenset(b'["-0123456789tfn')


def _is_clf(text: bytes) -> bool:
    if _CLF_HEAD.match(text) is None:
        return False
    space = text.rfind(b" ")
    return space > 0 and _CLF_TAIL.fullmatch(text, space) is not None


def _ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (str.lower() maps e.g. KELVIN SIGN to 'k')."""
    if text.isascii():
        return text.lower()
    return text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass")


def _normalise_domain(domain: str) -> str:
    cleaned = _ascii_lower(domain.strip()).removesuffix(".")
    if not cleaned or not cleaned.isascii() or " " in cleaned or cleaned.startswith("."):
        raise ValueError(f"invalid tunnel domain: {domain!r}")
    return cleaned


def is_tunnel_label(label: str) -> bool:
    """True if ``label`` is a valid tunnel subdomain: one lower-case DNS label."""
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and _LABEL_CHARS.issuperset(label)
    )


def _classify_host(host: str, domain: str) -> tuple[str | None, str]:
    """Return (subdomain, "") for a tunnel host, else (None, ignored reason).

    ``domain`` must already be normalised (lower case, no trailing dot).
    """
    if not host:
        return None, NO_HOST
    name = _ascii_lower(host)
    before, colon, port = name.rpartition(":")
    if colon and (not port or (port.isascii() and port.isdigit())):
        name = before
    name = name.removesuffix(".")
    if name == domain:
        return None, NOT_A_TUNNEL
    suffix = "." + domain
    if not name.endswith(suffix):
        return None, OTHER_HOST
    label = name[: -len(suffix)]
    if is_tunnel_label(label):
        return label, ""
    return None, NOT_A_TUNNEL


def tunnel_subdomain(host: str, domain: str = DEFAULT_DOMAIN) -> str | None:
    """The tunnel subdomain a ``RequestHost`` value counts for, or None.

    Applies the counting rule's host clause (see the module docstring).
    """
    if not isinstance(host, str):
        return None
    sub, _reason = _classify_host(host, _normalise_domain(domain))
    return sub


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _may_hold_long_line(data: bytes, end: int) -> bool:
    """False if no line of ``data[:end]`` is longer than ``MAX_LINE_BYTES``.

    Jumps from line start to line start with one ``rfind`` per ``MAX_LINE_BYTES``
    window, instead of measuring every line: when the window after a line start holds
    a newline, every line from that start up to that newline fits. True means "check
    each line" (a window without a newline), not that a long line is certain.
    """
    start = 0
    while end - start > MAX_LINE_BYTES:
        newline = data.rfind(b"\n", start, start + MAX_LINE_BYTES + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


def _size_problem(value: object) -> str:
    """The rejection reason for a size value, or "" if it is acceptable."""
    if type(value) is not int:  # bool is a subclass of int: excluded on purpose
        return BAD_SIZE_TYPE
    if value < 0:
        return NEGATIVE_SIZE
    if value > MAX_SIZE:
        return SIZE_TOO_LARGE
    return ""


class Aggregator:
    """Sums tunnel traffic over access-log lines and counts the others by reason.

    Attributes (read them, do not replace them):

    - ``subdomains``: ``{sub: [bytes_in, bytes_out, requests]}``
    - ``total``: lines seen; ``counted``: lines counted for a tunnel
    - ``ignored`` / ``rejected``: ``{reason: lines}``, only reasons seen

    Feed it complete lines (``feed_lines``) or raw stream chunks (``feed_chunk`` and,
    at the end of the stream, ``finish``). A line longer than ``MAX_LINE_BYTES`` that
    has no newline yet is rejected as soon as it is known to be too long, and the rest
    of it is skipped up to the next newline, so ``feed_chunk``'s tail never grows past
    ``MAX_LINE_BYTES``.
    """

    def __init__(self, domain: str = DEFAULT_DOMAIN) -> None:
        self.domain = _normalise_domain(domain)
        self.subdomains: dict[str, list[int]] = {}
        self.total = 0
        self.counted = 0
        self.ignored: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        # host string -> the [in, out, requests] list its lines add to.
        self._slots: dict[str, list[int]] = {}
        # Per-reason scratch lists for ignored hosts; flushed into `ignored` after
        # each feed call, so `ignored` is always current between calls.
        self._buckets: dict[str, list[int]] = {reason: [0, 0, 0] for reason in IGNORED_REASONS}
        self._discarding = False  # inside an over-long line, skipping to its newline

    # -- feeding -------------------------------------------------------------------

    def feed_lines(self, lines: list[bytes]) -> None:
        """Process complete lines (without their newline; a trailing CR is fine)."""
        if not lines:
            return
        try:
            utf8_ok = all(map(bytes.isascii, lines))
        except TypeError:  # bytearray or memoryview items: work on bytes copies
            lines = [bytes(line) for line in lines]
            utf8_ok = all(map(bytes.isascii, lines))
        self._feed(lines, utf8_ok, max(map(len, lines)) > MAX_LINE_BYTES)

    def feed_chunk(self, data: bytes) -> bytes:
        """Process the complete lines in ``data``; return the unfinished last line.

        The caller passes the returned tail back in front of the next chunk, and the
        final tail to ``finish``.
        """
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return b""
            self._discarding = False
            data = data[newline + 1 :]
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            self._feed(lines, data.isascii(), _may_hold_long_line(data, len(data) - len(tail)))
        if len(tail) > MAX_LINE_BYTES:
            self.total += 1
            self._reject(TOO_LONG)
            self._discarding = True
            return b""
        return tail

    def finish(self, tail: bytes) -> None:
        """End of stream: process ``tail`` (a last line without newline), if any."""
        if self._discarding:
            self._discarding = False
            return
        if tail:
            self.feed_lines([tail])

    # -- results -------------------------------------------------------------------

    def merge(self, other: Aggregator) -> None:
        """Add ``other``'s counts into this aggregator (same domain required)."""
        if other.domain != self.domain:
            raise ValueError(f"cannot merge domain {other.domain!r} into {self.domain!r}")
        for sub, (bytes_in, bytes_out, requests) in other.subdomains.items():
            slot = self.subdomains.get(sub)
            if slot is None:
                self.subdomains[sub] = [bytes_in, bytes_out, requests]
            else:
                slot[0] += bytes_in
                slot[1] += bytes_out
                slot[2] += requests
        self.total += other.total
        self.counted += other.counted
        for reason, count in other.ignored.items():
            self.ignored[reason] = self.ignored.get(reason, 0) + count
        for reason, count in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    def access_lines(self) -> int:
        """Lines known to be access-log entries (see the module docstring)."""
        return (
            self.counted
            + sum(self.ignored.get(reason, 0) for reason in _ACCESS_IGNORED)
            + sum(self.rejected.get(reason, 0) for reason in _ACCESS_REJECTED)
        )

    def to_dict(self) -> dict:
        """The ``scan --json`` shape; subdomains and reasons in sorted order."""
        return {
            "subdomains": {
                sub: {"bytes_in": slot[0], "bytes_out": slot[1], "requests": slot[2]}
                for sub, slot in sorted(self.subdomains.items())
            },
            "lines": {
                "total": self.total,
                "counted": self.counted,
                "ignored": dict(sorted(self.ignored.items())),
                "rejected": dict(sorted(self.rejected.items())),
            },
        }

    # -- internals -----------------------------------------------------------------

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _feed(self, lines: list[bytes], utf8_ok: bool, may_hold_long: bool) -> None:
        self.total += len(lines)
        if may_hold_long:
            lines = self._drop_long(lines)
        if not utf8_ok:
            lines = self._drop_invalid_utf8(lines)

        odd: list[bytes] = []
        slots = self._slots
        resolve = self._resolve
        decode = _decode_entry
        for line in lines:
            try:
                entry = decode(line)
                slot = slots[entry.RequestHost]
            except KeyError:  # a host not in the cache (msgspec never raises KeyError)
                slot = resolve(entry.RequestHost, line)
            except _DECODE_ERRORS:
                odd.append(line)
                continue
            slot[0] += entry.RequestContentSize
            slot[1] += entry.DownstreamContentSize
            slot[2] += 1

        ignored_here = 0
        for reason, bucket in self._buckets.items():
            if bucket[2]:
                self.ignored[reason] = self.ignored.get(reason, 0) + bucket[2]
                ignored_here += bucket[2]
                bucket[0] = bucket[1] = bucket[2] = 0
        self.counted += len(lines) - len(odd) - ignored_here
        for line in odd:
            self._classify_odd(line)

    def _drop_long(self, lines: list[bytes]) -> list[bytes]:
        kept = []
        for line in lines:
            if len(line) > MAX_LINE_BYTES:
                self._reject(TOO_LONG)
            else:
                kept.append(line)
        return kept

    def _drop_invalid_utf8(self, lines: list[bytes]) -> list[bytes]:
        kept = []
        for line in lines:
            if line.isascii() or _is_utf8(line):
                kept.append(line)
            else:
                self._reject(INVALID_UTF8)
        return kept

    def _resolve(self, host: str, line: bytes) -> list[int]:
        """Cache miss: find the list a host's lines add to (tunnel or ignored bucket)."""
        if not host:
            # Absent or empty RequestHost: an access entry without a host, or not an
            # access entry at all (e.g. Traefik's own JSON log line). Not cached.
            return self._buckets[NO_HOST if self._has_access_key(line) else NOT_ACCESS_LOG]
        sub, reason = _classify_host(host, self.domain)
        if sub is None:
            slot = self._buckets[reason]
        else:
            slot = self.subdomains.get(sub)
            if slot is None:
                slot = self.subdomains[sub] = [0, 0, 0]
        if len(host) <= _CACHE_HOST_MAX:  # the cache is bounded in bytes, not only in count
            if len(self._slots) >= _CACHE_MAX:
                self._slots.clear()
            self._slots[host] = slot
        return slot

    @staticmethod
    def _has_access_key(line: bytes) -> bool:
        try:
            keys = _decode_keys(line)
        except _DECODE_ERRORS:
            return False
        return not ACCESS_KEYS.isdisjoint(keys)

    def _classify_odd(self, line: bytes) -> None:
        """Slow path for a line the typed decoder refused (already UTF-8, not too long)."""
        text = line.strip(_JSON_SPACE)
        if not text:
            self._ignore(NOT_ACCESS_LOG)
            return
        first = text[0]
        if first == _OPEN_BRACE:
            try:
                loose = _decode_loose(text)
            except _DECODE_ERRORS:
                self._reject(INVALID_JSON)
                return
            self._classify_object(loose, text)
            return
        if first in _JSON_VALUE_START:
            try:
                _decode_any(text)
            except RecursionError:  # an array nested deeper than msgspec decodes
                self._reject(NOT_OBJECT)
                return
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass  # not JSON: text, see below
            else:
                self._reject(NOT_OBJECT)
                return
        self._ignore(CLF_NO_HOST if _is_clf(text) else NOT_ACCESS_LOG)

    def _classify_object(self, loose: _LooseEntry, text: bytes) -> None:
        """A JSON object the typed decoder refused: find which field is wrong."""
        host = loose.RequestHost
        if host is not msgspec.UNSET and type(host) is not str:
            self._reject(BAD_HOST_TYPE)
            return
        for value in (loose.RequestContentSize, loose.DownstreamContentSize):
            if value is not msgspec.UNSET:
                problem = _size_problem(value)
                if problem:
                    self._reject(problem)
                    return
        # Nothing wrong found (not expected: the typed decoder refused the line for one
        # of the reasons above). Apply the rule to the decoded values rather than lose it.
        if host is msgspec.UNSET or not host:
            self._ignore(NO_HOST if self._has_access_key(text) else NOT_ACCESS_LOG)
            return
        sub, reason = _classify_host(host, self.domain)
        if sub is None:
            self._ignore(reason)
            return
        slot = self.subdomains.setdefault(sub, [0, 0, 0])
        for index, value in enumerate((loose.RequestContentSize, loose.DownstreamContentSize)):
            if value is not msgspec.UNSET:
                slot[index] += value
        slot[2] += 1
        self.counted += 1
