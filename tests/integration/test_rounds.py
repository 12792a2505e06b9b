"""Sweep's clean-up of gone pods' cursors, against the fake Kubernetes API and real Redis."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime

import pytest

from app import rounds
from app.fetching import Fetcher
from app.kube import LogSource
from app.ledger import Ledger
from app.model import CommitStatus, RoundStatus
from app.rounds import GONE_AFTER, sweep
from app.settings import Settings


def test_cursors_go_only_for_pods_gone_for_an_hour(r, kube, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
    live = kube.add_pod("traefik-live")
    gone = kube.add_pod("traefik-gone")
    recent = kube.add_pod("traefik-recent")
    replaced_old = kube.add_pod("traefik-replaced")
    ledger = Ledger(r, "gc", 60)
    ledger.initialise(0)
    pods = {uid: name for uid, name in [(live, "traefik-live"), (gone, "traefik-gone"), (recent, "traefik-recent"),
                                        (replaced_old, "traefik-replaced")]}
    ledger.note_pods([{"uid": uid, "name": name, "namespace": "traefik", "deleting": False} for uid, name in pods.items()])
    for uid in pods:
        assert ledger.commit(f"{uid}/traefik", "", "containerd://x|1|1", {}, {}).status == CommitStatus.OK
    long_ago = ledger.now() - GONE_AFTER - 60
    for uid, name in pods.items():  # all unseen for over an hour, except "recent"
        if name != "traefik-recent":
            r.hset(ledger.k("pods"), uid, json.dumps({"uid": uid, "name": name, "last_seen": long_ago}))
    kube.delete("traefik-gone")
    kube.delete("traefik-recent")
    kube.replace_pod("traefik-replaced")  # same name, another uid
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    out, _ = sweep(ledger, source, Settings())
    source.close()
    assert out["forgotten_pods"] == 2
    left = {field.split("/")[0] for field in ledger.cursors()}
    assert left == {live, recent}
    assert set(ledger.pods()) == {live, recent}


def test_ensure_ledger_initialises_only_an_empty_ledger_without_start_at(r):
    from datetime import UTC, datetime

    from app.rounds import ensure_ledger

    fresh = Ledger(r, "fresh", 60)
    assert ensure_ledger(fresh, Settings())
    assert abs(fresh.start_at_ns() / 1e9 - fresh.now()) < 5  # counting starts now
    assert ensure_ledger(fresh, Settings())  # already initialised

    explicit = Ledger(r, "explicit", 60)
    assert not ensure_ledger(explicit, Settings(start_at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert explicit.init_record() is None  # START_AT set: init-ledger is an explicit step

    lost = Ledger(r, "lost", 60)
    lost.incr({"lines_read": 1})  # data, but the record is gone: Redis lost part of its data
    assert not ensure_ledger(lost, Settings())
    assert lost.init_record() is None


def test_init_ledger_command(r, redis_url):
    import pathlib
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "cli"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "app", "init-ledger", *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=str(pathlib.Path(__file__).parents[2]))

    first = run("--start-at", "2026-11-24T00:00:00Z")
    assert first.returncode == 0, first.stderr
    assert "counting from 2026-11-24T00:00:00.000000000Z (1795478400000000000 ns)" in first.stdout
    ledger = Ledger(r, "cli", 60)
    assert ledger.start_at_ns() == 1_795_478_400 * 10**9
    again = run("--start-at", "2026-11-25T00:00:00Z")
    assert again.returncode == 1 and "already initialised (counting from 2026-11-24T00:00:00.000000000Z" in again.stderr
    assert ledger.start_at_ns() == 1_795_478_400 * 10**9
    forced = run("--start-at", "2026-11-25T00:00:00Z", "--force")
    assert forced.returncode == 0
    assert ledger.start_at_ns() == (1_795_478_400 + 86_400) * 10**9
    ledger.record_gap({"pod": "traefik-0", "from_ns": 1_795_478_401 * 10**9, "to_ns": 1_795_478_402 * 10**9 + 5,
                       "reason": "the log was rotated past the cursor"})
    shown = subprocess.run([sys.executable, "-m", "app", "status"], env=env, capture_output=True, text=True, timeout=60,
                           cwd=str(pathlib.Path(__file__).parents[2]))
    assert shown.returncode == 0, shown.stderr
    assert "counting from: 2026-11-25T00:00:00.000000000Z (1795564800000000000 ns)" in shown.stdout
    assert ("  traefik-0 2026-11-24T00:00:01.000000000Z (1795478401000000000 ns) .. 2026-11-24T00:00:02.000000005Z "
            "(1795478402000000005 ns): the log was rotated past the cursor") in shown.stdout


# plan and merge return what to dispatch ---------------------------------------------------


def _source(kube, tmp_path, monkeypatch) -> LogSource:
    monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
    return LogSource("traefik", "app.kubernetes.io/name=traefik", 5)


def test_plan_lists_the_pods_to_fetch_once_per_round(r, kube, tmp_path, monkeypatch):
    from app.errors import KubeUnavailable
    from app.rounds import plan

    uids = {kube.add_pod("traefik-a"), kube.add_pod("traefik-b")}
    kube.add_pod("other", labels={"app": "other"})
    source = _source(kube, tmp_path, monkeypatch)
    ledger = Ledger(r, "plan", 60)
    settings = Settings(fetch_interval=60)
    first = plan(ledger, source, settings)
    assert (first.status, first.dispatch) == (RoundStatus.OK, True)
    assert {p.uid for p in first.pods} == uids == set(ledger.pods())
    assert first.summary() == {"status": RoundStatus.OK, "round": first.round, "pods": 2}
    again = plan(ledger, source, settings)  # the same round number: a duplicate beat
    assert (again.status, again.dispatch, again.pods) == (RoundStatus.DUPLICATE, False, [])
    # A round whose pods cannot be listed still dispatches (merge alone).
    r.delete(ledger.k("round", first.round))
    kube.fail_next(3, status=500)
    failed = plan(ledger, source, settings)
    assert (failed.status, failed.dispatch, failed.pods) == (RoundStatus.KUBE_ERROR, True, [])
    r.delete(ledger.k("round", first.round))
    no_config = plan(ledger, KubeUnavailable("no in-cluster config and no KUBECONFIG"), settings)
    assert (no_config.status, no_config.dispatch, no_config.pods) == (RoundStatus.KUBE_ERROR, True, [])
    assert not r.set(ledger.k("round", first.round), "1", nx=True)  # that round was claimed too
    source.close()


def test_plan_refuses_a_ledger_that_lost_its_record(r, kube, tmp_path, monkeypatch):
    from app.rounds import plan

    kube.add_pod("traefik-a")
    source = _source(kube, tmp_path, monkeypatch)
    ledger = Ledger(r, "lost", 60)
    ledger.incr({"lines_read": 1})  # data, no initialisation record
    out = plan(ledger, source, Settings(fetch_interval=60))
    assert (out.status, out.dispatch, out.pods) == (RoundStatus.LEDGER_LOST, False, [])
    assert ledger.pods() == {}
    source.close()


def test_merge_seals_ended_intervals_and_returns_the_claimed_keys(r):
    from app.model import ReportKey, ReportState
    from app.rounds import merge

    ledger = Ledger(r, "merge", 60)
    ledger.initialise(0)
    now = int(ledger.now())
    start = now - now % 60 - 120
    r.hset(ledger.k("iv", start), mapping={"b:i": 1, "b:o": 2, "b:r": 3, "a:i": 4, "a:o": 5, "a:r": 6})
    r.zadd(ledger.k("open"), {str(start): start})
    # No listing yet: the watermark knows of no source, nothing is sealed.
    assert merge(ledger, Settings()).sealed == 0 and ledger.sealed_to() == 0
    # A listing (no pods) taken now: every interval that ended before now - margin - W goes.
    ledger.note_listing("pods", ledger.now(), {})
    out = merge(ledger, Settings())
    assert out.sealed == 1
    assert start + 60 <= ledger.sealed_to() <= now
    assert sorted(out.reports) == [ReportKey(start, "a"), ReportKey(start, "b")]
    assert {ledger.report(k).state for k in out.reports} == {ReportState.QUEUED}
    again = merge(ledger, Settings())
    assert (again.sealed, again.reports) == (0, [])


def test_a_plan_that_cannot_list_records_the_failure_for_the_watermark(r):
    from app.errors import KubeError
    from app.model import RoundStatus
    from app.rounds import plan

    ledger = Ledger(r, "plan-fail", 60)
    ledger.initialise(0)
    ledger.note_listing("pods", ledger.now() - 5, {})
    out = plan(ledger, KubeError("no config"), Settings())
    assert out.status == RoundStatus.KUBE_ERROR
    (listing,) = ledger.listings()
    assert listing.fail_since is not None and abs(listing.fail_since - ledger.now()) < 5
    ledger.note_listing("pods", ledger.now(), {})
    assert ledger.listings()[0].fail_since is None


DOMAIN = "t.lum.tools"
RI = 2
_seq = itertools.count()


@pytest.fixture
def ledger(r):
    led = Ledger(r, f"trw{next(_seq)}", RI)
    assert led.initialise(0)
    return led


def _poll(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return False


def stamp(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ns % 10**9:09d}Z"


def access_line(sub: str, start_ns: int, duration_ns: int | None, bo: int = 100) -> bytes:
    """A Traefik v3 JSON access line for ``<sub>.t.lum.tools`` that started at ``start_ns``."""
    entry = {"DownstreamContentSize": bo, "DownstreamStatus": 200, "RequestContentSize": 0,
             "RequestHost": f"{sub}.{DOMAIN}", "RequestMethod": "GET", "RequestPath": "/", "RequestProtocol": "HTTP/1.1",
             "RouterName": "tunnels@file", "StartUTC": stamp(start_ns), "level": "info", "msg": "",
             "time": stamp(start_ns)[:19] + "Z"}
    if duration_ns is not None:
        entry["Duration"] = duration_ns
    return json.dumps(entry, separators=(",", ":"), sort_keys=True).encode() + b"\n"



# ----- the watermark over plan, fetch and merge, in this process --------------------------


POD = "traefik-0"


class _RestartBeforeRead:
    """The log source, with the pod's container restarted (once) between the fetch's GET of
    the pod and its log request: the kubelet then serves the new, empty container."""

    def __init__(self, source: LogSource, kube) -> None:
        self.source = source
        self.kube = kube
        self.armed = False

    def __getattr__(self, name):
        return getattr(self.source, name)

    def stream_log(self, *args, **kwargs):
        if self.armed:
            self.armed = False
            self.kube.restart(POD)
        return self.source.stream_log(*args, **kwargs)


@pytest.mark.parametrize("race", [False, True], ids=["restart_before_the_round", "restart_between_get_and_read"])
def test_a_restart_between_get_and_read_records_no_read_of_the_previous_container(ledger, kube, tmp_path,
                                                                                     monkeypatch, race):
    """Issue 11: "An undrained previous container holds sealing back". The container
    restarts after the fetch's GET of the pod and before its log request. The read returns
    the new container's (empty) log, consumed 0: ``_commit`` skips its "moved" check
    (only done when something was consumed) and records the OLD container as read to its
    end at this read's start. The listing (taken before the restart) names the old
    container too, so the watermark seals the interval of a line the old container wrote
    and nobody read yet. Next round drains the previous container: the line becomes an
    amendment although no pod was unreadable. Expected: no amendment."""
    monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
    kube.add_pod(POD)
    settings = Settings(report_interval=RI, fetch_interval=1, redis_key_prefix=ledger.p, seal_max_wait=600)
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    wrapped = _RestartBeforeRead(source, kube)
    fetcher = Fetcher(wrapped, ledger, domain=DOMAIN, container="traefik", limit_bytes=1 << 20)

    def one_round():
        for key in ledger.r.scan_iter(match=ledger.k("round", "*")):
            ledger.r.delete(key)
        plan = rounds.plan(ledger, wrapped, settings)
        out = [fetcher.fetch(p.name, p.uid) for p in plan.pods]
        rounds.merge(ledger, settings)
        return out

    try:
        kube.write(POD, access_line("tun-r", time.time_ns(), 1_000_000)[:-1])
        one_round()
        t2 = kube.write(POD, access_line("tun-r", time.time_ns(), 1_000_000)[:-1])  # written, not read yet
        # The next round's listing must be from after t2's interval end + margin + W.
        end2 = (t2 // 10**9 // RI + 1) * RI
        _poll(lambda: ledger.now() > end2 + settings.seal_clock_margin + settings.log_reorder_window + 0.2, 10)
        if race:
            wrapped.armed = True
        else:
            kube.restart(POD)
        one_round()  # with race: the restart happens inside this round's fetch
        sealed_after_race = ledger.sealed_to()
        for _ in range(3):
            one_round()  # drains the previous container
    finally:
        source.close()
    keys = ledger.report_keys()
    total = sum(ledger.report(k).requests for k in keys if k.subdomain == "tun-r")
    assert total == 2  # totals stay exact either way
    amended = [k for k in keys if k.amendment]
    assert amended == [], (f"sealed to {sealed_after_race} (t2's interval ends {end2}) while the previous container "
                           f"held t2's line unread; amendments {amended}")


def test_pods_that_cannot_be_listed_hold_sealing_back_at_most_seal_max_wait(ledger, kube, tmp_path, monkeypatch):
    """The API refuses to list pods (RBAC change, apiserver overload answering the list
    only): each plan logs "cannot list Traefik pods" and sends merge alone, no fetch runs,
    no ``readfail`` is written. docs/design.md, "Sealing": a source whose reads fail holds
    sealing back only for SEAL_MAX_WAIT, "so does a listing that could not be renewed.
    After that the intervals are sealed without it (forced)". Expected: sealing moves on
    SEAL_MAX_WAIT (2 s) after the listing stopped being renewed."""
    monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
    kube.add_pod(POD)
    settings = Settings(report_interval=RI, fetch_interval=1, redis_key_prefix=ledger.p, seal_max_wait=2)
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    fetcher = Fetcher(source, ledger, domain=DOMAIN, container="traefik", limit_bytes=1 << 20)

    def one_round():
        for key in ledger.r.scan_iter(match=ledger.k("round", "*")):
            ledger.r.delete(key)
        plan = rounds.plan(ledger, source, settings)
        for p in plan.pods:
            fetcher.fetch(p.name, p.uid)
        rounds.merge(ledger, settings)
        return plan

    try:
        kube.write(POD, access_line("tun-l", time.time_ns(), 1_000_000)[:-1])
        assert one_round().pods
        kube.deny("list", "pods")
        denied_at = ledger.now()
        assert one_round().status == "kube_error"

        def moved_on() -> bool:
            one_round()
            return ledger.sealed_to() > denied_at + RI

        ok = _poll(moved_on, 15)
    finally:
        source.close()
    assert ok, (f"sealed_to {ledger.sealed_to()} stuck {ledger.now() - ledger.sealed_to():.1f}s behind; held by "
                f"{ledger.seal_state().get('held_by')}, forced {ledger.seal_state().get('forced')}")


def test_a_ledger_keeps_the_report_identity_it_was_made_under(r, caplog):
    # Reports are sent with REPORT_INTERVAL and SCRAPER_ID as they are when sent: a change
    # would give reports made before it new Idempotency-Keys (a new-user trial).
    ledger = Ledger(r, "ident", 60)
    assert rounds.ensure_ledger(ledger, Settings(scraper_id="cluster-a"))  # a first start records both
    assert ledger.init_record()["report_interval"] == "60" and ledger.init_record()["scraper_id"] == "cluster-a"
    assert rounds.ensure_ledger(ledger, Settings(scraper_id="cluster-a"))
    with caplog.at_level("ERROR"):
        assert not rounds.ensure_ledger(Ledger(r, "ident", 30), Settings(scraper_id="cluster-a", report_interval=30))
        assert not rounds.ensure_ledger(ledger, Settings(scraper_id="cluster-b"))
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert errors[0].startswith("not fetching: REPORT_INTERVAL is '30' but the ledger under prefix 'ident' makes its "
                                "reports with REPORT_INTERVAL='60'")
    assert errors[1].startswith("not fetching: SCRAPER_ID is 'cluster-b'") and "SCRAPER_ID='cluster-a'" in errors[1]

    # A record made by an earlier version, without them, takes the values of the first
    # process that checks it; a record gone meanwhile is not re-created by that.
    legacy = Ledger(r, "ident-legacy", 60)
    r.hset(legacy.k("init"), mapping={"start_at_ns": "0", "created_at": "1.0"})
    assert legacy.identity_problem(legacy.init_record(), "cluster-a") is None
    assert legacy.init_record() == {"start_at_ns": "0", "created_at": "1.0", "report_interval": "60",
                                    "scraper_id": "cluster-a"}
    assert "SCRAPER_ID" in legacy.identity_problem(legacy.init_record(), "cluster-b")
    gone = Ledger(r, "ident-gone", 60)
    assert gone.identity_problem({"start_at_ns": "0"}, "cluster-a") is None
    assert gone.init_record() is None


def test_init_ledger_force_changes_the_identity_only_with_nothing_waiting(r, redis_url):
    import pathlib
    import subprocess
    import sys

    def run(*args, **env):
        return subprocess.run([sys.executable, "-m", "app", "init-ledger", *args],
                              env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "cli-ident",
                                   "SCRAPER_ID": "cluster-a", **env},
                              capture_output=True, text=True, timeout=60, cwd=str(pathlib.Path(__file__).parents[2]))

    assert run("--start-at", "2026-11-24T00:00:00Z").returncode == 0
    ledger = Ledger(r, "cli-ident", 60)
    r.zadd(ledger.k("due"), {"1795478400:alpha": 0})  # a report made under 60 s intervals, not delivered
    refused = run("--force", REPORT_INTERVAL="30")
    assert refused.returncode == 1
    assert "not changing REPORT_INTERVAL '60' -> '30': 1 report(s) waiting and 0 dead-lettered" in refused.stderr
    assert ledger.init_record()["report_interval"] == "60"
    assert run("--force", REPORT_INTERVAL="60").returncode == 0  # no change: nothing to refuse
    r.zrem(ledger.k("due"), "1795478400:alpha")
    changed = run("--force", REPORT_INTERVAL="30", SCRAPER_ID="cluster-b")
    assert changed.returncode == 0, changed.stderr
    record = ledger.init_record()
    assert (record["report_interval"], record["scraper_id"]) == ("30", "cluster-b")
    assert ledger.start_at_ns() == 1_795_478_400 * 10**9  # counting goes on from where it did


def test_identity_adoption_race_and_init_ledger_on_an_earlier_versions_record(r, redis_url):
    import pathlib
    import subprocess
    import sys

    # Two processes of different values check an earlier version's record at once: the
    # first to adopt wins, and the other is refused (a review: both passed).
    legacy = {"start_at_ns": "0", "created_at": "1.0"}
    first, second = Ledger(r, "race", 60), Ledger(r, "race", 30)
    r.hset(first.k("init"), mapping=legacy)
    seen_by_second = second.init_record()
    assert first.identity_problem(first.init_record(), "a") is None
    assert "REPORT_INTERVAL is '30'" in second.identity_problem(seen_by_second, "a")

    # init-ledger without --force leaves an existing record as it is, an earlier version's too.
    old = Ledger(r, "cli-legacy", 60)
    r.hset(old.k("init"), mapping=legacy)

    def run(*args, **env):
        return subprocess.run([sys.executable, "-m", "app", "init-ledger", *args],
                              env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "cli-legacy",
                                   **env}, capture_output=True, text=True, timeout=60,
                              cwd=str(pathlib.Path(__file__).parents[2]))

    assert run().returncode == 1
    assert old.init_record() == legacy
    # --force on it, a report waiting: what it was made under is not known, so refused.
    r.zadd(old.k("due"), {"1795478400:alpha": 0})
    refused = run("--force", SCRAPER_ID="cluster-a")
    assert refused.returncode == 1 and "REPORT_INTERVAL '(not recorded)' -> '60'" in refused.stderr
    assert old.init_record() == legacy


def test_a_change_of_identity_is_refused_when_a_report_appears_during_it(r, monkeypatch):
    # A review: init-ledger --force counted the reports waiting, then wrote, in two steps:
    # a worker still running could make one in between.
    from app.ledger import ReportsWaiting

    ledger = Ledger(r, "force-race", 60)
    ledger.initialise(0, scraper_id="a")
    real_zcard = type(r.pipeline()).zcard
    made = []

    def zcard_after_a_report_was_made(pipe, name):
        if not made:
            made.append(r.zadd(ledger.k("due"), {"1795478400:alpha": 0}))  # between WATCH and EXEC
        return real_zcard(pipe, name)

    monkeypatch.setattr(type(r.pipeline()), "zcard", zcard_after_a_report_was_made)
    with pytest.raises(ReportsWaiting) as info:
        Ledger(r, "force-race", 30).initialise(0, force=True, scraper_id="a", idle_only=True)
    assert (info.value.waiting, info.value.dead) == (1, 0)
    assert ledger.init_record()["report_interval"] == "60"
