"""Sweep's clean-up of gone pods' cursors, against the fake Kubernetes API and real Redis."""

from __future__ import annotations

import json

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
    ledger = Ledger(r, "cli", 60)
    assert ledger.start_at_ns() == 1_795_478_400 * 10**9
    again = run("--start-at", "2026-11-25T00:00:00Z")
    assert again.returncode == 1 and "already initialised" in again.stderr
    assert ledger.start_at_ns() == 1_795_478_400 * 10**9
    forced = run("--start-at", "2026-11-25T00:00:00Z", "--force")
    assert forced.returncode == 0
    assert ledger.start_at_ns() == (1_795_478_400 + 86_400) * 10**9


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
