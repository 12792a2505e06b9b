"""The pod watch's logic (app/watch.py) without servers: the tracker's read schedule and
gap decisions, and the watcher's loop over a scripted event source (list, watch, 410,
DELETED), with a fake read and a fake ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from app.errors import KubeUnavailable, WatchExpired
from app.kube import Container, Pod, PodEvent
from app.model import Cursor, FetchStatus
from app.watch import PodTracker, Watcher, lost_lines

NS = 1_000_000_000
T_EXIT = 1_795_000_100 * NS  # a container's finishedAt (whole seconds, as the apiserver sends it)
INTERVAL = 1.0


def pod(name: str = "traefik-0", uid: str = "u0", cid: str = "containerd://c0", deleting: bool = False,
        exited: bool = False, rv: str = "1") -> Pod:
    ctr = Container("traefik", cid, 0, "", exited=exited, finished_ns=T_EXIT if exited else 0)
    return Pod("traefik", name, uid, deleting, (ctr,), deletion_ns=T_EXIT + 30 * NS if deleting else 0,
               resource_version=rv)


def event(kind: str, p: Pod) -> PodEvent:
    return PodEvent(kind, p, p.resource_version)


# ------------------------------------------------------------------- the tracker


@pytest.fixture
def tr() -> PodTracker:
    return PodTracker("", INTERVAL)


def read(tr: PodTracker, now: float, status: str = FetchStatus.OK, cut: bool = False) -> list[str]:
    """Start what is due at ``now`` and finish it at once with ``status``."""
    started = tr.start_due(now)
    for st in started:
        tr.read_done(st.uid, status, cut, int(now * NS), now, int(now * NS))
    return [st.name for st in started]


def test_running_pods_are_left_to_the_rounds(tr):
    tr.sync([pod("a", "ua"), pod("b", "ub")], 0.0, 0)
    assert tr.start_due(100.0) == [] and tr.next_due() is None


def test_terminating_pod_is_read_at_once_then_every_interval(tr):
    tr.sync([pod()], 0.0, 0)
    tr.event(event("MODIFIED", pod(deleting=True)), 10.0, 0)
    assert tr.next_due() == 10.0
    assert read(tr, 10.0) == ["traefik-0"]
    assert tr.next_due() == 10.0 + INTERVAL
    assert read(tr, 10.5) == []
    assert read(tr, 11.0) == ["traefik-0"]
    assert tr.next_due() == 12.0


def test_a_pod_terminating_when_listed_is_read_at_once(tr):
    tr.sync([pod(deleting=True)], 5.0, 0)
    assert read(tr, 5.0) == ["traefik-0"]


def test_container_exit_gets_a_final_read_then_no_more(tr):
    tr.sync([pod(deleting=True)], 0.0, 0)
    read(tr, 0.0)
    tr.event(event("MODIFIED", pod(deleting=True, exited=True)), 0.3, 0)
    assert tr.next_due() == 0.3  # at once, not at the next interval
    assert read(tr, 0.3) == ["traefik-0"]
    st = tr.pods["u0"]
    assert st.final_read and tr.next_due() is None
    (gone,) = tr.event(event("DELETED", pod(deleting=True, exited=True)), 1.3, 0)
    assert not lost_lines(gone) and tr.pods == {}


def test_exit_seen_during_a_read_reads_again_after_it(tr):
    tr.sync([pod(deleting=True)], 0.0, 0)
    (st,) = tr.start_due(0.0)  # in flight when the exit is seen: it may have started too early
    tr.event(event("MODIFIED", pod(deleting=True, exited=True)), 0.1, 0)
    tr.read_done("u0", FetchStatus.OK, False, 0, 0.2, 0)
    assert not st.final_read and tr.next_due() == 0.2
    assert read(tr, 0.2) == ["traefik-0"] and st.final_read


def test_deleted_before_the_final_read_lost_lines(tr):
    tr.sync([pod(deleting=True)], 0.0, 0)
    read(tr, 0.0)
    tr.event(event("MODIFIED", pod(deleting=True, exited=True)), 0.5, 0)
    (gone,) = tr.event(event("DELETED", pod(deleting=True, exited=True)), 0.6, 7)
    assert lost_lines(gone) and gone.gone_ns == 7 and gone.finished_ns == T_EXIT
    assert tr.start_due(1.0) == []  # nothing to read any more


def test_deleted_during_the_final_read_is_settled_when_it_ends(tr):
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    tr.start_due(0.0)
    assert tr.event(event("DELETED", pod(deleting=True, exited=True)), 0.1, 0) == []
    (gone,) = tr.read_done("u0", FetchStatus.OK, False, 0, 0.2, 0)
    assert not lost_lines(gone)  # the read started after the exit: it got everything


def test_a_read_answering_404_settles_the_pod(tr):
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    tr.start_due(0.0)
    (gone,) = tr.read_done("u0", FetchStatus.GONE, False, 0, 0.1, 9)
    assert lost_lines(gone) and gone.gone_ns == 9
    assert tr.event(event("DELETED", pod(deleting=True, exited=True)), 0.2, 0) == []  # once


@pytest.mark.parametrize("status", [FetchStatus.KUBE_ERROR, FetchStatus.NO_PROGRESS, FetchStatus.LEDGER_LOST])
def test_a_failed_final_read_is_not_final(tr, status):
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    read(tr, 0.0, status)
    assert not tr.pods["u0"].final_read and tr.next_due() == INTERVAL


def test_a_cut_read_reads_on_at_once(tr):
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    read(tr, 0.0, cut=True)  # limitBytes reached: more is waiting
    assert not tr.pods["u0"].final_read and tr.next_due() == 0.0
    read(tr, 0.1)
    assert tr.pods["u0"].final_read


def test_a_read_that_makes_no_progress_waits_the_interval(tr):
    """NO PROGRESS is a cut read that consumed nothing: reading again at once would get the
    same bytes, 20 times a second, until the pod is gone (found by review)."""
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    read(tr, 0.0, FetchStatus.NO_PROGRESS, cut=True)
    assert not tr.pods["u0"].final_read and tr.next_due() == INTERVAL


@pytest.mark.parametrize("status", [FetchStatus.CONFLICT, FetchStatus.RESTARTED])
def test_conflict_or_restart_reads_again_at_once(tr, status):
    tr.sync([pod(deleting=True)], 0.0, 0)
    read(tr, 0.0, status)
    assert tr.next_due() == 0.0


def test_a_relist_settles_pods_it_no_longer_shows(tr):
    tr.sync([pod("a", "ua"), pod("b", "ub", deleting=True)], 0.0, 0)
    (gone,) = tr.sync([pod("a", "ua")], 1.0, 5)
    assert gone.name == "b" and lost_lines(gone) and set(tr.pods) == {"ua"}


def test_force_deleted_running_pod_lost_lines(tr):
    tr.sync([pod()], 0.0, 0)
    (gone,) = tr.event(event("DELETED", pod()), 1.0, 3)
    assert lost_lines(gone) and not gone.exited and gone.deletion_ns == 0


def test_pod_whose_container_never_started_lost_nothing(tr):
    tr.sync([pod(cid="")], 0.0, 0)
    (gone,) = tr.event(event("DELETED", pod(cid="")), 1.0, 0)
    assert not lost_lines(gone)


def test_a_restart_resets_the_exit(tr):
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    read(tr, 0.0)
    assert tr.pods["u0"].final_read
    tr.event(event("MODIFIED", pod(cid="containerd://c1", deleting=True)), 1.0, 0)
    st = tr.pods["u0"]
    assert not st.exited and not st.final_read and st.container_id == "containerd://c1"


def test_a_read_after_the_previous_containers_exit_is_not_the_new_containers_final_read(tr):
    # Found by a review: container c0 exits, a read starts, c0 restarts as c1 while it runs;
    # the read's end must not count as c1's final read (a pod gone before any read after
    # c1's exit may have lost c1's last lines: a gap record).
    tr.sync([pod(cid="containerd://c0")], 0.0, 0)
    tr.event(event("MODIFIED", pod(cid="containerd://c0", exited=True)), 1.0, 0)
    (st,) = tr.start_due(1.0)
    assert st.read_after_exit
    tr.event(event("MODIFIED", pod(cid="containerd://c1")), 1.1, 0)
    tr.read_done("u0", FetchStatus.OK, False, 1 * NS, 1.2, 2 * NS)
    assert not st.final_read
    (gone,) = tr.event(event("DELETED", pod(cid="containerd://c1", deleting=True)), 50.0, 50 * NS)
    assert lost_lines(gone)


def test_replacement_under_the_same_name_is_another_pod(tr):
    tr.sync([pod(deleting=True, exited=True)], 0.0, 0)
    read(tr, 0.0)
    tr.event(event("DELETED", pod(deleting=True, exited=True)), 1.0, 0)
    tr.event(event("ADDED", pod(uid="u1", cid="containerd://c9")), 1.1, 0)
    assert set(tr.pods) == {"u1"} and tr.start_due(2.0) == []


# ----------------------------------------------------------------- the watcher loop


class Script:
    """A scripted watch: each call of ``watch_pods`` plays the next list of steps; a step
    is a PodEvent to yield, an exception to raise, or a callable to wait on (truthy)."""

    def __init__(self, lists: list[list[Pod]], watches: list[list[object]]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls = 0
        self.watch_rvs: list[str] = []
        self.done = threading.Event()

    def list_pods_at(self):
        pods = self.lists[min(self.list_calls, len(self.lists) - 1)]
        self.list_calls += 1
        return pods, f"L{self.list_calls}"

    def watch_pods(self, rv: str, timeout_seconds: int):
        self.watch_rvs.append(rv)
        steps = self.watches.pop(0) if self.watches else None
        return _Stream(steps, self.done)


class _Stream:
    def __init__(self, steps, done: threading.Event) -> None:
        self.steps = steps
        self.done = done
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def __iter__(self):
        if self.steps is None:  # nothing more scripted: idle until stopped
            self.done.set()
            self.stopped.wait(5)
            return
        for step in self.steps:
            if isinstance(step, BaseException):
                raise step
            if callable(step):
                assert _wait(step), "a scripted wait timed out"
                continue
            yield step


def _wait(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


class FakeLedger:
    def __init__(self, cursors: dict[str, str] | None = None) -> None:
        self.cursors = cursors or {}
        self.gaps: list[dict] = []
        self.read_to_end_by: dict[str, str] = {}  # uid -> container id (Ledger.mark_read_to_end)

    def start_at_ns(self) -> int:
        return 0

    def cursor_raw(self, field: str) -> str:
        return self.cursors.get(field, "")

    def record_gap(self, gap: dict) -> None:
        self.gaps.append(gap)

    def read_to_end(self, uid: str) -> str:
        return self.read_to_end_by.get(uid, "")

    def now(self) -> float:
        return time.time()


class Reads:
    """The fake ``read``: records (name, time) and answers a status."""

    def __init__(self, status: str = FetchStatus.OK) -> None:
        self.calls: list[str] = []
        self.finals: list[bool] = []  # each read's final (after the container was seen terminated)
        self.status = status

    def __call__(self, name: str, uid: str, final: bool = False) -> dict:
        self.calls.append(name)
        self.finals.append(final)
        return {"pod": name, "status": self.status, "cut": False}


def lead(script: Script, reads: Reads, ledger: FakeLedger, until: Callable[[], object]) -> None:
    w = Watcher(script, reads, ledger, container="", interval=0.05)
    stop = threading.Event()
    t = threading.Thread(target=w.lead, args=(stop,))
    t.start()
    try:
        assert _wait(until), "the watcher did not get there"
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_rollout_read_to_the_end_records_no_gap():
    running, deleting, exited = pod(), pod(deleting=True, rv="2"), pod(deleting=True, exited=True, rv="3")
    reads, ledger = Reads(), FakeLedger()
    script = Script(
        [[running]],
        [[
            event("MODIFIED", deleting),
            lambda: len(reads.calls) >= 3,  # read at once, then about every 0.05 s
            event("MODIFIED", exited),
            lambda: len(reads.calls) >= 4,
            event("DELETED", exited),
        ]],
    )
    lead(script, reads, ledger, lambda: script.done.is_set())
    time.sleep(0.2)
    assert ledger.gaps == []
    assert script.watch_rvs[0] == "L1"  # watched from the list's version
    # The reads say whether they started after the exit was seen (follow.fetch_heeding_lease's
    # final: a followed pod's final read goes through its BUSY lease).
    assert reads.finals[:3] == [False] * 3 and reads.finals[-1] is True


def test_deleted_unread_gets_a_gap_from_the_cursor_to_the_exit():
    exited = pod(deleting=True, exited=True, rv="3")
    cursor_t = T_EXIT - 2 * NS + 123
    ledger = FakeLedger({"u0/traefik": Cursor("containerd://c0", cursor_t, 4).encode()})
    reads = Reads(FetchStatus.KUBE_ERROR)  # the reads fail: nothing after the exit got through
    script = Script([[pod(deleting=True)]], [[
        lambda: len(reads.calls) >= 1,
        event("MODIFIED", exited),
        lambda: len(reads.calls) >= 2,
        event("DELETED", exited),
    ]])
    lead(script, reads, ledger, lambda: ledger.gaps)
    (gap,) = ledger.gaps
    assert (gap["pod"], gap["uid"], gap["container"]) == ("traefik-0", "u0", "traefik")
    assert (gap["from_ns"], gap["to_ns"]) == (cursor_t, T_EXIT + NS)
    assert "vanished before its last lines were read" in gap["reason"]


def test_a_final_read_cut_at_fetch_max_bytes_is_not_the_end():
    """The fetch result's ``cut``: more log was waiting, so that read was not the last."""
    exited = pod(deleting=True, exited=True, rv="3")
    answers = [True, False]
    calls: list[str] = []

    def read(name: str, uid: str, final: bool = False) -> dict:
        calls.append(name)
        return {"pod": name, "status": FetchStatus.OK, "cut": answers.pop(0) if answers else False}

    ledger = FakeLedger()
    script = Script([[exited]], [[lambda: len(calls) >= 2, event("DELETED", exited)]])
    lead(script, read, ledger, lambda: script.done.is_set())
    time.sleep(0.2)
    assert len(calls) == 2 and ledger.gaps == []  # read on at once, then read to the end


def test_410_lists_again_and_settles_what_the_new_list_lacks():
    reads, ledger = Reads(), FakeLedger()
    script = Script(
        [[pod("a", "ua"), pod("b", "ub")], [pod("a", "ua")]],
        [[WatchExpired("watch pods in traefik: HTTP 410: too old resource version")]],
    )
    lead(script, reads, ledger, lambda: ledger.gaps)
    assert script.list_calls == 2 and script.watch_rvs[:2] == ["L1", "L2"]
    (gap,) = ledger.gaps
    assert gap["pod"] == "b" and gap["from_ns"] == 0  # never read: from the start


def test_a_broken_watch_resumes_from_the_last_version():
    reads, ledger = Reads(), FakeLedger()
    script = Script([[pod()]], [[event("MODIFIED", pod(rv="7")), KubeUnavailable("stream broke")]])
    lead(script, reads, ledger, lambda: len(script.watch_rvs) >= 2)
    assert script.watch_rvs[:2] == ["L1", "7"] and script.list_calls == 1


def test_a_read_that_raises_does_not_stop_the_watcher():
    calls = []

    def bad_read(name, uid, final=False):
        calls.append(name)
        raise RuntimeError("boom")

    ledger = FakeLedger()
    script = Script([[pod(deleting=True)]], [])
    lead(script, bad_read, ledger, lambda: len(calls) >= 3)  # retried every interval


# ------------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({}, True),
        ({"TERMINATING_READ_INTERVAL": "0.25"}, True),
        ({"TERMINATING_READ_INTERVAL": "10"}, True),  # = FETCH_INTERVAL (default 10)
        ({"TERMINATING_READ_INTERVAL": "0.05"}, False),
        ({"TERMINATING_READ_INTERVAL": "11"}, False),
        ({"TERMINATING_READ_INTERVAL": "3", "FETCH_INTERVAL": "2"}, False),
        ({"TERMINATING_READ_INTERVAL": "soon"}, False),
    ],
)
def test_terminating_read_interval_setting(monkeypatch, env, ok):
    from app.settings import ConfigError, Settings, load_settings

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ok:
        assert load_settings().terminating_read_interval == float(env.get("TERMINATING_READ_INTERVAL", 1.0))
        return
    with pytest.raises(ConfigError) as err:
        load_settings()
    (line,) = str(err.value).splitlines()
    assert line.startswith("config error: TERMINATING_READ_INTERVAL ")
    assert line.endswith("expected a number of seconds from 0.1 to FETCH_INTERVAL")


def test_the_watcher_refuses_a_file_log_source(monkeypatch, caplog):
    """With LOG_SOURCE=file there are no pods: a configuration error (exit 2), one line."""
    from app import runtime, watch
    from app.settings import Settings

    s = Settings(log_source="file", log_files="/nonexistent/access.log")
    monkeypatch.setattr(runtime, "settings", lambda: s)
    assert watch.run(threading.Event()) == 2
    assert "LOG_SOURCE=file: there are no Traefik pods to watch" in caplog.text


def test_a_terminated_pod_its_follower_holds_is_read_again_soon(tr):
    """The pod's follower holds it (FOLLOWED): it reads it to the end and lets go once its
    stream ends with the container, so the final read is tried again every
    FOLLOWED_RETRY, not every interval; before the exit, at the interval."""
    from app.watch import FOLLOWED_RETRY

    tr.sync([pod(deleting=True)], 0.0, 0)
    read(tr, 0.0, FetchStatus.FOLLOWED)
    assert tr.next_due() == INTERVAL
    tr.event(event("MODIFIED", pod(deleting=True, exited=True)), 0.5, 0)
    assert read(tr, 0.5, FetchStatus.FOLLOWED) == ["traefik-0"]
    st = tr.pods["u0"]
    assert not st.final_read and tr.next_due() == pytest.approx(0.5 + FOLLOWED_RETRY)
    assert read(tr, 0.5 + FOLLOWED_RETRY) == ["traefik-0"] and st.final_read


def test_a_pod_its_follower_read_to_the_end_gets_no_gap_when_it_goes_first():
    """The watcher's reads found the pod followed (FOLLOWED) until it went; its follower
    read it to the end after the exit and said so (``Ledger.mark_read_to_end``): no gap.
    The same pod without that mark gets one (test above)."""
    exited = pod(deleting=True, exited=True, rv="3")
    ledger = FakeLedger()
    ledger.read_to_end_by = {"u0": "containerd://c0"}
    reads = Reads(FetchStatus.FOLLOWED)
    script = Script([[pod(deleting=True)]], [[
        lambda: len(reads.calls) >= 1,
        event("MODIFIED", exited),
        lambda: len(reads.calls) >= 2,
        event("DELETED", exited),
    ]])
    lead(script, reads, ledger, lambda: script.done.is_set())
    assert ledger.gaps == []
