"""The Redis ledger: cursors, per-interval counts, report records, dead letters, counters.

The keys (all under ``<REDIS_KEY_PREFIX>:``) and report states: docs/design.md, "Redis key schema".

Subdomains are validated before they become part of a key (``valid_subdomain``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources

import redis

from app.model import CommitStatus, ReportKey, ReportState
from app.watermark import Listed, Listing, ReadRecord

SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PODFETCH_TTL = 86400  # seconds a pod's fetch metrics outlive its last fetch
# Undelivered reports by state and the oldest interval among them, in one pass inside
# Redis (a day's platform outage is ~1,440 intervals x tunnels: not worth a round trip each).
REPORT_STATES_LUA = """
-- ARGV: prefix, report interval (s). The oldest: the earliest sealed_at (when the report
-- was made); a report made by a version without it, its interval's end.
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local counts = {}
local oldest = -1
for _, m in ipairs(members) do
  local v = redis.call('HMGET', ARGV[1] .. ':rep:' .. m, 'state', 'sealed_at')
  local state = v[1] or 'missing'
  counts[state] = (counts[state] or 0) + 1
  local made = tonumber(v[2])
  if not made then
    local start = tonumber(string.match(m, '^(%d+):'))
    if start then made = start + tonumber(ARGV[2]) end
  end
  if made and (oldest < 0 or made < oldest) then oldest = made end
end
local out = {tostring(oldest)}
for state, n in pairs(counts) do
  out[#out + 1] = state
  out[#out + 1] = tostring(n)
end
return out
"""
MAX_GAPS = 1000
# The init record's fields naming what the ledger's reports are made under (part of each
# Idempotency-Key and body), and the variables that set them.
IDENTITY = {"report_interval": "REPORT_INTERVAL", "scraper_id": "SCRAPER_ID"}
PARKED_MARKER_TTL = 86400  # seconds the "a report was parked" marker lasts if no success wakes it


class ReportsWaiting(Exception):
    """``Ledger.initialise(idle_only=True)`` found reports not final: ``waiting`` in the
    due set, ``dead`` dead-lettered."""

    def __init__(self, waiting: int, dead: int) -> None:
        super().__init__(f"{waiting} report(s) waiting and {dead} dead-lettered")
        self.waiting, self.dead = waiting, dead


def _done_report(key: ReportKey, raw: str) -> Report:
    """A report read from its interval's done hash (the field ``finish.lua`` writes)."""
    state, bi, bo, rq, attempts, unmetered, at, user_id = raw.split(" ", 7)
    return Report(key.start, key.subdomain, int(bi), int(bo), int(rq), ReportState(state), int(attempts), "",
                  int(unmetered), user_id, float(at), amendment=key.amendment)


_FINAL_STATES = frozenset(s.value.encode() for s in ReportState if s.final)


def _write_off_entries(raw: list) -> list[dict[str, str]]:
    """Stream entries of ``writeoffs`` as dicts of strings, with their ``id``."""
    return [{"id": entry_id.decode(), **{k.decode(): v.decode(errors="replace") for k, v in fields.items()}}
            for entry_id, fields in raw]


def valid_subdomain(sub: str) -> bool:
    return bool(SUBDOMAIN.match(sub))


def lua_script(name: str) -> str:
    """The text of the Lua script ``app/lua/<name>``."""
    return resources.files("app").joinpath("lua", name).read_text()


@lru_cache(maxsize=1024)
def iso(ts: int) -> str:
    """Interval id: its UTC start, e.g. ``2026-11-24T01:50:00Z`` (cached: every report of
    an interval asks for the same few)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CommitResult:
    status: CommitStatus
    detail: str  # the winning cursor (read after the conflict), or the subdomain (overflow)
    digest: str = ""  # on a conflict: SHA-1 of the cursor the script compared ("" = none)
    intervals: tuple[int, ...] = ()  # ok: the interval starts written (counts or amendments)
    amendments: int = 0  # ok: amendment reports made (lines of sealed intervals)
    expired: int = 0  # ok: requests of intervals older than the retention, not reported


@dataclass(frozen=True)
class Partial:
    """One read's sums for one report interval: ``subdomains`` ``{sub: [bytes_in,
    bytes_out, requests]}`` and ``unmetered`` ``{sub: upgraded connections}``."""

    subdomains: dict[str, list[int]]
    unmetered: dict[str, int] = dc_field(default_factory=dict)


def cursor_digest(raw: str) -> str:
    """What ``commit.lua`` compares: the SHA-1 (hex) of an encoded cursor, "" for none."""
    return hashlib.sha1(raw.encode()).hexdigest() if raw else ""


@dataclass(frozen=True)
class Report:
    start: int
    subdomain: str
    bytes_in: int
    bytes_out: int
    requests: int
    state: ReportState
    attempts: int
    reason: str
    unmetered: int = 0  # upgraded connections among the requests (not sent to the platform)
    user_id: str = ""  # the platform's answer, once delivered
    delivered_at: float | None = None  # Redis time of the final answer (delivered or skipped)
    amendment: int = 0  # 0: the interval's original report; n: its n-th amendment
    sealed_at: float | None = None  # Redis time the report was made (its interval sealed, or the amendment)
    probe: bool = False  # the sweep made it claimable to probe the platform (probe.lua): one attempt, then parked

    @property
    def key(self) -> ReportKey:
        return ReportKey(self.start, self.subdomain, self.amendment)


class Ledger:
    """Typed access to the ledger keys. Safe to share between threads."""

    def __init__(self, r: redis.Redis, prefix: str, report_interval: int, retention: int = 7 * 86400) -> None:
        self.r = r
        self.p = prefix
        self.ri = report_interval
        self.retention = retention  # INTERVAL_RETENTION: lines of intervals older than it are not reported
        self._commit = r.register_script(lua_script("commit.lua"))
        self._seal = r.register_script(lua_script("seal.lua"))
        self._claim = r.register_script(lua_script("claim.lua"))
        self._reserve = r.register_script(lua_script("reserve_retry.lua"))
        self._hold = r.register_script(lua_script("hold.lua"))
        self._wake = r.register_script(lua_script("wake.lua"))
        self._probe = r.register_script(lua_script("probe.lua"))
        self._states = r.register_script(REPORT_STATES_LUA)
        self._begin = r.register_script(lua_script("begin.lua"))
        self._finish = r.register_script(lua_script("finish.lua"))
        self._write_off = r.register_script(lua_script("write_off.lua"))

    def k(self, *parts: object) -> str:
        return ":".join([self.p, *map(str, parts)])

    # Time and initialisation --------------------------------------------------

    def now(self) -> float:
        """Redis server time: the one clock all processes share."""
        s, us = self.r.time()
        return s + us / 1e6

    def init_record(self) -> dict[str, str] | None:
        rec = self.r.hgetall(self.k("init"))
        return {k.decode(): v.decode() for k, v in rec.items()} or None

    def start_at_ns(self) -> int | None:
        rec = self.init_record()
        return int(rec["start_at_ns"]) if rec else None

    def start_ahead_ns(self, record: dict[str, str] | None = None) -> int | None:
        """The ledger's start (ns) when it is still ahead of Redis time, else None: lines
        logged before it are never billed. ``record``: the ``init_record()`` already read."""
        record = self.init_record() if record is None else record
        start = int(record["start_at_ns"]) if record else None
        return start if start is not None and start > self.now() * 1e9 else None

    def write_off_count(self) -> int:
        """How many audit entries ``writeoffs`` holds (``write_offs()``'s length)."""
        return int(self.r.xlen(self.k("writeoffs")))

    def has_data(self) -> bool:
        """Anything under the prefix besides plan-round markers and the pod watcher's
        leader lease (``watcher:leader``, which a watcher may take before the ledger is
        initialised)."""
        skip = (self.k("round") + ":", self.k("watcher") + ":")
        for key in self.r.scan_iter(match=self.p + ":*", count=500):
            if not key.decode().startswith(skip):
                return True
        return False

    def initialise(self, start_at_ns: int | None, force: bool = False, scraper_id: str | None = None,
                   idle_only: bool = False) -> bool:
        """Create the initialisation record: ``start_at_ns``, ``created_at``, and the
        identity its reports are made under (``report_interval``: this ledger's interval
        length; ``scraper_id`` when given). Returns False when it already existed.
        ``idle_only``: raises ``ReportsWaiting`` instead when a report is waiting (the due
        set) or dead-lettered, checked in the same transaction as the write."""
        now = self.now()
        start = start_at_ns if start_at_ns is not None else int(now * 1e9)
        fields = {"start_at_ns": str(start), "created_at": f"{now:.3f}", "report_interval": str(self.ri)}
        if scraper_id is not None:
            fields["scraper_id"] = scraper_id
        key = self.k("init")
        created = [False]

        def create(pipe: redis.client.Pipeline) -> None:
            # Whole or not at all: an existing record (an earlier version's too) is left as it is.
            created[0] = False  # (run again when the key changed meanwhile)
            if not force and pipe.exists(key):
                return
            if idle_only:
                waiting, dead = pipe.zcard(self.k("due")), pipe.zcard(self.k("dead"))
                if waiting or dead:
                    raise ReportsWaiting(waiting, dead)
            pipe.multi()
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            created[0] = True

        self.r.transaction(create, key, self.k("due"), self.k("dead"))
        return created[0]

    def identity(self, scraper_id: str) -> dict[str, str]:
        """The ``IDENTITY`` fields of a process with this ledger and ``scraper_id``."""
        return {"report_interval": str(self.ri), "scraper_id": scraper_id}

    def identity_problem(self, record: dict[str, str], scraper_id: str, adopt: bool = True,
                         consequence: str | None = None) -> str | None:
        """Why this process must not work on the ledger whose initialisation record is
        ``record`` (``init_record()``), or None. A report's ``Idempotency-Key`` and body
        come from ``REPORT_INTERVAL`` and ``SCRAPER_ID`` when it is sent: with other
        values than those its interval was counted under, a report made before the change
        would go out under another key, which a platform that had its first attempt
        bills again (docs/design.md, "Changing REPORT_INTERVAL or SCRAPER_ID"). A record
        without them (made by an earlier version) takes this process's values, unless
        ``adopt`` is false (a command that only reads them: no problem then).
        ``consequence``: what would go wrong, said instead of the sending process's, for a
        command that sends nothing (the fix is then only to set the ledger's value)."""
        wanted = self.identity(scraper_id)
        missing = {name: value for name, value in wanted.items() if name not in record}
        if missing and adopt:
            self._adopt(missing)
            record = self.init_record() or record  # what was adopted: this process's, or another's first
        for name, variable in IDENTITY.items():
            recorded = record.get(name)
            if recorded is not None and recorded != wanted[name]:
                head = (f"{variable} is {wanted[name][:63]!r} but the ledger under prefix {self.p!r} makes its "
                        f"reports with {variable}={recorded[:63]!r}")
                if consequence is not None:
                    return f"{head}: {consequence}; set {variable}={recorded[:63]!r}"
                return (f"{head}: reports not yet delivered would go out under new Idempotency-Keys; set "
                        f"{variable}={recorded[:63]!r}, or change it with `traefik-metrics-scraper init-ledger "
                        "--force` once no report is waiting or dead-lettered")
        return None

    def _adopt(self, fields: dict[str, str]) -> None:
        """Add ``fields`` to the initialisation record where absent, if it still exists."""
        key = self.k("init")

        def add(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(key):
                return
            pipe.multi()
            for name, value in fields.items():
                pipe.hsetnx(key, name, value)

        self.r.transaction(add, key)

    # Cursors and pods -----------------------------------------------------------

    def cursor_raw(self, field: str) -> str:
        raw = self.r.hget(self.k("cursors"), field)
        return raw.decode() if raw else ""

    def commit(
        self,
        field: str,
        expected: str,
        new: str,
        partial: dict[str, list[int]] | None = None,
        counters: dict[str, int] | None = None,
        unmetered: dict[str, int] | None = None,
        *,
        parts: dict[int, Partial] | None = None,
        interval: int | None = None,
        source: str = "",
        record: str = "",
    ) -> CommitResult:
        """Atomically (``commit.lua``): if the stored cursor is still ``expected``
        (compared by digest), add each part's sums to its report interval (``parts``:
        interval start -> ``Partial``), store ``new``, write the read ``record`` of
        ``source`` (a pod's uid or a file's cursor field; see ``read_record``; "" = none)
        and add the counters.

        A part of a sealed interval becomes one amendment report per subdomain; one of an
        interval that ended more than ``self.retention`` seconds ago is not reported (its
        requests are counted as ``lines_expired``; ``retention``: ``INTERVAL_RETENTION``). ``partial`` / ``unmetered`` (one
        part) go to ``interval``, by default the one that holds Redis time now (tests)."""
        if parts is None:
            parts = {}
            if partial:
                start = interval if interval is not None else int(self.now()) // self.ri * self.ri
                parts[start] = Partial(partial, unmetered or {})
        args: list[object] = [self.p, field, cursor_digest(expected), new, self.ri, self.retention, source, record,
                              len(parts)]
        for start, part in sorted(parts.items()):
            args += [start, len(part.subdomains)]
            for sub, (bi, bo, rq) in part.subdomains.items():
                args += [sub, bi, bo, rq]
            upgraded = {sub: n for sub, n in part.unmetered.items() if n and sub in part.subdomains}
            args.append(len(upgraded))
            for sub, n in upgraded.items():
                args += [sub, n]
        nonzero = {k: v for k, v in (counters or {}).items() if v}
        args.append(len(nonzero))
        for name, inc in nonzero.items():
            args += [name, inc]
        keys = [self.k("init"), self.k("cursors"), self.k("stats"), self.k("open"), self.k("sealed"),
                self.k("unmetered"), self.k("due"), self.k("sealedto"), self.k("reads"), self.k("readfail"),
                self.k("history")]
        out = [x.decode() for x in self._commit(keys=keys, args=args)]
        status = CommitStatus(out[0])
        if status == CommitStatus.CONFLICT:
            # The script answers with a digest only; the winning cursor, for messages, is
            # read now (rare: a duplicated or concurrent fetch).
            return CommitResult(CommitStatus.CONFLICT, self.cursor_raw(field), out[1])
        if status != CommitStatus.OK:
            return CommitResult(status, out[1])
        written = tuple(int(x) for x in out[1].split(",") if x)
        return CommitResult(status, out[1], intervals=written, amendments=int(out[2]), expired=int(out[3]))

    # The watermark's inputs ------------------------------------------------------------

    @staticmethod
    def read_record(marker: str, end_at: float | None, high_ns: int) -> str:
        """The ``record`` argument of ``commit``: the log read (``marker``: a container
        id, "" for a file; no spaces), the Redis time (s) the read started if it reached
        the end of the log (None: it was cut at ``limitBytes``), the highest stamp
        consumed (ns)."""
        return f"{marker} {'-' if end_at is None else f'{end_at:.3f}'} {high_ns}"

    def mark_read_to_end(self, uid: str, container_id: str, ttl: int = 600) -> None:
        """Say that container ``container_id`` of pod ``uid`` had stopped and its log was
        read to its end (by its follower, ``app/follow.py``), for the pod watcher, which may
        find the pod gone before its own final read. Kept ``ttl`` seconds."""
        self.r.set(self.k("readtoend", uid), container_id, ex=ttl)

    def read_to_end(self, uid: str) -> str:
        """The container of pod ``uid`` whose log ``mark_read_to_end`` says was read to its
        end ("" when none)."""
        raw = self.r.get(self.k("readtoend", uid))
        return raw.decode() if raw else ""

    def note_read_failure(self, field: str) -> None:
        """A read of source ``field`` (a pod's uid, ``file:<identity>``) failed: from the first such failure since its last
        commit, the source holds sealing back at most ``SEAL_MAX_WAIT``."""
        self.r.hsetnx(self.k("readfail"), field, f"{self.now():.3f}")

    def read_records(self) -> dict[str, ReadRecord]:
        """Source (a pod's uid, ``file:<identity>``) -> its ``ReadRecord`` (``reads`` and
        ``readfail`` hashes)."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.k("reads"))
            pipe.hgetall(self.k("readfail"))
            reads, fails = pipe.execute()
        out: dict[str, ReadRecord] = {}
        for raw_field, raw in reads.items():
            marker, end_at, high = raw.decode().split(" ")
            out[raw_field.decode()] = ReadRecord(marker, None if end_at == "-" else float(end_at), int(high))
        for raw_field, since in fails.items():
            f = raw_field.decode()
            rec = out.get(f, ReadRecord())
            out[f] = ReadRecord(rec.marker, rec.end_at, rec.high_ns, float(since))
        return out

    def note_listing(self, name: str, at: float, sources: dict[str, tuple[str, str | None]]) -> None:
        """Record a plan's listing ``name`` (``pods``, or a file host's queue): the Redis
        time ``at`` just before it asked, and its sources, field -> (name, marker)."""
        doc = {"at": at, "sources": {f: [n, m] for f, (n, m) in sources.items()}}
        with self.r.pipeline() as pipe:
            pipe.hset(self.k("listing"), name, json.dumps(doc, sort_keys=True))
            pipe.hdel(self.k("listingfail"), name)
            pipe.execute()

    def note_listing_failure(self, name: str) -> None:
        """A plan could not list (``name`` as in ``note_listing``): from its first failure
        since the last listing, the listing holds sealing back at most ``SEAL_MAX_WAIT``."""
        self.r.hsetnx(self.k("listingfail"), name, f"{self.now():.3f}")

    def listings(self, names: list[str] | None = None) -> list[Listing]:
        """The listings recorded (only ``names`` when given)."""
        raw = self.r.hgetall(self.k("listing"))
        fails = {k.decode(): float(v) for k, v in self.r.hgetall(self.k("listingfail")).items()}
        out = []
        for key, value in sorted(raw.items()):
            name = key.decode()
            if names is not None and name not in names:
                continue
            doc = json.loads(value)
            sources = {f: Listed(n, m) for f, (n, m) in doc["sources"].items()}
            pods = name == "pods"
            out.append(Listing(float(doc["at"]), sources, "pod listing" if pods else f"file listing {name}",
                               fails.get(name), key=name))
        return out

    def drop_listing(self, name: str, at: float) -> bool:
        """Forget listing ``name`` if it is still the one taken at ``at`` (a stale listing,
        ``app.watermark``; a plan that renewed it since keeps it). True when dropped."""
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(self.k("listing"))
                raw = pipe.hget(self.k("listing"), name)
                if raw is None or float(json.loads(raw)["at"]) != at:
                    return False
                pipe.multi()
                pipe.hdel(self.k("listing"), name)
                pipe.hdel(self.k("listingfail"), name)
                pipe.execute()
            except redis.WatchError:
                return False  # renewed (or another listing written) meanwhile: next merge decides again
        return True

    def note_seal_state(self, doc: dict) -> None:
        """Keep the last merge's watermark decision (``sealstate``, JSON) for the metrics."""
        self.r.set(self.k("sealstate"), json.dumps(doc, sort_keys=True))

    def seal_state(self) -> dict:
        """The last merge's watermark decision: ``at``, ``sealed_to``, ``held_by`` (name ->
        seconds behind), ``forced`` (names); {} before the first merge."""
        raw = self.r.get(self.k("sealstate"))
        return json.loads(raw) if raw else {}

    def sealed_to(self) -> int:
        """The mark: every interval starting before it is sealed (0: none yet)."""
        raw = self.r.get(self.k("sealedto"))
        return int(raw) if raw else 0

    def note_pods(self, pods: list[dict]) -> None:
        """Record when each listed pod was last seen (for cursor clean-up)."""
        if not pods:
            return
        now = self.now()
        self.r.hset(
            self.k("pods"),
            mapping={p["uid"]: json.dumps({**p, "last_seen": now}) for p in pods},
        )

    def pods(self) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.k("pods")).items()}

    def pod_state(self, uid: str) -> dict:
        raw = self.r.hget(self.k("podstate"), uid)
        return json.loads(raw) if raw else {}

    def update_pod_state(self, uid: str, **fields: object) -> None:
        """Merge ``fields`` into a pod's state (only the fetch of that pod writes it)."""
        doc = self.pod_state(uid)
        doc.update(fields)
        self.r.hset(self.k("podstate"), uid, json.dumps(doc))

    def forget_pod(self, uid: str) -> int:
        """Remove a gone pod's cursors and record. Returns how many cursors went."""
        fields = [f for f in self.r.hkeys(self.k("cursors")) if f.decode().startswith(uid + "/")]
        with self.r.pipeline() as pipe:
            if fields:
                pipe.hdel(self.k("cursors"), *fields)
            pipe.hdel(self.k("pods"), uid)
            pipe.hdel(self.k("podstate"), uid)
            pipe.delete(self.k("podfetch", uid))
            pipe.zrem(self.k("podfetch"), uid)
            pipe.hdel(self.k("reads"), uid)
            pipe.hdel(self.k("readfail"), uid)
            pipe.execute()
        return len(fields)

    def cursors(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.k("cursors")).items()}

    # Files (the file source) ------------------------------------------------------

    def note_files(self, queue: str, files: dict[str, dict]) -> dict[str, dict]:
        """Record the files one host's plan found (identity -> ``{path, size}``) under
        its queue, replacing the previous round's; returns the previous round's."""
        key = self.k("files", queue)
        now = self.now()
        with self.r.pipeline() as pipe:
            pipe.hgetall(key)
            pipe.delete(key)
            if files:
                pipe.hset(key, mapping={i: json.dumps({**f, "seen": now}, sort_keys=True) for i, f in files.items()})
            pipe.hset(self.k("filehosts"), queue, f"{now:.3f}")
            previous = pipe.execute()[0]
        return {k.decode(): json.loads(v) for k, v in previous.items()}

    def files(self, queue: str) -> dict[str, dict]:
        """The files one host's last plan found: identity -> ``{path, size, seen}``."""
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.k("files", queue)).items()}

    def first_note(self, kind: str, name: str) -> bool:
        """True the first time ``(kind, name)`` is noted (a log line said once, ever)."""
        return bool(self.r.sadd(self.k("notes", kind), name))

    # Counters and gaps ------------------------------------------------------------

    def incr(self, counters: dict[str, int]) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            for name, inc in counters.items():
                if inc:
                    pipe.hincrby(self.k("stats"), name, inc)
            pipe.execute()

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(self.k("stats")).items()}

    def record_gap(self, gap: dict) -> None:
        with self.r.pipeline() as pipe:
            pipe.lpush(self.k("gaps"), json.dumps(gap, sort_keys=True))
            pipe.ltrim(self.k("gaps"), 0, MAX_GAPS - 1)
            pipe.hincrby(self.k("stats"), "gaps", 1)
            pipe.execute()

    def gaps(self) -> list[dict]:
        return [json.loads(g) for g in self.r.lrange(self.k("gaps"), 0, -1)]

    # Intervals ----------------------------------------------------------------------

    def open_intervals(self, ended_before: float) -> list[int]:
        """Unsealed intervals with counts whose end is at or before ``ended_before``."""
        raw = self.r.zrangebyscore(self.k("open"), "-inf", ended_before - self.ri)
        return [int(x) for x in raw]

    def seal_upto(self, mark: int) -> tuple[int, list[ReportKey]] | None:
        """Move the mark "sealed up to" to ``mark`` (never back) and seal every interval
        with counts that starts before it (``seal.lua``). Returns the mark before and the
        reports created now; None when ``mark`` is later than Redis time."""
        keys = [self.k("open"), self.k("sealed"), self.k("due"), self.k("sealedto")]
        out = [x.decode() for x in self._seal(keys=keys, args=[self.p, mark, self.ri])]
        if out == ["not_ended"]:
            return None
        return int(out[0]), [ReportKey.parse(m) for m in out[1:]]

    def seal(self, start: int) -> list[str]:
        """Seal an ended interval (and every one before it: the mark moves to its end);
        the subdomains of ``start`` whose reports were created now."""
        done = self.seal_upto(start + self.ri)
        return [] if done is None else [k.subdomain for k in done[1] if k.start == start]

    def interval_totals(self, start: int) -> dict[str, list[int]]:
        """``{sub: [bytes_in, bytes_out, requests]}`` of an interval (``:u`` fields aside)."""
        sums: dict[str, list[int]] = {}
        for field, value in self.r.hgetall(self.k("iv", start)).items():
            sub, kind = field.decode().rsplit(":", 1)
            if kind in ("i", "o", "r"):
                sums.setdefault(sub, [0, 0, 0])["ior".index(kind)] = int(value)
        return sums

    def interval_unmetered(self, start: int) -> dict[str, int]:
        """``{sub: upgraded connections}`` of an interval (only subdomains that had one)."""
        out: dict[str, int] = {}
        for field, value in self.r.hgetall(self.k("iv", start)).items():
            sub, kind = field.decode().rsplit(":", 1)
            if kind == "u":
                out[sub] = int(value)
        return out

    def unmetered(self) -> dict[str, int]:
        """Upgraded connections per subdomain since the ledger started (``unmetered`` hash)."""
        return {k.decode(): int(v) for k, v in self.r.hgetall(self.k("unmetered")).items()}

    def expire_intervals(self, older_than: float) -> int:
        """Compact sealed intervals that ended before ``older_than`` and have no report
        left undelivered: their count hash (hundreds of bytes per tunnel) becomes one
        line of the ``history`` zset (``history()``), and they leave ``sealed``. Their
        reports' records stay (dead letters, and delivered ones in ``done:<start>``)."""
        dropped = 0
        for raw, sealed_at in self.r.zrangebyscore(self.k("sealed"), "-inf", "+inf", withscores=True):
            start = int(raw)
            if start + self.ri > older_than:
                continue
            pending = self.r.zscan_iter(self.k("due"), match=ReportKey.interval_pattern(start), count=1000)
            if next(pending, None) is not None:
                continue
            tunnels = 0
            sums = [0, 0, 0, 0]  # bytes in, bytes out, requests, upgraded connections
            for counts in self._interval_fields(start).values():
                tunnels += counts.get("r", 0) > 0
                for i, kind in enumerate("ioru"):
                    sums[i] += counts.get(kind, 0)
            line = " ".join(map(str, [start, tunnels, *sums, int(sealed_at)]))
            with self.r.pipeline() as pipe:
                pipe.zadd(self.k("history"), {line: start})
                pipe.delete(self.k("iv", start))
                pipe.zrem(self.k("sealed"), raw)
                pipe.execute()
            dropped += 1
        return dropped

    def _interval_fields(self, start: int) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for field, value in self.r.hgetall(self.k("iv", start)).items():
            sub, kind = field.decode().rsplit(":", 1)
            out.setdefault(sub, {})[kind] = int(value)
        return out

    def trim_history(self, older_than: float) -> int:
        """Drop the history of intervals that ended before ``older_than``."""
        return int(self.r.zremrangebyscore(self.k("history"), "-inf", f"({older_than - self.ri}"))

    def history(self) -> list[dict[str, int]]:
        """One record per compacted interval, oldest first: ``start``, ``tunnels``
        (reports made), ``bytes_in``, ``bytes_out``, ``requests``, ``unmetered`` and
        ``sealed_at`` (unix seconds)."""
        names = ("start", "tunnels", "bytes_in", "bytes_out", "requests", "unmetered", "sealed_at")
        return [dict(zip(names, map(int, m.split()), strict=True)) for m in self.r.zrange(self.k("history"), 0, -1)]

    # Reports ----------------------------------------------------------------------------

    def rep_key(self, key: ReportKey) -> str:
        """The Redis key of a report's hash (``seal.lua`` builds the same)."""
        return self.k("rep", key)

    def done_key(self, start: int) -> str:
        """The hash of an interval's delivered and skipped reports (``finish.lua``)."""
        return self.k("done", start)

    def report_keys(self) -> list[ReportKey]:
        """Every report in the ledger: with a hash of its own, or delivered and kept in
        its interval's done hash (a scan: for tests and audits)."""
        head = len(self.k("rep", ""))
        out = [ReportKey.parse(raw[head:]) for raw in self.r.scan_iter(match=self.k("rep", "*"), count=1000)]
        head = len(self.k("done", ""))
        for raw in self.r.scan_iter(match=self.k("done", "*"), count=1000):
            start = int(raw[head:])
            out += [ReportKey.of(start, name.decode()) for name in self.r.hkeys(raw)]
        return out

    def report(self, key: ReportKey) -> Report | None:
        raw = self.r.hgetall(self.rep_key(key))
        if not raw:
            done = self.r.hget(self.done_key(key.start), key.name)
            return None if done is None else _done_report(key, done.decode())
        d = {k.decode(): v.decode() for k, v in raw.items()}
        reason = d.get("reason", "")
        if "bytes_in" not in d:  # a dead-letter write that landed after the report was finished (an earlier version)
            reason = f"incomplete record, amounts unknown (shown as 0); {reason}"
        return Report(
            start=key.start,
            subdomain=key.subdomain,
            bytes_in=int(d.get("bytes_in", 0)),
            bytes_out=int(d.get("bytes_out", 0)),
            requests=int(d.get("requests", 0)),
            state=ReportState(d.get("state", ReportState.PENDING)),
            attempts=int(d.get("attempts", 0)),
            reason=reason,
            unmetered=int(d.get("unmetered", 0)),
            amendment=key.amendment,
            sealed_at=float(d["sealed_at"]) if d.get("sealed_at") else None,
        )

    def claim(self, keys: list[ReportKey], lease: int) -> list[ReportKey]:
        """Give each key that is due a lease; the ones claimed now (see ``claim.lua``)."""
        if not keys:
            return []
        out = self._claim(keys=[self.k("due")], args=[self.p, lease, *map(str, keys)])
        return [ReportKey.parse(m) for m in out]

    def claim_due(self, lease: int, limit: int) -> list[ReportKey]:
        out = self._claim(keys=[self.k("due")], args=[self.p, lease, f"#{limit}"])
        return [ReportKey.parse(m) for m in out]

    def extend_lease(self, key: ReportKey, until: float) -> None:
        self.r.zadd(self.k("due"), {str(key): until}, xx=True)

    def hold(self, keys: list[ReportKey], seconds: int) -> int:
        """Renew the lease of each key still queued to now + ``seconds`` (a live worker
        holds its message); returns how many were renewed (see ``hold.lua``)."""
        if not keys:
            return 0
        return int(self._hold(keys=[self.k("due")], args=[self.p, seconds, *map(str, keys)]))

    def wake_parked(self) -> int:
        """Make the parked reports claimable now, if any was parked since the last wake;
        returns how many (see ``wake.lua``)."""
        return int(self._wake(keys=[self.k("due"), self.k("parked")], args=[self.p]))

    def probe_parked(self, interval: int) -> ReportKey | None:
        """When reports were parked and nothing succeeded since, and the probe time has
        come (``park``'s ``probe_after``, ``delay_probe``), make the parked report due
        soonest claimable now, marked as a probe (``Report.probe``: its send makes one
        attempt), and the next probe ``interval`` seconds later; the report made
        claimable, or None (see ``probe.lua``). Called by the sweep before it claims."""
        out = self._probe(keys=[self.k("due"), self.k("parked"), self.k("probe"), self.k("stats")],
                          args=[self.p, interval, PARKED_MARKER_TTL])
        return ReportKey.parse(out) if out else None

    def begin_keys(self, key: ReportKey) -> list[str]:
        """The KEYS of ``begin.lua`` for ``key``."""
        return [self.rep_key(key), self.k("lock", key), self.done_key(key.start), self.k("init"), self.k("parked")]

    def finish_keys(self, key: ReportKey) -> list[str]:
        """The KEYS of ``finish.lua`` for ``key``."""
        return [self.rep_key(key), self.done_key(key.start), self.k("due"), self.k("retrying"), self.k("stats"),
                self.k("lock", key), self.k("parked"), self.k("dead"), self.k("probe")]

    def begin(self, key: ReportKey, token: str, lock_seconds: int, report_interval: int,
              scraper_id: str) -> tuple[str, Report | ReportState | str | None]:
        """Take the send lock, read the report and count an attempt, in one script
        (``begin.lua``). Returns ``("go", report)`` (the lock held, ``attempts`` as before
        this attempt), ``("busy", None)`` (another copy holds the lock), ``("final",
        state)`` or ``("missing", None)`` (the lock released), or ``("identity", why)``
        (nothing taken) when the ledger's reports are made under another
        ``REPORT_INTERVAL`` or ``SCRAPER_ID`` than the sender's (``report_interval``,
        ``scraper_id``: what its Idempotency-Key and body are built from)."""
        out = self._begin(keys=self.begin_keys(key),
                          args=[token, lock_seconds, key.name, str(report_interval), scraper_id])
        status = out[0].decode()
        if status == "identity":
            ri, sid = (x.decode() or "(not recorded)" for x in out[1:3])
            return status, (f"the ledger's reports are made with REPORT_INTERVAL={ri!r} and SCRAPER_ID={sid!r}, "
                            f"this process has {str(report_interval)!r} and {scraper_id!r}")
        if status == "final":
            return status, ReportState(out[1].decode())
        if status != "go":
            return status, None
        bi, bo, rq, state, attempts, reason, unmetered, sealed_at, probe = (x.decode() for x in out[1:10])
        return status, Report(key.start, key.subdomain, int(bi), int(bo), int(rq), ReportState(state), int(attempts),
                              reason, int(unmetered), amendment=key.amendment,
                              sealed_at=float(sealed_at) if sealed_at else None, probe=probe == "1")

    def finish(self, key: ReportKey, outcome: ReportState, user_id: str, retention: int, token: str = "") -> bool:
        """Record a final answer (``delivered`` or ``skipped``): the report's record moves
        into its interval's done hash, kept ``retention`` seconds after the interval's
        last delivery, and the send lock ``token`` holds is released (``finish.lua``).
        True when a report was parked since the platform's last success (then call
        ``wake_parked``)."""
        member = str(key)
        return bool(self._finish(keys=self.finish_keys(key), args=[member, key.name, str(outcome), user_id, retention, token]))

    def acquire_send_lock(self, key: ReportKey, token: str, seconds: int) -> bool:
        return bool(self.r.set(self.k("lock", key), token, nx=True, ex=seconds))

    def release_send_lock(self, key: ReportKey, token: str) -> None:
        lock = self.k("lock", key)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(lock)
                if pipe.get(lock) == token.encode():
                    pipe.multi()
                    pipe.delete(lock)
                    pipe.execute()
            except redis.WatchError:
                pass  # it expired and someone else holds it now: not ours to drop

    def begin_attempt(self, key: ReportKey) -> int:
        """Count an attempt about to go on the wire; returns the attempt number."""
        return int(self.r.hincrby(self.rep_key(key), "attempts", 1))

    def mark_delivered(self, key: ReportKey, outcome: ReportState, user_id: str, retention: int) -> None:
        """Record a final answer (``delivered`` or ``skipped``) without a send lock (see
        ``finish``); the record is kept ``retention`` seconds."""
        self.finish(key, outcome, user_id, retention)

    def park(self, key: ReportKey, next_at: float, reason: str, probe_after: float) -> bool:
        """Park a report until ``next_at`` (Redis time, s) with ``reason``, for the sweep
        to send again. Only a report still open (``_while_open``); False when it changed
        nothing. No probe (``probe_parked``) comes sooner than ``probe_after`` seconds from
        now (``REPORT_PROBE_INTERVAL``, or a longer ``Retry-After``): the probe time only
        moves later, so a ``Retry-After`` one report got holds for every probe."""
        member = str(key)

        def write(pipe: redis.client.Pipeline, now: float) -> None:
            pipe.hset(self.rep_key(key), mapping={"state": ReportState.DUE, "next_at": f"{next_at:.3f}",
                                                  "reason": reason})
            pipe.zadd(self.k("due"), {member: next_at})
            pipe.zrem(self.k("retrying"), member)
            pipe.hdel(self.rep_key(key), "probe")
            pipe.set(self.k("parked"), "1", ex=PARKED_MARKER_TTL)
            self._later_probe(pipe, now + probe_after)
            pipe.hincrby(self.k("stats"), "reports_parked", 1)

        return self._while_open(key, write)

    def delay_probe(self, until: float) -> None:
        """No probe (``probe_parked``) before ``until`` (Redis time, s): a ``Retry-After``
        the platform gave a report in automatic retry."""
        with self.r.pipeline(transaction=False) as pipe:
            self._later_probe(pipe, until)
            pipe.execute()

    def _later_probe(self, pipe: redis.client.Pipeline, until: float) -> None:
        """Queue on ``pipe``: the probe time becomes ``until`` unless it is later already."""
        pipe.zadd(self.k("probe"), {"next": until}, gt=True)
        pipe.expire(self.k("probe"), PARKED_MARKER_TTL)

    def dead_letter(self, key: ReportKey, reason: str) -> bool:
        """Park a report in the dead-letter store with ``reason``. Only a report still
        open (``_while_open``); False when it changed nothing."""
        member = str(key)

        def write(pipe: redis.client.Pipeline, now: float) -> None:
            pipe.hset(self.rep_key(key), mapping={"state": ReportState.DEAD, "reason": reason, "dead_at": f"{now:.3f}"})
            pipe.hdel(self.rep_key(key), "probe")
            pipe.zrem(self.k("due"), member)
            pipe.zrem(self.k("retrying"), member)
            pipe.zadd(self.k("dead"), {member: now})
            pipe.hincrby(self.k("stats"), "reports_dead", 1)

        return self._while_open(key, write)

    def drop_stale(self, key: ReportKey) -> bool:
        """Take ``key`` out of ``due`` and ``retrying`` when its record has no amounts (gone,
        or left by an earlier version's ``park`` over a finished report): nothing a send
        could take, which ``begin.lua`` answers ``final`` or ``missing`` without leaving
        ``due``, so the sweep claimed it every lease for ever (a review). True when it was
        dropped; one WATCH transaction."""
        rep_key, member = self.rep_key(key), str(key)

        def drop(pipe: redis.client.Pipeline) -> bool:
            if pipe.hget(rep_key, "bytes_in") is not None:
                return False
            pipe.multi()
            pipe.delete(rep_key)
            pipe.zrem(self.k("due"), member)
            pipe.zrem(self.k("retrying"), member)
            return True

        return bool(self.r.transaction(drop, rep_key, value_from_callable=True))

    def _while_open(self, key: ReportKey, write) -> bool:
        """Run ``write(pipe, now)`` in one transaction if the report's record is still
        there, with its amounts, and not final; else change nothing and return False. A
        copy whose send lock expired while another copy finished or wrote off the report
        must not leave a record without amounts behind, nor put it back in ``due`` or
        ``dead`` (a review: such a report was claimed and dropped every lease for ever)."""
        rep_key = self.rep_key(key)

        def guarded(pipe: redis.client.Pipeline) -> bool:
            amounts, state = pipe.hmget(rep_key, "bytes_in", "state")
            if amounts is None or state in _FINAL_STATES:
                return False
            now = self.now()
            pipe.multi()
            write(pipe, now)
            return True

        return bool(self.r.transaction(guarded, rep_key, value_from_callable=True))

    def reserve_retry(self, key: ReportKey, until: float, cap: int) -> bool:
        return bool(self._reserve(keys=[self.k("retrying")], args=[str(key), until, cap]))

    def dead_letters(self) -> list[Report]:
        """The reports in the dead-letter store, oldest first. An entry an earlier version
        left there for a report already final comes with its state and a ``reason`` saying
        that ``write-off`` removes it."""
        out = []
        for raw in self.r.zrange(self.k("dead"), 0, -1):
            key = ReportKey.parse(raw)
            rep = self.report(key)
            if rep is not None:
                if rep.state is not ReportState.DEAD:
                    rep = dataclasses.replace(rep, reason=f"stale entry: the report is {rep.state}; "
                                              f"`write-off {key} --reason ...` removes it")
                out.append(rep)
        return out

    def revive(self, key: ReportKey) -> bool:
        """Move a dead letter back to the due set, claimable at once."""
        rep_key = self.rep_key(key)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(rep_key)
                state, amounts = pipe.hmget(rep_key, "state", "bytes_in")
                if state != ReportState.DEAD.encode() or amounts is None:  # none: nothing a send could take
                    return False
                pipe.multi()
                pipe.hset(rep_key, mapping={"state": ReportState.PENDING, "reason": ""})
                pipe.hdel(rep_key, "probe")
                pipe.zrem(self.k("dead"), str(key))
                pipe.zadd(self.k("due"), {str(key): 0})
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def write_off(self, key: ReportKey, reason: str, by: str, retention: int, idempotency_key: str,
                  refused_only: bool = True) -> tuple[str, dict[str, str] | None]:
        """Write off a dead letter: it is never sent, an audit entry (``write_offs()``)
        records for good its amounts, the dead letter's reason, ``reason``, ``by`` and
        ``idempotency_key`` (``""`` when unknown), and its record moves into its
        interval's done hash (state ``written_off``, kept ``retention`` seconds as a
        delivered one's). One script (``write_off.lua``), which checks every key's type
        before its first write.

        Returns ``("written_off", entry)`` (the audit entry as ``write_offs()`` gives it),
        or, with nothing written off: ``("not_dead", None)`` (due, queued, final or
        unknown), ``("not_refused", None)`` (``refused_only`` and a dead letter not refused
        for good: made by ``REPORT_MAX_AGE``, or a 401, 403 or redirect, which a replay may
        still deliver once the cause is fixed), or
        ``("stale", None)`` (an entry an earlier version left in the dead set for a report
        already final or gone, now removed). Raises ``redis.ResponseError`` (nothing
        changed) when one of its keys has another type."""
        out = self._write_off(keys=[self.rep_key(key), self.done_key(key.start), self.k("dead"), self.k("writeoffs"),
                                    self.k("stats")],
                              args=[str(key), key.name, retention, reason, by, idempotency_key,
                                    "1" if refused_only else "0"])
        if isinstance(out, bytes):
            return "written_off", _write_off_entries(self.r.xrange(self.k("writeoffs"), out, out))[0]
        return {0: "not_dead", -1: "not_refused", -2: "stale"}[out], None

    def write_offs(self) -> list[dict[str, str]]:
        """Every write-off, oldest first: ``id`` (the stream entry's), ``key``,
        ``idempotency_key``, ``bytes_in``, ``bytes_out``, ``requests`` (``""`` when the
        dead letter's record had lost them), ``unmetered``, ``attempts``, ``sealed_at``,
        ``dead_at`` and ``written_off_at`` (unix s, Redis time), ``dead_reason``, ``by``
        and ``reason`` (strings as recorded)."""
        return _write_off_entries(self.r.xrange(self.k("writeoffs")))

    def due_count(self) -> int:
        return int(self.r.zcard(self.k("due")))

    def try_round(self, round_no: int | str, ttl: int) -> bool:
        """True the first time a plan round is claimed (``SET NX``); a file host's round
        is ``<queue>:<n>``."""
        return bool(self.r.set(self.k("round", round_no), "1", nx=True, ex=ttl))

    # Metrics ------------------------------------------------------------------------------

    def note_fetch(self, uid: str, name: str, seconds: float, reached_end: bool, error: str = "") -> None:
        """Record one fetch of a pod for the metrics (``podfetch:<uid>`` and the
        ``podfetch`` index): its duration, whether its read reached the end of the log
        (at Redis time), and its error kind if it failed. Kept a day after the last fetch."""
        now = self.now()
        key = self.k("podfetch", uid)
        with self.r.pipeline() as pipe:
            pipe.hset(key, mapping={"name": name, "last_at": f"{now:.3f}", "last_seconds": f"{seconds:.6f}"})
            pipe.hsetnx(key, "since", f"{now:.3f}")
            pipe.hincrby(key, "fetches", 1)
            pipe.hincrbyfloat(key, "seconds_sum", round(seconds, 6))
            if reached_end:
                pipe.hset(key, "end_at", f"{now:.3f}")
            if error:
                pipe.hincrby(key, f"err:{error}", 1)
            pipe.expire(key, PODFETCH_TTL)
            pipe.zadd(self.k("podfetch"), {uid: now})
            pipe.zremrangebyscore(self.k("podfetch"), "-inf", now - PODFETCH_TTL)
            pipe.execute()

    def pod_fetches(self) -> dict[str, dict]:
        """uid -> the ``podfetch`` record of every pod fetched in the last day."""
        uids = [u.decode() for u in self.r.zrange(self.k("podfetch"), 0, -1)]
        with self.r.pipeline(transaction=False) as pipe:
            for uid in uids:
                pipe.hgetall(self.k("podfetch", uid))
            records = pipe.execute()
        out = {}
        for uid, rec in zip(uids, records, strict=True):
            if rec:
                out[uid] = {k.decode(): v.decode() for k, v in rec.items()}
        return out

    def report_states(self) -> tuple[dict[str, int], float | None]:
        """Undelivered reports (the ``due`` set) by state, and when the oldest of them was
        made (Redis time, s: its ``sealed_at``, the sealing or the amendment; its
        interval's end for a report without one), None when there is none. One pass over
        ``due`` inside Redis."""
        out = self._states(keys=[self.k("due")], args=[self.p, self.ri])
        oldest = float(out[0])
        counts = {out[i].decode(): int(out[i + 1]) for i in range(1, len(out), 2)}
        return counts, (oldest if oldest >= 0 else None)

    def metric_counts(self) -> dict[str, int]:
        """Cardinalities the metrics read: open and sealed intervals, dead letters, and
        reports in automatic retry now."""
        now = self.now()
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zcard(self.k("open"))
            pipe.zcard(self.k("sealed"))
            pipe.zcard(self.k("dead"))
            pipe.zcount(self.k("retrying"), f"({now}", "+inf")
            opened, sealed, dead, retrying = pipe.execute()
        return {"open": opened, "sealed": sealed, "dead": dead, "retrying": retrying}
