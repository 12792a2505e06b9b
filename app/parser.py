"""Traefik access-log parser: sums body bytes and requests per tunnel subdomain.

This is the hot loop of the product (every line of every Traefik pod log goes through
it), so it is a plain module that imports only the standard library and msgspec.

The counting rule
=================

A line is *counted* for tunnel ``<sub>`` when all of these hold:

1. It is at most ``max_line_bytes`` long (``MAX_LINE_BYTES``, 16 MiB, by default; the
   workers' ``LOG_LINE_MAX_BYTES``) and valid UTF-8.
2. It is a JSON object (surrounding whitespace and a trailing ``\\r`` are tolerated).
3. It is an access-log entry: it has at least one of the keys in ``ACCESS_KEYS``
   (Traefik's own log lines never carry these capitalised core fields).
4. ``RequestContentSize`` and ``DownstreamContentSize`` are JSON integers in
   ``0 .. MAX_SIZE`` (``2**53 - 1``, see ``MAX_SIZE``). A size field that is *absent*
   (Traefik's ``accessLog.fields`` can drop it) counts as 0 while the request itself is
   still counted.
5. ``RequestHost`` is a string. The host is lower-cased (ASCII letters only, so no
   Unicode case folding can turn a lookalike into a tunnel name), a ``:port`` suffix
   (digits, possibly none) is removed, then one trailing dot is removed. What remains
   must be exactly one DNS label -- 1 to 63 characters of ``a-z0-9-``, not starting or
   ending with ``-`` -- followed by ``"." + domain``. That label is the subdomain.

The counts are: bytes in = ``RequestContentSize``, bytes out = ``DownstreamContentSize``
(body bytes, as Traefik reports them), requests = number of counted lines.

Upgraded connections (unmetered)
================================

A WebSocket (or any ``Upgrade``) session through Traefik is one access line, written
when the connection closes, with both sizes 0: the proxy hijacks the connection and
copies bytes both ways without counting them. Traefik never calls ``WriteHeader`` on a
hijacked connection, so the status it logs is 0, not 101. Seen from a real Traefik
3.7.15 (``tests/e2e/test_traefik_real.py::test_websocket_session_is_one_unmetered_line``),
a session of five 1000-byte echoes closed by the client after 0.5 s::

    {"ClientAddr":"127.0.0.1:47948",...,"DownstreamContentSize":0,"DownstreamStatus":0,
     "Duration":504005459,"OriginContentSize":0,"OriginDuration":503908715,"OriginStatus":0,
     ...,"RequestContentSize":0,...,"RequestHost":"alpha.t.lum.tools","RequestMethod":"GET",
     "RequestPath":"/ws?x=1",...,"RouterName":"tunnel@file",...,"entryPointName":"web",
     "level":"info","msg":"","time":"2026-11-30T06:18:43Z"}

and, when ``accessLog.fields.headers`` keeps them, ``"request_Upgrade":"websocket"``
(and ``request_Connection``, ``origin_Upgrade``, ``downstream_Upgrade``).

A counted line is an *upgraded connection* when ``DownstreamStatus`` is 101, or is 0
with both sizes 0, or is 0 with a non-empty ``request_Upgrade`` header. It is still
counted as a request (with the bytes it logs: 0), and it is also counted, per tunnel,
in ``Aggregator.unmetered``: its traffic went through the tunnel but is in no log.

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

- ``too_long``: longer than ``max_line_bytes`` (checked first). Its length is kept in
  ``Aggregator.too_long_lengths``, for the caller to log.
- ``invalid_utf8``: not valid UTF-8 anywhere in the line. Traefik (Go's JSON encoder)
  never writes invalid UTF-8, so such a line is corrupt and is not trusted.
- ``invalid_json``: starts like a JSON object (``{``) but is not valid JSON, e.g. a
  truncated line, or nested too deeply to decode.
- ``split_line``: a piece of a line over 16 KiB that the kubelet put back together
  wrongly. containerd cuts a longer line into pieces of exactly 16 KiB
  (``max_container_log_line_size``), each stamped when read; the kubelet (1.26 and
  later) re-joins them with one ``isNewLine`` flag for both streams, so a stderr line
  written between two pieces ends up glued to the first piece and the next piece starts
  a line of its own; kubelets before 1.26 put each piece's stamp in front of it, in the
  middle of the line. So: a line that starts with ``{``, is not valid JSON, is at least
  ``SPLIT_PIECE_BYTES`` long and whose first ``SPLIT_PIECE_BYTES`` are a JSON object cut
  short (the first piece), or a line that does not start with ``{`` and ends the way
  Traefik's JSON access lines end, ``,"time":"<RFC 3339>"}`` (a later piece; a piece
  shorter than that end is not recognised). Lines cut elsewhere (another runtime, another
  piece size) stay ``invalid_json`` / ``not_access_log``. Also when the cut splits a
  UTF-8 character (the pieces are then not valid UTF-8 on their own).
- ``not_object``: valid JSON that is not an object (an array, a string, a number...).
- ``bad_host_type``: ``RequestHost`` present but not a string (null included).
- ``bad_size_type``: a size present but not a JSON integer (string, float such as
  ``1.0``, bool, null, array, object).
- ``negative_size``: a size below 0.
- ``size_too_large``: a size above ``MAX_SIZE`` (``2**53 - 1``).

When a line has several defects, the first in the order above wins; within a JSON
object, the host is checked before ``RequestContentSize`` before
``DownstreamContentSize``.

Accounting: ``total == counted + sum(ignored.values()) + sum(rejected.values())`` and
``counted == sum(requests over subdomains)`` always hold.

``access_lines()`` counts the lines known to be access entries: counted ones, the
ignored ``other_host``, ``not_a_tunnel`` and ``no_host``, and the rejected
``bad_host_type``, ``bad_size_type``, ``negative_size`` and ``size_too_large`` (those
reasons imply an access key is present). ``too_long``, ``invalid_utf8``,
``invalid_json``, ``split_line`` and ``not_object`` lines are not counted there (we
cannot tell), nor are CLF lines (reported separately as ``clf_no_host``).

How it is fast
==============

Each line is decoded on its own by a typed msgspec decoder into a small ``Struct``
holding only the three fields needed; sizes carry their range constraint, so type and
range checks happen in C and a bad line raises, sending it to the slow path (which
decodes the same three fields as raw JSON to name the reason). Per-line decoding
keeps the semantics exact -- no damaged line can merge with its neighbours -- and
measured as fast as the batch alternatives: joining lines into one JSON array costs a
copy and a big list for what it saves in calls, and ``Decoder.decode_lines`` (a
whitespace-separated stream, so it needs ``bytes.count`` checks to prove one value per
line) lost more on those checks than it gained. Host classification is cached per
distinct host string (at most 65536 hosts of at most 512 characters; cleared when full); the cache maps a host straight to the
``[in, out, requests]`` list it adds to -- a tunnel's list, or a per-reason bucket for
ignored hosts -- so the common path is one dict lookup and three additions, and a miss
is a ``KeyError``. ``feed_chunk`` checks UTF-8 once per chunk (``bytes.isascii``; per
line only when the chunk holds non-ASCII bytes), and its framing (``LineFramer``) splits
each chunk once and joins a line's pieces once, when its newline arrives. On
``bench/parse.py`` this runs at about 0.8 to 1.1 times a bare loop that only decodes each
line with msgspec, and 5 to 6 times a ``json.loads`` baseline.

Long lines and memory
=====================

Traefik takes request heads up to 1 MiB (Go's ``http.DefaultMaxHeaderBytes``;
``maxHeaderBytes`` from v3.2) and logs ``RequestPath`` whole, query included, so access
lines of hundreds of KiB are legitimate: a bound that drops them lets any client move
traffic unbilled by padding its URLs. The bound (``MAX_LINE_BYTES``) is therefore sized
from what Traefik can write, not from what is usual (see its comment). Lines up to it are
decoded like any other; nothing is found by substring search (``ClientHost`` and
``RequestAddr`` sort before ``RequestHost`` and carry client-chosen text). Memory per line
stays a small multiple of the line's length: the typed decoder builds only the host
string, the slow path decodes raw JSON spans (``msgspec.Raw``) and never builds the
containers a hostile line may hold, UTF-8 is checked in 64 KiB windows, and long hosts
are classified from bounded slices. A line over the bound is never held whole:
``LineFramer`` drops its bytes as they arrive and hands on a ``LongLine`` (its first
bytes and its length), which is rejected as ``too_long``.
"""

from __future__ import annotations

import codecs
import io
import itertools
import operator
import re
from typing import Annotated

import msgspec

# The default bound on a line, in bytes (the workers' LOG_LINE_MAX_BYTES default).
# Traefik takes request heads up to 1 MiB (Go's http.DefaultMaxHeaderBytes = 1 << 20,
# net/http/server.go; Traefik's maxHeaderBytes from v3.2) and logs RequestPath whole.
# Go's encoding/json writes '<', '>', '&' and control bytes as "\u00XX" and each invalid
# UTF-8 byte as "\ufffd": 6 bytes for 1 ((*encodeState).string / stringBytes and
# HTMLEscape in src/encoding/json/encode.go, golang/go; Marshal escapes HTML by default).
# So one maximal head's path can take 6 MiB of a line, and logged headers add more:
# 16 MiB holds that with room. A line over the bound is rejected (too_long), not billed.
MAX_LINE_BYTES = 16 * 1024 * 1024
# The bounds a line bound (LOG_LINE_MAX_BYTES, scan --max-line-bytes) may take, in bytes.
LINE_BOUND_MIN = 4096
LINE_BOUND_MAX = 1 << 29
# Room for what a log transport puts in front of a line: the kubelet's timestamp prefix
# ("2026-11-30T18:08:00.250000000+08:00 ", 36 bytes). The fetch side frames lines at
# max_line_bytes + LINE_PREFIX_ROOM and the parser applies the bound to the text.
LINE_PREFIX_ROOM = 64
# Bytes of an over-bound line kept in its LongLine (a timestamp prefix and a glimpse).
LONG_LINE_HEAD = 256
# Lengths of over-bound lines an Aggregator keeps for logging (the count is unbounded).
TOO_LONG_KEPT = 100
# The largest size a line may carry, in bytes: 2**53 - 1, about 9 PB in one request.
# Traefik logs the bytes it counted (``crr.count`` and ``crw.Size()`` in its accesslog
# middleware), so a larger size is a corrupt line, not traffic: 9 PB take 50 hours at 400
# Gbit/s. One corrupt line near 2**63 stopped its pod's metering for good: ``commit.lua``
# refuses a sum over 9.2e18 and writes nothing, so the same read is refused every round;
# with this bound that takes about 1,020 such lines for one tunnel in one interval. A
# line's size also stays within what I-JSON (RFC 7493, section 2.2) says every JSON
# receiver holds exactly (a sum of several such lines may not).
MAX_SIZE = 2**53 - 1
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
SPLIT_LINE = "split_line"
NOT_OBJECT = "not_object"
BAD_HOST_TYPE = "bad_host_type"
BAD_SIZE_TYPE = "bad_size_type"
NEGATIVE_SIZE = "negative_size"
SIZE_TOO_LARGE = "size_too_large"
REJECTED_REASONS = (
    TOO_LONG,
    INVALID_UTF8,
    INVALID_JSON,
    SPLIT_LINE,
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


# An absent DownstreamStatus decodes as this: above 101, so never an upgraded connection.
_NO_STATUS = 1000


class _Entry(msgspec.Struct, gc=False):
    """The only fields the hot loop reads. Absent host decodes as "" (see no_host).

    ``DownstreamStatus`` and ``request_Upgrade`` only tell upgraded connections apart
    (see "Upgraded connections"); a line where they have another type goes to the slow
    path, which still counts it.
    """

    RequestHost: str = ""
    RequestContentSize: _Size = 0
    DownstreamContentSize: _Size = 0
    DownstreamStatus: int = _NO_STATUS
    request_Upgrade: str = ""


class _LooseEntry(msgspec.Struct, gc=False):
    """The same fields as raw JSON, to tell why the typed decoder refused a line.

    Raw spans are views into the line: decoding validates the whole line but builds no
    value, so a hostile value (say a host of a million empty arrays) costs no memory.
    """

    RequestHost: msgspec.Raw = msgspec.UNSET
    RequestContentSize: msgspec.Raw = msgspec.UNSET
    DownstreamContentSize: msgspec.Raw = msgspec.UNSET
    DownstreamStatus: msgspec.Raw = msgspec.UNSET
    request_Upgrade: msgspec.Raw = msgspec.UNSET


# Which access keys a line holds, as raw spans (other keys are skipped, not built).
_AccessKeys = msgspec.defstruct(
    "_AccessKeys", [(key, msgspec.Raw, msgspec.UNSET) for key in sorted(ACCESS_KEYS)], gc=False
)

_decode_entry = msgspec.json.Decoder(_Entry).decode
_decode_loose = msgspec.json.Decoder(_LooseEntry).decode
_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode  # validates, builds nothing
_decode_access_keys = msgspec.json.Decoder(_AccessKeys).decode
_decode_host = msgspec.json.Decoder(str).decode
_decode_value = msgspec.json.Decoder().decode  # only on short spans (a size's)
# A size span longer than this is never an acceptable size (MAX_SIZE has 16 digits).
_SHORT_SIZE = 32
_INT_LITERAL = re.compile(rb"-?[0-9]+")
_NUMBER_START = frozenset(b"-0123456789")
_MINUS = ord("-")

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
_WITHOUT_NEWLINE = operator.itemgetter(slice(None, -1))  # a line read with its newline, without it
_OPEN_BRACE = ord("{")
_QUOTE = ord('"')
# First bytes of the JSON values that are not objects: array, string, number, literals.
_JSON_VALUE_START = frozenset(b'["-0123456789tfn')


# containerd cuts a line longer than this into pieces of exactly this many bytes
# (max_container_log_line_size, default 16 KiB: redirectLogs in pkg/cri/io/logger.go,
# which stamps each piece when it writes it). See split_line in the module docstring.
SPLIT_PIECE_BYTES = 16 * 1024
# How Traefik's JSON access lines end (logrus' JSONFormatter sorts keys; "time" sorts
# after every core field and every request_/origin_/downstream_ header field).
_TIME_END = re.compile(rb'"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)"\}')
_TIME_KEY = b'"time":"'
_TIME_END_MAX = 48  # len('"time":"2026-11-24T02:52:54.123456789+08:00"}') is 45
_COMMA = ord(",")
_UTF8_CONTINUATION = frozenset(range(0x80, 0xC0))
_TRUNCATED = "Input data was truncated"  # msgspec's message for a cut JSON document


def _upgraded(status: int, size_in: int, size_out: int, upgrade: str) -> bool:
    """An upgraded (hijacked) connection's access line: see "Upgraded connections"."""
    if status == 101:
        return True
    return status == 0 and ((size_in == 0 and size_out == 0) or bool(upgrade))


def _is_cut_json(piece: bytes) -> bool:
    """True when ``piece`` is the beginning of a JSON document that runs past its end:
    msgspec reports truncation, or a malformation at its very last byte (a number cut
    after ``12.`` or ``1e``)."""
    try:
        _decode_raw(piece)
    except msgspec.DecodeError as exc:
        message = str(exc)
        return message == _TRUNCATED or message.endswith(f"(byte {len(piece)})")
    except (UnicodeDecodeError, RecursionError):
        return False
    return False


def _is_split_head(line: bytes) -> bool:
    """The first piece of a line cut by the runtime, with whatever the kubelet put after
    it (a stamp, another stream's line). ``line`` is the log text as the runtime got it
    (not stripped): the piece is its first ``SPLIT_PIECE_BYTES``."""
    return (
        len(line) >= SPLIT_PIECE_BYTES
        and line[0] == _OPEN_BRACE
        and _is_cut_json(line[:SPLIT_PIECE_BYTES])
    )


def _is_json_tail(text: bytes) -> bool:
    """A later piece of a cut access line: not an object's start, and ending as every
    Traefik JSON access line ends (``,"time":"<RFC 3339>"}``)."""
    if not text or text[0] == _OPEN_BRACE or not text.endswith(b'"}'):
        return False
    at = text.rfind(_TIME_KEY, max(0, len(text) - _TIME_END_MAX))
    if at < 0 or (at and text[at - 1] != _COMMA):
        return False
    return _TIME_END.fullmatch(text, at) is not None


def _is_split_utf8(line: bytes) -> bool:
    """A piece of a cut line that is not valid UTF-8 only because the cut fell inside a
    character: a first piece (msgspec takes the cut character for truncation), or a
    later piece starting with the character's continuation bytes."""
    if _is_split_head(line):
        return True
    start = 0
    while start < 3 and start < len(line) and line[start] in _UTF8_CONTINUATION:
        start += 1
    if not start:
        return False
    rest = line[start:].strip(_JSON_SPACE)
    return _is_utf8(rest) and _is_json_tail(rest)


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


# A DNS name: labels of a-z 0-9 - (not at either end), 1-63 characters each, 253 in all.
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def normalise_domain(domain: str) -> str:
    """The tunnel domain as hosts are compared with it: blanks around it and one trailing
    dot removed, ASCII letters lower-cased; it must then be a DNS name (``t.lum.tools``).
    Raises ``ValueError`` otherwise (``*.t.lum.tools``, ``t.lum.tools:443``, a URL, an
    empty label). The one rule for ``TUNNEL_DOMAIN`` (app/settings.py) and ``scan
    --domain``."""
    cleaned = _ascii_lower(domain.strip()).removesuffix(".")
    if not _DNS_NAME.fullmatch(cleaned):
        raise ValueError(f"invalid tunnel domain: {domain[:80]!r} (expected a DNS name such as t.lum.tools)")
    return cleaned


def is_tunnel_label(label: str) -> bool:
    """True if ``label`` is a valid tunnel subdomain: one lower-case DNS label."""
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and _LABEL_CHARS.issuperset(label)
    )


_PORT_DIGITS = re.compile(r"[0-9]*")  # a str pattern: ASCII digits only


def _classify_host(host: str, domain: str) -> tuple[str | None, str]:
    """Return (subdomain, "") for a tunnel host, else (None, ignored reason).

    ``domain`` must already be normalised (lower case, no trailing dot). Works on
    indices and short slices, never on a copy of the whole host: a host can be
    megabytes long, and only its end (the domain) and a label of at most 63 characters
    decide. Lower-casing maps ASCII letters only, so doing it after finding the
    ``:port`` and the trailing dot gives what lower-casing first would.
    """
    if not host:
        return None, NO_HOST
    end = len(host)
    colon = host.rfind(":")
    if colon >= 0 and _PORT_DIGITS.fullmatch(host, colon + 1) is not None:
        end = colon  # a ":port" suffix (digits, possibly none)
    if end and host[end - 1] == ".":
        end -= 1  # one trailing dot
    if end == len(domain) and _ascii_lower(host[:end]) == domain:
        return None, NOT_A_TUNNEL
    start = end - len(domain) - 1  # where "." + domain would start
    if start < 0 or _ascii_lower(host[start:end]) != "." + domain:
        return None, OTHER_HOST
    if start > 63:
        return None, NOT_A_TUNNEL  # longer than any DNS label
    label = _ascii_lower(host[:start])
    if is_tunnel_label(label):
        return label, ""
    return None, NOT_A_TUNNEL


def _remember(cache: dict, host: str, value):
    """Put ``value`` in a per-host cache and return it. Bounded in bytes, not only in
    count: hosts over ``_CACHE_HOST_MAX`` characters are not kept, and a full cache
    (``_CACHE_MAX`` hosts) is emptied first."""
    if len(host) <= _CACHE_HOST_MAX:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[host] = value
    return value


def tunnel_subdomain(host: str, domain: str = DEFAULT_DOMAIN) -> str | None:
    """The tunnel subdomain a ``RequestHost`` value counts for, or None.

    Applies the counting rule's host clause (see the module docstring).
    """
    if not isinstance(host, str):
        return None
    sub, _reason = _classify_host(host, normalise_domain(domain))
    return sub


_UTF8_WINDOW = 64 * 1024


def _is_utf8(data: bytes) -> bool:
    """True if ``data`` is valid UTF-8. Long data is checked in windows, so that no
    string of the whole line (up to 4 bytes a character) is ever built."""
    try:
        if len(data) <= _UTF8_WINDOW:
            data.decode("utf-8")
        else:
            check = codecs.getincrementaldecoder("utf-8")().decode
            view = memoryview(data)
            for start in range(0, len(view), _UTF8_WINDOW):
                check(view[start : start + _UTF8_WINDOW])
            check(b"", True)
    except UnicodeDecodeError:
        return False
    return True


def _size_problem(value: object) -> str:
    """The rejection reason for a size value, or "" if it is acceptable."""
    if type(value) is not int:  # bool is a subclass of int: excluded on purpose
        return BAD_SIZE_TYPE
    if value < 0:
        return NEGATIVE_SIZE
    if value > MAX_SIZE:
        return SIZE_TOO_LARGE
    return ""


def _raw_int(raw: msgspec.Raw) -> int | None:
    """A short raw JSON integer's value (a status), else None (absent, or anything else)."""
    if raw is msgspec.UNSET or len(raw) > _SHORT_SIZE:
        return None
    try:
        value = _decode_value(raw)
    except _DECODE_ERRORS:
        return None
    return value if type(value) is int else None


def _raw_size(raw: msgspec.Raw) -> tuple[int, str]:
    """A size field's raw JSON: ``(value, "")`` when acceptable, else ``(0, reason)``.

    Only short spans are decoded. A longer one is never an acceptable size, and its
    reason follows from its form, as decoding it would give: not a JSON integer (a
    float, a string, a container...) is ``bad_size_type``; an integer (JSON has no
    leading zeros, so it has more digits than ``MAX_SIZE``) is ``negative_size`` or
    ``size_too_large`` by its sign.
    """
    if len(raw) <= _SHORT_SIZE:
        try:
            value = _decode_value(raw)
        except _DECODE_ERRORS:  # a float out of range, such as 1e999
            return 0, BAD_SIZE_TYPE
        problem = _size_problem(value)
        return (0, problem) if problem else (value, "")
    view = memoryview(raw)
    if view[0] not in _NUMBER_START or _INT_LITERAL.fullmatch(view) is None:
        return 0, BAD_SIZE_TYPE
    return 0, NEGATIVE_SIZE if view[0] == _MINUS else SIZE_TOO_LARGE


class LongLine(bytes):
    """Stands in for a line longer than the bound, which is never held whole.

    Its bytes are the line's first ``LONG_LINE_HEAD`` bytes (room for a timestamp
    prefix), then ``0xFF`` and the line's length in decimal; ``length`` is that length in
    bytes (without the newline). ``0xFF`` is never valid UTF-8, so code that takes a
    LongLine for an ordinary line can only reject it, never count it; ``Aggregator``
    rejects it as ``too_long`` and keeps its length. Slicing off a prefix (``line[off:]``,
    as ``app.fetching.consume`` drops the kubelet's timestamp) gives the LongLine of the
    rest; other slices are plain bytes.
    """

    length: int

    def __new__(cls, head: bytes, length: int) -> LongLine:
        head = bytes(head[:LONG_LINE_HEAD])
        self = super().__new__(cls, head + b"\xff%d" % length)
        self.length = length
        self._head_size = len(head)
        return self

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, slice) and key.stop is None and key.step is None:
            start = key.start or 0
            if 0 <= start <= self._head_size:
                return LongLine(bytes.__getitem__(self, slice(start, self._head_size)), self.length - start)
        return bytes.__getitem__(self, key)

    def __reduce__(self):
        return (LongLine, (bytes.__getitem__(self, slice(0, self._head_size)), self.length))

    def __repr__(self) -> str:
        return f"LongLine(length={self.length}, head={bytes.__getitem__(self, slice(0, min(40, self._head_size)))!r})"


def _first_bytes(pieces: list[bytes], last: bytes, count: int) -> bytes:
    """The first ``count`` bytes of ``pieces`` followed by ``last``."""
    head = b""
    for piece in itertools.chain(pieces, (last,)):
        head += piece[: count - len(head)]
        if len(head) >= count:
            break
    return head


class LineFramer:
    """Cuts a byte stream into lines (without their newline), in time and memory linear
    in the stream's size, whatever its chunking.

    ``feed(chunk)`` returns the lines the chunk completes and keeps the unfinished last
    line as a list of pieces, joined once when its newline arrives: a line of L bytes
    arriving in chunks of c bytes costs O(L), not O(L * L / c). A line longer than
    ``max_line_bytes`` is not held: as soon as it is known to be too long its pieces are
    dropped (its first bytes are kept), the rest of its bytes are only counted, and at
    its newline it comes out as a ``LongLine``; the next line starts clean. So the framer
    holds at most ``max_line_bytes`` of a line (joining a line just under the bound
    briefly needs twice that), and a chunk's own lines are as long as the chunk allows.
    ``finish()`` returns the unfinished last line, if any: a caller that must never
    take a partial line (a log read cut by ``limitBytes``) does not call it.

    The one framing of the product: ``Aggregator.feed_chunk`` (and so ``scan``) and
    ``app.fetching.consume`` use it. Chunks are ``bytes``.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, not {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self._pieces: list[bytes] = []
        self._size = 0  # bytes of the unfinished line so far, held or dropped
        self._head: bytes | None = None  # set once the unfinished line is too long

    @property
    def pending(self) -> int:
        """Bytes of the unfinished last line so far (held or dropped)."""
        return self._size

    @property
    def held(self) -> int:
        """Bytes of the unfinished last line held (at most ``max_line_bytes``)."""
        return 0 if self._head is not None else self._size

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, in order; over-long ones as ``LongLine``."""
        if not chunk:
            return []
        # BytesIO's readlines finds each newline with memchr (scan_eol in CPython's
        # Modules/_io/bytesio.c) and shares the chunk's buffer; bytes.split looks at every
        # byte in a loop of its own (split_char in Objects/stringlib/split.h: "I found
        # that using memchr makes no difference"). On kubelet-served Traefik lines of
        # about 1.3 KB, readlines and the newline's removal took 2,700 instructions a
        # line against split's 7,400 (callgrind).
        lines = io.BytesIO(chunk).readlines()
        rest = lines.pop() if lines[-1][-1:] != b"\n" else b""
        lines = list(map(_WITHOUT_NEWLINE, lines))
        if lines:
            if self._size:
                lines[0] = self._complete(lines[0])
            if len(chunk) > self.max_line_bytes:  # only then can a line inside it be too long
                limit = self.max_line_bytes
                for index, line in enumerate(lines):
                    if len(line) > limit and type(line) is not LongLine:
                        lines[index] = LongLine(line, len(line))
        if rest:
            self._add(rest)
        return lines

    def finish(self) -> bytes | None:
        """End of stream: the unfinished last line (bytes or ``LongLine``), or None."""
        return self._complete(b"") if self._size else None

    def _add(self, data: bytes) -> None:
        size = self._size + len(data)
        if self._head is None:
            if size <= self.max_line_bytes:
                self._pieces.append(data)
            else:  # too long: keep its head, from now on only count its bytes
                self._head = _first_bytes(self._pieces, data, LONG_LINE_HEAD)
                self._pieces = []
        elif len(self._head) < LONG_LINE_HEAD:  # only with a bound below the head's size
            self._head += data[: LONG_LINE_HEAD - len(self._head)]
        self._size = size

    def _complete(self, last: bytes) -> bytes:
        size = self._size + len(last)
        if self._head is not None:
            line: bytes = LongLine(self._head + last[: LONG_LINE_HEAD - len(self._head)], size)
        elif size > self.max_line_bytes:
            line = LongLine(_first_bytes(self._pieces, last, LONG_LINE_HEAD), size)
        else:
            self._pieces.append(last)
            line = b"".join(self._pieces)
        self._pieces = []
        self._size = 0
        self._head = None
        return line


class Aggregator:
    """Sums tunnel traffic over access-log lines and counts the others by reason.

    Attributes (read them, do not replace them):

    - ``subdomains``: ``{sub: [bytes_in, bytes_out, requests]}``
    - ``unmetered``: ``{sub: upgraded connections}`` among the counted requests, only
      tunnels that had one (see "Upgraded connections")
    - ``total``: lines seen; ``counted``: lines counted for a tunnel
    - ``ignored`` / ``rejected``: ``{reason: lines}``, only reasons seen
    - ``max_line_bytes``: the bound on a line's length (``too_long`` beyond it)
    - ``too_long_lengths``: the lengths in bytes of the lines rejected as ``too_long``,
      in order (the first ``TOO_LONG_KEPT``; ``rejected["too_long"]`` counts them all),
      for the caller to log with what it knows of their source

    Feed it complete lines (``feed_lines``) or raw stream chunks (``feed_chunk`` and,
    at the end of the stream, ``finish``). Chunks are framed by a ``LineFramer``: a line
    over the bound is never held whole, and an unfinished last line waits for its
    newline (or ``finish``).
    """

    def __init__(self, domain: str = DEFAULT_DOMAIN, max_line_bytes: int = MAX_LINE_BYTES,
                 hosts: dict[str, tuple[str | None, str]] | None = None) -> None:
        """``hosts``: a cache of host -> ``(subdomain or None, ignored reason)`` to share
        with other aggregators of the same domain (``app.fetching.IntervalSums`` gives its
        per-interval aggregators one, so a read classifies each host once, not once per
        interval); by default this aggregator's own."""
        self.domain = normalise_domain(domain)
        self._hosts = {} if hosts is None else hosts
        self._framer = LineFramer(max_line_bytes)
        self.max_line_bytes = max_line_bytes
        self.too_long_lengths: list[int] = []
        self.subdomains: dict[str, list[int]] = {}
        self.unmetered: dict[str, int] = {}
        self.total = 0
        self.counted = 0
        self.ignored: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        # host string -> the [in, out, requests] list its lines add to.
        self._slots: dict[str, list[int]] = {}
        # Per-reason scratch lists for ignored hosts; flushed into `ignored` after
        # each feed call, so `ignored` is always current between calls.
        self._buckets: dict[str, list[int]] = {reason: [0, 0, 0] for reason in IGNORED_REASONS}

    # -- feeding -------------------------------------------------------------------

    def feed_lines(self, lines: list[bytes]) -> None:
        """Process complete lines (without their newline; a trailing CR is fine).

        A ``LongLine`` (what ``LineFramer`` gives for a line over its bound) is rejected
        as ``too_long`` with its length, like a line over ``max_line_bytes``.
        """
        if not lines:
            return
        try:
            utf8_ok = all(map(bytes.isascii, lines))
        except TypeError:  # bytearray or memoryview items: work on bytes copies
            lines = [line if isinstance(line, bytes) else bytes(line) for line in lines]
            utf8_ok = all(map(bytes.isascii, lines))
        self._feed(lines, utf8_ok, max(map(len, lines)) > self.max_line_bytes)

    def feed_chunk(self, chunk: bytes) -> None:
        """Process the lines ``chunk`` completes; keep its unfinished last line.

        Pass the chunks of a stream in order, then call ``finish``.
        """
        lines = self._framer.feed(chunk)
        if not lines:
            return
        if len(chunk) <= self.max_line_bytes:
            # Only the first line can hold bytes of earlier chunks, or be a LongLine
            # (never ASCII); the framer's other lines are slices of this chunk.
            utf8_ok = chunk.isascii() and lines[0].isascii()
        else:
            utf8_ok = all(map(bytes.isascii, lines))
        self._feed(lines, utf8_ok, False)  # the framer's plain lines are within the bound

    def finish(self) -> None:
        """End of stream: process the unfinished last line (no newline), if any."""
        line = self._framer.finish()
        if line is not None:
            self.feed_lines([line])

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
        for sub, count in other.unmetered.items():
            self.unmetered[sub] = self.unmetered.get(sub, 0) + count
        self.total += other.total
        self.counted += other.counted
        for reason, count in other.ignored.items():
            self.ignored[reason] = self.ignored.get(reason, 0) + count
        for reason, count in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        room = TOO_LONG_KEPT - len(self.too_long_lengths)
        self.too_long_lengths.extend(other.too_long_lengths[: max(room, 0)])

    def access_lines(self) -> int:
        """Lines known to be access-log entries (see the module docstring)."""
        return (
            self.counted
            + sum(self.ignored.get(reason, 0) for reason in _ACCESS_IGNORED)
            + sum(self.rejected.get(reason, 0) for reason in _ACCESS_REJECTED)
        )

    def to_dict(self) -> dict:
        """The ``scan --json`` shape; subdomains and reasons in sorted order.

        ``unmetered`` (added after ``subdomains`` and ``lines``, always present): per
        tunnel, how many of its counted requests were upgraded connections whose
        traffic the access log does not show.
        """
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
            "unmetered": dict(sorted(self.unmetered.items())),
        }

    # -- internals -----------------------------------------------------------------

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _too_long(self, length: int) -> None:
        self._reject(TOO_LONG)
        if len(self.too_long_lengths) < TOO_LONG_KEPT:
            self.too_long_lengths.append(length)

    def _feed(self, lines: list[bytes], utf8_ok: bool, may_hold_long: bool) -> None:
        self.total += len(lines)
        if may_hold_long:
            lines = self._drop_long(lines)
        if not utf8_ok:
            lines = self._drop_invalid_utf8(lines)

        odd: list[bytes] = []
        maybe_upgraded: list[_Entry] = []
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
            if entry.DownstreamStatus <= 101:  # 0 or 101: maybe an upgraded connection (rare)
                maybe_upgraded.append(entry)
        for entry in maybe_upgraded:
            if _upgraded(entry.DownstreamStatus, entry.RequestContentSize, entry.DownstreamContentSize,
                         entry.request_Upgrade):
                self._count_unmetered(entry.RequestHost)

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
        limit = self.max_line_bytes
        for line in lines:
            if len(line) > limit:
                self._too_long(len(line))
            else:
                kept.append(line)
        return kept

    def _drop_invalid_utf8(self, lines: list[bytes]) -> list[bytes]:
        kept = []
        for line in lines:
            if line.isascii() or _is_utf8(line):
                kept.append(line)
            elif type(line) is LongLine:  # never UTF-8 (see LongLine): too long, first
                self._too_long(line.length)
            elif _is_split_utf8(line):
                self._reject(SPLIT_LINE)
            else:
                self._reject(INVALID_UTF8)
        return kept

    def _resolve(self, host: str, line: bytes) -> list[int]:
        """Cache miss: find the list a host's lines add to (tunnel or ignored bucket)."""
        if not host:
            # Absent or empty RequestHost: an access entry without a host, or not an
            # access entry at all (e.g. Traefik's own JSON log line). Not cached.
            return self._buckets[NO_HOST if self._has_access_key(line) else NOT_ACCESS_LOG]
        classified = self._hosts.get(host)
        if classified is None:
            classified = _remember(self._hosts, host, _classify_host(host, self.domain))
        sub, reason = classified
        if sub is None:
            slot = self._buckets[reason]
        else:
            slot = self.subdomains.get(sub)
            if slot is None:
                slot = self.subdomains[sub] = [0, 0, 0]
        return _remember(self._slots, host, slot)

    @staticmethod
    def _has_access_key(line: bytes) -> bool:
        try:
            keys = _decode_access_keys(line)
        except _DECODE_ERRORS:
            return False
        return msgspec.structs.astuple(keys).count(msgspec.UNSET) < len(ACCESS_KEYS)

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
                self._reject(SPLIT_LINE if _is_split_head(line) else INVALID_JSON)
                return
            self._classify_object(loose, text)
            return
        if first in _JSON_VALUE_START:
            try:
                _decode_raw(text)  # validates the value without building it
            except RecursionError:  # an array nested deeper than msgspec decodes
                self._reject(NOT_OBJECT)
                return
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass  # not JSON: text, see below
            else:
                self._reject(NOT_OBJECT)
                return
        if _is_json_tail(text):
            self._reject(SPLIT_LINE)
            return
        self._ignore(CLF_NO_HOST if _is_clf(text) else NOT_ACCESS_LOG)

    def _classify_object(self, loose: _LooseEntry, text: bytes) -> None:
        """A JSON object the typed decoder refused: find which field is wrong."""
        host = ""
        if loose.RequestHost is not msgspec.UNSET:
            if memoryview(loose.RequestHost)[0] != _QUOTE:
                self._reject(BAD_HOST_TYPE)
                return
            try:
                host = _decode_host(loose.RequestHost)
            except _DECODE_ERRORS:  # not expected: the raw decode validated it
                self._reject(INVALID_JSON)
                return
        sizes = [0, 0]
        for index, raw in enumerate((loose.RequestContentSize, loose.DownstreamContentSize)):
            if raw is not msgspec.UNSET:
                sizes[index], problem = _raw_size(raw)
                if problem:
                    self._reject(problem)
                    return
        # Nothing wrong found (not expected: the typed decoder refused the line for one
        # of the reasons above). Apply the rule to the decoded values rather than lose it.
        if not host:
            self._ignore(NO_HOST if self._has_access_key(text) else NOT_ACCESS_LOG)
            return
        sub, reason = _classify_host(host, self.domain)
        if sub is None:
            self._ignore(reason)
            return
        slot = self.subdomains.setdefault(sub, [0, 0, 0])
        slot[0] += sizes[0]
        slot[1] += sizes[1]
        slot[2] += 1
        self.counted += 1
        status = _raw_int(loose.DownstreamStatus)
        upgrade = loose.request_Upgrade
        has_upgrade = upgrade is not msgspec.UNSET and memoryview(upgrade)[0] == _QUOTE and len(upgrade) > 2
        if status is not None and _upgraded(status, sizes[0], sizes[1], "x" if has_upgrade else ""):
            self.unmetered[sub] = self.unmetered.get(sub, 0) + 1

    def _count_unmetered(self, host: str) -> None:
        """One upgraded connection for the tunnel of ``host``, if it is one (rare: not cached)."""
        if not host:
            return
        sub, _reason = _classify_host(host, self.domain)
        if sub is not None:
            self.unmetered[sub] = self.unmetered.get(sub, 0) + 1
