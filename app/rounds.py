"""The rounds: plan -> chord(fetch per pod) -> merge, and the sweep.

``plan`` lists the Traefik pods of one fetch round (and records the listing for the
watermark); ``merge`` (the chord callback) seals every report interval the watermark
has passed (``app/watermark.py``) and claims its reports; ``sweep`` merges as well,
re-claims reports that were never delivered (amendments among them) and expires old
data (docs/design.md, "Data flow", "Sealing" and "Failure model").

Plain functions over the ledger and the log source. They return what must be
dispatched (the pods to fetch, the report keys to send); the Celery tasks in
``workers/rounds.py`` do the dispatching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from app import filesource, watermark
from app.errors import KubeError, PodGone
from app.kube import LogSource, Pod
from app.ledger import Ledger, iso
from app.model import FileCursor, ReportKey, RoundStatus
from app.queues import Queue
from app.settings import Settings

log = logging.getLogger(__name__)

GONE_AFTER = 3600  # seconds a pod must be unseen before its cursors may go
POD_LISTING = "pods"  # the name of the Kubernetes plan's listing (a file host's: its queue)
SWEEP_BATCH = 1000  # reports re-enqueued by one sweep at most


@dataclass
class Plan:
    """One fetch round. ``dispatch``: whether the round sends its chord (a fetch per pod
    in ``pods``, then merge; with no pods, merge alone). With the file source, ``files``
    and ``queue`` (this host's, where each file's fetch goes) take the place of ``pods``."""

    status: RoundStatus
    round: int
    pods: list[Pod] = field(default_factory=list)
    dispatch: bool = False
    files: list[filesource.LogFile] = field(default_factory=list)
    queue: str = ""

    def summary(self) -> dict:
        out: dict = {"status": self.status, "round": self.round}
        if self.status == RoundStatus.OK:
            if self.queue:
                out.update(files=len(self.files), queue=self.queue)
            else:
                out["pods"] = len(self.pods)
        return out


@dataclass
class Merge:
    """What a merge did: intervals sealed, the report keys claimed now (to be sent), and
    the watermark's decision."""

    sealed: int
    reports: list[ReportKey]
    decision: watermark.Decision | None = None


def ensure_ledger(ledger: Ledger, settings: Settings) -> bool:
    """True when the ledger is initialised (creating it on a first, empty start).

    An empty ledger is initialised automatically only when ``START_AT`` is not set:
    counting then starts now, so even a Redis that lost its data cannot make old lines
    billed twice. With ``START_AT`` set, run ``traefik-metrics-scraper init-ledger``
    once; a ledger that has data but no record is refused (Redis lost data), and so is
    one whose reports are made under another ``REPORT_INTERVAL`` or ``SCRAPER_ID``
    (``Ledger.identity_problem``).
    """
    record = ledger.init_record()
    if record is not None:
        problem = ledger.identity_problem(record, settings.scraper_id)
        if problem is not None:
            log.error("not fetching: %s", problem)
        return problem is None
    if settings.start_at is None and not ledger.has_data():
        if ledger.initialise(None, scraper_id=settings.scraper_id):
            log.warning(
                "ledger initialised: counting starts now (%s). If this deployment ran before, "
                "its Redis lost its data and usage not yet reported is lost",
                iso(int(ledger.now())),
            )
        return True
    if settings.start_at is None:
        why = "the ledger has data but no initialisation record (Redis lost part of its data)"
    else:
        why = "START_AT is set and the ledger is not initialised"
    log.error(
        "not fetching: %s. Check Redis, then run `traefik-metrics-scraper init-ledger "
        "--start-at <time>` with the time from which lines must be counted",
        why,
    )
    return False


def plan(ledger: Ledger, source: LogSource | KubeError, settings: Settings, claim: str | None = None) -> Plan:
    """One fetch round: list the Traefik pods to fetch.

    ``source`` is the log source, or the ``KubeError`` that kept it from being created
    (no in-cluster config and no KUBECONFIG). Guarded with ``SET NX`` on the round
    number, so a duplicate round does nothing. A round whose pods cannot be listed still
    dispatches merge alone, so intervals are sealed while the Kubernetes API is down.
    ``claim``: the name a round outside the regular ones claims instead of its number
    (``seal:<end>``, app/pace.py).
    """
    every = settings.fetch_every
    round_no = int(ledger.now() // every)
    if not ledger.try_round(claim or round_no, ttl=3 * every):
        return Plan(RoundStatus.DUPLICATE, round_no)
    if not ensure_ledger(ledger, settings):
        return Plan(RoundStatus.LEDGER_LOST, round_no)
    error = source if isinstance(source, KubeError) else None
    if error is None:
        listed_at = ledger.now()  # before asking: every pod created before it is in the answer
        try:
            pods = source.list_pods()
        except KubeError as e:
            error = e
    if error is not None:
        log.error("plan: cannot list Traefik pods: %s", error)
        ledger.note_listing_failure(POD_LISTING)  # sealing waits at most SEAL_MAX_WAIT for a listing
        return Plan(RoundStatus.KUBE_ERROR, round_no, dispatch=True)
    ledger.note_pods([{"uid": p.uid, "name": p.name, "namespace": p.namespace, "deleting": p.deleting} for p in pods])
    # The watermark's listing: each pod's current container (a pod whose read record is
    # of another container, a previous one not drained, holds sealing back).
    sources: dict[str, tuple[str, str | None]] = {}
    for p in pods:
        ctr = p.container(settings.traefik_container)
        sources[p.uid] = (p.name, ctr.container_id if ctr is not None else "")
    ledger.note_listing(POD_LISTING, listed_at, sources)
    if not pods:
        log.warning("plan: no pod in namespace %s matches %s", settings.traefik_namespace, settings.traefik_label_selector)
    for p in pods:
        if p.deleting:
            log.info("plan: pod %s is terminating: reading it every round until it is gone", p.name)
    return Plan(RoundStatus.OK, round_no, pods, dispatch=True)


def plan_files(ledger: Ledger, settings: Settings) -> Plan:
    """One fetch round of this host's access-log files (``LOG_SOURCE=file``).

    Runs on the host that holds the files (beat sends it to the host's queue,
    ``FILE_QUEUE``), lists the files matching ``LOG_FILES`` by identity, and returns them
    with the queue their fetches go to: the same host's. The round number is claimed per
    host queue. Compressed files are noted (INFO, once per path); an identity that
    vanished with bytes its cursor had not reached gets a gap record (docs/design.md,
    "File source").
    """
    every = settings.fetch_every
    queue = settings.file_queue
    round_no = int(ledger.now() // every)
    if not ledger.try_round(round_no if queue == Queue.FETCH else f"{queue}:{round_no}", ttl=3 * every):
        return Plan(RoundStatus.DUPLICATE, round_no, queue=queue)
    if not ensure_ledger(ledger, settings):
        return Plan(RoundStatus.LEDGER_LOST, round_no, queue=queue)
    listed_at = ledger.now()
    found = filesource.discover(settings.log_files)
    for path in found.compressed:
        if ledger.first_note("compressed", path):
            log.info("plan: %s is compressed: skipped. Lines not read before a file was compressed are lost: rotate "
                     "with delaycompress", path)
    previous = ledger.note_files(queue, {f.identity: {"path": f.path, "size": f.size} for f in found.files})
    ledger.note_listing(queue, listed_at, {FileCursor.field(f.identity): (f.path, None) for f in found.files})
    if not found.errors:  # an unreadable file is not a vanished one
        _vanished_files(ledger, queue, previous, {f.identity for f in found.files})
    if not found.files and not found.unidentified:
        log.warning("plan: no file matches LOG_FILES=%s on this host (queue %s)", settings.log_files, queue)
    return Plan(RoundStatus.OK, round_no, dispatch=True, files=found.files, queue=queue)


def _vanished_files(ledger: Ledger, queue: str, previous: dict[str, dict], present: set[str]) -> None:
    """A gap record for each identity the previous round saw and this one does not (deleted,
    or compressed) whose cursor had not reached the size it had then."""
    for identity, seen in previous.items():
        if identity in present:
            continue
        cursor = FileCursor.decode(ledger.cursor_raw(FileCursor.field(identity))) or FileCursor()
        if cursor.offset >= int(seen.get("size", 0)):
            continue
        log.warning("GAP: %s went (deleted or compressed) with bytes %d..%d not read: lines may be lost", seen.get("path"),
                    cursor.offset, seen.get("size"), extra={"outcome": "gap"})
        ledger.record_gap({"file": seen.get("path"), "identity": identity, "queue": queue, "from_offset": cursor.offset,
                           "to_offset": seen.get("size"), "reason": "file gone before it was read to its end",
                           "at": ledger.now()})


def merge(ledger: Ledger, settings: Settings) -> Merge:
    """Seal every report interval the watermark has passed and claim its reports.

    The decision is ``app.watermark.decide`` over the plans' listings and the read
    records the commits wrote; the mark "sealed up to" only moves forward, one interval
    with counts at a time (``seal.lua``), so a backlog is sealed interval by interval as
    the reads catch up. Reads Redis, never the fetch results; safe to run twice."""
    now = ledger.now()
    ri = ledger.ri
    before = ledger.sealed_to()
    decision = watermark.decide(
        ledger.listings(), ledger.read_records(), before, now, interval=ri,
        margin=settings.seal_clock_margin, window=settings.log_reorder_window, max_wait=settings.seal_wait,
    )
    _note_decision(ledger, decision, now, settings)
    created: list[ReportKey] = []
    sealed = 0
    if decision.seal_to > before:
        for start in [*ledger.open_intervals(decision.seal_to), None]:
            done = ledger.seal_upto(decision.seal_to if start is None else start + ri)
            if done is None:
                break
            subs = done[1]
            if start is not None:
                sealed += 1
            created += subs
            if subs:
                begin = subs[0].start
                log.info("Reporting %d tunnel(s) for %s", len(subs), iso(begin), extra={"interval": iso(begin), "outcome": "sealed"})
        if decision.forced:
            _forced(ledger, decision, before, ri)
    for listing in decision.stale:
        if ledger.sealed_to() >= decision.seal_to and ledger.drop_listing(listing.key, listing.at):
            log.warning("%s not renewed for %.0fs while other plans ran (over SEAL_MAX_WAIT: a retired file host, a "
                        "renamed FILE_QUEUE, or a ledger switched to another LOG_SOURCE): dropped; its sources no "
                        "longer hold sealing back. A plan that runs again lists them again", listing.name,
                        now - listing.at, extra={"pod": listing.name, "outcome": "listing_dropped"})
            ledger.incr({"listings_dropped": 1})
    return Merge(sealed, ledger.claim(created, settings.lease_seconds), decision)


def _forced(ledger: Ledger, decision: watermark.Decision, before: int, ri: int) -> None:
    """Intervals sealed past sources that could not be read for SEAL_MAX_WAIT: a WARNING
    naming each, and the count in ``seal_forced`` (``seal_forced_total``)."""
    lowest = min(h.past for h in decision.forced)
    first = max(before, int(lowest // ri) * ri if lowest > watermark.NEVER else before)
    n = max(0, (decision.seal_to - first) // ri)
    if n:
        ledger.incr({"seal_forced": n})
    # Per source: how many intervals were sealed without it (seal_forced_by_total{pod}).
    by = {}
    for h in decision.forced:
        own = max(before, int(h.past // ri) * ri if h.past > watermark.NEVER else before)
        if decision.seal_to > own:
            by[f"seal_forced_by:{h.name}"] = by.get(f"seal_forced_by:{h.name}", 0) + (decision.seal_to - own) // ri
    if by:
        ledger.incr(by)
    for h in decision.forced:
        log.warning("sealed up to %s without %s, unreadable for %.0fs (over SEAL_MAX_WAIT): its lines stamped "
                    "before that, when read, are reported as amendments", iso(decision.seal_to), h.name, h.failing_for,
                    extra={"pod": h.name, "interval": iso(decision.seal_to), "outcome": "seal_forced"})


def _note_decision(ledger: Ledger, decision: watermark.Decision, now: float, settings: Settings) -> None:
    """Keep the last decision for the metrics: what holds sealing back, by how many
    seconds each source is behind the point the next interval needs."""
    lag = settings.seal_clock_margin + settings.log_reorder_window
    held = {h.name: round(now - lag - h.past, 3) if h.past > watermark.NEVER else -1 for h in decision.held_by}
    doc = {"at": now, "sealed_to": decision.seal_to, "held_by": held, "forced": [h.name for h in decision.forced]}
    ledger.note_seal_state(doc)


def sweep(ledger: Ledger, source: LogSource | None, settings: Settings) -> tuple[dict, list[ReportKey]]:
    """Recover what the normal path left behind, and expire old data.

    Returns the sweep's summary and the report keys claimed now, to be sent.
    """
    if ledger.init_record() is None:
        return {"status": RoundStatus.LEDGER_LOST}, []
    merged = merge(ledger, settings)
    probed = ledger.probe_parked(settings.report_probe_interval)
    if probed is not None:
        log.info("sweep: nothing has succeeded since reports were parked; sending parked report %s now, one "
                 "attempt, to probe the platform", probed)
    claimed = ledger.claim_due(settings.lease_seconds, SWEEP_BATCH)
    if claimed:
        log.info("sweep: re-enqueueing %d report(s) never delivered", len(claimed))
    now = ledger.now()
    # An interval whose reports are all final is compacted into one history line at once
    # (its per-tunnel counts would take ~200 bytes a tunnel); the history is kept
    # INTERVAL_RETENTION, delivered reports' records REPORT_RETENTION (docs/design.md,
    # "Redis memory").
    expired = ledger.expire_intervals(now - settings.sweep_merge_age)
    ledger.trim_history(now - settings.interval_retention)
    forgotten = _forget_gone_pods(ledger, source, now) if source is not None else 0
    summary = {"merged": merged.sealed, "requeued": len(claimed), "probed": str(probed) if probed else None,
               "expired": expired, "forgotten_pods": forgotten}
    return summary, merged.reports + claimed


def _forget_gone_pods(ledger: Ledger, source: LogSource, now: float) -> int:
    """Drop cursors of pods unseen for an hour and confirmed gone (404 or a new uid)."""
    forgotten = 0
    for uid, info in ledger.pods().items():
        if now - float(info.get("last_seen", now)) < GONE_AFTER:
            continue
        try:
            pod = source.get_pod(info["name"])
            gone = pod.uid != uid
        except PodGone:
            gone = True
        except KubeError as e:
            log.warning("sweep: cannot check pod %s: %s", info.get("name"), e)
            continue
        if gone:
            ledger.forget_pod(uid)
            forgotten += 1
    return forgotten
