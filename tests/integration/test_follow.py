"""The follower (app/follow.py) against the fake Kubernetes API's ``follow=true`` streams
(official client, real Redis): a busy pod whose log the kubelet rotates every half
second is counted exactly, with no line lost and no gap; the lease keeps the rounds and
other followers off; a stream ends when the container stops, when a fetch commits under
it, when its lease is lost and when the worker stops, each time with what it read
committed."""

from __future__ import annotations

import time
from unittest.mock import ANY

import pytest

from app import follow
from app.follow import Follower, Lease, lease_of, lease_seen
from app.model import Cursor, FetchStatus
from sim.fake_kube import FakeKube
from sim.procs import wait_until
from tests.followkit import POD, committed, first_read, make_fetcher, write_steadily
from tests.traffic import Traffic

NS = 1_000_000_000
ROTATE_BYTES = 400_000  # about 350 Traffic lines: rotated at every check of a busy pod


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fk = FakeKube(rotate_bytes=ROTATE_BYTES, rotate_every=0.5)
    fk.start()
    monkeypatch.setenv("KUBECONFIG", fk.write_kubeconfig(tmp_path / "kubeconfig"))
    fk.add_pod(POD)
    yield fk
    fk.stop()


def test_a_followed_pod_rotated_every_half_second_loses_nothing(fake, ledger, fetcher, follower):
    traffic = Traffic(seed=11, tunnels=30)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    assert lease_of(ledger, uid) is Lease.BUSY
    write_steadily(fake, traffic, 2000, 4.0).join()
    wait_until(lambda: committed(ledger) == traffic.expected(), 30, interval=0.1, what="every line committed")
    assert fake.rotations >= 4
    assert fake.unserved(POD) == []
    assert ledger.gaps() == []
    assert ledger.stats().get("follow_started") == 1
    # Its read record carries the stamps: the watermark moves with a busy followed pod.
    rec = ledger.read_records()[uid]
    assert rec.high_ns == Cursor.decode(ledger.cursor_raw(f"{uid}/traefik")).high_ns > 0
    follower.stop(10)
    assert lease_of(ledger, uid) is None
    assert ledger.stats().get("follow_ended:stopped") == 1
    assert committed(ledger) == traffic.expected()


def test_the_lease_says_its_state_and_when_it_was_renewed(fake, ledger, fetcher, follower):
    """A probe of a pod whose file was renamed records it up to the lease's renewal time
    (less STALLED_AFTER): the renewal writes Redis's time with the state."""
    traffic = Traffic(seed=13, tunnels=5)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    assert lease_seen(ledger, uid) == (Lease.BUSY, None)  # taken, not renewed yet
    wait_until(lambda: lease_seen(ledger, uid)[0] is Lease.QUIET, 10, interval=0.05, what="the lease saying quiet")
    first = lease_seen(ledger, uid)[1]
    assert first is not None and ledger.now() - 2 * follow.TICK - 0.1 <= first <= ledger.now()
    wait_until(lambda: lease_seen(ledger, uid)[1] > first, 5, interval=0.05, what="a renewal after it")
    follower.stop(10)
    assert lease_seen(ledger, uid) is None


def test_without_the_follower_the_same_traffic_loses_lines(fake, ledger, fetcher):
    """The contrast: reads every 0.2 s, as fast as the pace ever reads, leave lines in
    the renamed files (the scraper records the gaps)."""
    traffic = Traffic(seed=12, tunnels=30)
    uid = first_read(fake, fetcher, traffic)
    writer = write_steadily(fake, traffic, 2000, 4.0)
    while writer.is_alive():
        fetcher.fetch(POD, uid)
        time.sleep(0.2)
    fetcher.fetch(POD, uid)
    assert fake.unserved(POD)
    assert ledger.gaps()


def test_the_stream_ends_with_the_container_and_the_pod_goes_back_to_the_rounds(fake, ledger, fetcher, follower):
    traffic = Traffic(seed=13)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    write_steadily(fake, traffic, 500, 1.0).join()
    fake.terminate(POD, grace_seconds=30)
    fake.exit_container(POD)
    wait_until(lambda: follower.following() == [], 15, interval=0.05, what="the follower letting the pod go")
    assert lease_of(ledger, uid) is None
    assert ledger.stats().get("follow_ended:stopped_container") == 1
    assert committed(ledger) == traffic.expected()


def _time_calls(ledger) -> int:
    return ledger.r.info("commandstats").get("cmdstat_time", {}).get("calls", 0)


def test_the_renewer_asks_redis_the_time_only_while_it_holds_a_stream(fake, ledger, fetcher, follower):
    uid = first_read(fake, fetcher, Traffic(seed=15, tunnels=3))
    assert follower.offer(POD, uid)
    before = _time_calls(ledger)
    wait_until(lambda: _time_calls(ledger) >= before + 2, 10, interval=0.05, what="two renewals")
    fake.terminate(POD, grace_seconds=30)
    fake.exit_container(POD)
    wait_until(lambda: follower.following() == [], 15, interval=0.05, what="the follower letting the pod go")
    assert follower._renewer is not None and follower._renewer.is_alive()
    idle = _time_calls(ledger)
    end = time.monotonic() + 4 * follow.TICK
    while time.monotonic() < end:  # four ticks of an idle renewer: no round trip
        assert _time_calls(ledger) == idle
        time.sleep(follow.TICK / 5)


def test_a_pod_deleted_while_followed(fake, ledger, fetcher, follower):
    traffic = Traffic(seed=14)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    write_steadily(fake, traffic, 500, 1.0).join()
    wait_until(lambda: committed(ledger) == traffic.expected(), 15, interval=0.05, what="the lines committed")
    fake.delete(POD)
    wait_until(lambda: follower.following() == [], 15, interval=0.05, what="the follower letting the pod go")
    assert lease_of(ledger, uid) is None
    assert ledger.stats().get("follow_ended:gone") == 1


def test_one_follower_per_pod_and_a_bound_per_process(fake, ledger, source, fetcher, follower):
    traffic = Traffic(seed=15)
    uid = first_read(fake, fetcher, traffic)
    other = Follower(make_fetcher(source, ledger), max_pods=1, min_rate=1.0, slice_seconds=0.2)
    try:
        assert follower.offer(POD, uid)
        assert follower.offer(POD, uid)  # already followed here
        assert not other.offer(POD, uid)  # the lease is taken
        fake.add_pod("traefik-1")
        fake.write_many("traefik-1", traffic.lines(10))
        uid1 = fake.pod_uid("traefik-1")
        assert fetcher.fetch("traefik-1", uid1)["status"] == FetchStatus.OK
        assert other.offer("traefik-1", uid1)
        fake.add_pod("traefik-2")
        assert not other.offer("traefik-2", fake.pod_uid("traefik-2"))  # max_pods=1
        assert not follower.wants(0.5) and follower.wants(1.0)
        assert not Follower(fetcher, max_pods=0, min_rate=1.0, slice_seconds=0.2).wants(100.0)
        follower.stop(10)
        assert other.following() == [uid1]
    finally:
        other.stop(10)
    assert committed(ledger) == traffic.expected()


def test_a_fetch_that_commits_under_the_follower_ends_the_stream_and_nothing_counts_twice(fake, ledger, fetcher,
                                                                                           follower):
    fake.rotate_bytes = None  # the polling below would lose lines at rotations
    traffic = Traffic(seed=16)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    writer = write_steadily(fake, traffic, 1000, 3.0)
    while writer.is_alive():
        fetcher.fetch(POD, uid)  # a round's fetch that did not see the lease
        time.sleep(0.05)
    wait_until(lambda: follower.following() == [], 15, interval=0.05, what="the follower letting the pod go")
    assert ledger.stats().get("follow_ended:conflict") == 1
    fetcher.fetch(POD, uid)
    assert committed(ledger) == traffic.expected()


def test_a_lost_lease_stops_the_stream(fake, ledger, fetcher, follower):
    traffic = Traffic(seed=17)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    fake.write_many(POD, traffic.lines(20))
    wait_until(lambda: committed(ledger) == traffic.expected(), 15, interval=0.05, what="the lines committed")
    ledger.r.set(follow.lease_key(ledger, uid), "someone-else busy", ex=30)
    wait_until(lambda: follower.following() == [], 10, interval=0.05, what="the stream stopping")
    assert ledger.r.get(follow.lease_key(ledger, uid)) == b"someone-else busy"  # the other's lease is left alone


def test_a_quiet_followed_pod_is_probed_for_the_watermark(fake, ledger, fetcher, follower):
    """The probe commits a read record only when the read found nothing new; what it
    finds new is left to the follower."""
    traffic = Traffic(seed=18)
    uid = first_read(fake, fetcher, traffic)
    before = ledger.read_records()[uid].end_at
    # Lines the cursor has not consumed: the probe commits nothing.
    fake.write_many(POD, traffic.lines(5))
    cursor = ledger.cursor_raw(f"{uid}/traefik")
    assert fetcher.fetch(POD, uid, probe=True)["status"] == FetchStatus.FOLLOWED
    assert ledger.cursor_raw(f"{uid}/traefik") == cursor
    assert ledger.read_records()[uid].end_at == before
    # Followed and quiet: the follower took them, the probe records the read's start.
    assert follower.offer(POD, uid)
    wait_until(lambda: committed(ledger) == traffic.expected(), 15, interval=0.05, what="the lines committed")
    wait_until(lambda: lease_of(ledger, uid) is Lease.QUIET, 5, interval=0.05, what="the lease saying quiet")
    t0 = ledger.now()
    assert fetcher.fetch(POD, uid, probe=True)["status"] == FetchStatus.OK
    rec = ledger.read_records()[uid]
    assert rec.end_at is not None and rec.end_at >= t0
    assert committed(ledger) == traffic.expected()


def test_the_pace_offers_a_growing_pod_to_the_follower_at_its_second_read(ledger):
    """``pace.next_read`` asks ``follow(rate)`` with the growth measured between two reads,
    cut or not, and sends no early read when the pod is followed; never for a first read."""
    from app import pace
    from app.settings import Settings

    settings = Settings(platform_api_url="http://p:3000", platform_internal_secret="x")
    asked: list[float] = []

    def follow_it(rate: float) -> bool:
        asked.append(rate)
        return True

    assert pace.next_read(ledger, "u1", 100, False, settings, follow=follow_it) is not None  # first: measure
    assert asked == []
    ledger.r.delete(ledger.k("pace", "u1", "next"))
    time.sleep(0.05)
    assert pace.next_read(ledger, "u1", 100, False, settings, follow=follow_it) is None
    assert len(asked) == 1 and asked[0] > 100  # 100 lines in well under a second
    nxt = pace.next_read(ledger, "u2", 100, False, settings, follow=follow_it)  # another pod's first read
    assert nxt is not None and len(asked) == 1
    ledger.r.delete(ledger.k("pace", "u2", "next"))
    # A read cut at limitBytes: a pod writing faster than the reads keep up with.
    assert pace.next_read(ledger, "u2", 5000, True, settings, follow=follow_it) is None
    assert len(asked) == 2 and asked[1] > 5000
    assert pace.next_read(ledger, "u3", 5000, True, settings, follow=lambda rate: False) == (0.0, ANY)


def test_a_stream_behind_its_log_is_warned_about(fake, ledger, fetcher, follower, monkeypatch, caplog):
    monkeypatch.setattr(follow, "BEHIND_WARN", 0.0)
    traffic = Traffic(seed=19)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    fake.rotate_bytes = None
    with caplog.at_level("WARNING", logger="app.follow"):
        for _ in range(10):
            fake.write_many(POD, traffic.lines(3000))  # a burst: chunks wait in the queue
        wait_until(lambda: committed(ledger) == traffic.expected(), 30, interval=0.1, what="the burst committed")
    assert ledger.stats().get("follow_behind") == 1
    assert "the follow stream of pod traefik-0 is" in caplog.text and "FOLLOW_MAX_PODS" in caplog.text


def test_a_line_more_than_the_window_behind_the_newest_is_not_counted_and_the_stream_goes_on(fake, ledger, fetcher,
                                                                                             follower):
    """A line stamped 2.8 s before the newest one (a file served again from its start, or
    the node's clock stepped back): the follower does not count it (follow_old_lines),
    and counts the lines before and after it once, on the same stream."""
    fake.rotate_bytes = None
    traffic = Traffic(seed=20)
    uid = first_read(fake, fetcher, traffic)
    t0 = time.time_ns()
    assert follower.offer(POD, uid)  # its stream starts at the cursor's second, before t0
    fake.write_many(POD, traffic.lines(100), ts_ns=t0 + 3 * NS)
    wait_until(lambda: committed(ledger) == traffic.expected(), 15, interval=0.05, what="the lines committed")
    # After the stream's sinceTime (which the kubelet applies to every line it sends), but
    # more than LOG_REORDER_WINDOW before the newest line.
    back = Traffic(seed=21)
    fake.write_many(POD, back.lines(1), ts_ns=t0 + NS // 5, stream="stderr")
    fake.write_many(POD, traffic.lines(100), ts_ns=t0 + 3 * NS + 1)
    wait_until(lambda: ledger.stats().get("follow_old_lines") == 1, 15, interval=0.05, what="the old line")
    wait_until(lambda: committed(ledger) == traffic.expected(), 15, interval=0.05, what="the lines after it")
    assert follower.following() == [uid]
    assert fake.follow_readers(POD) == 1  # the same stream: not opened again


def test_a_stream_dropped_during_an_apiserver_outage_hands_the_pod_back_to_the_rounds(fake, ledger, fetcher,
                                                                                       follower):
    """The stream drops and the log answers 500 from then on: the follower commits what it
    read, cannot open a new stream, and lets the pod go (``kube_error``); the rounds' reads
    then fail and are noted as read failures (SEAL_MAX_WAIT bounds what they hold back).
    Once the API answers again, a read counts the rest exactly once."""
    fake.rotate_bytes = None
    traffic = Traffic(seed=22)
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    fake.write_many(POD, traffic.lines(100))
    wait_until(lambda: committed(ledger) == traffic.expected(), 15, interval=0.05, what="the lines committed")
    fake.fail_next(10**6, status=500, path_contains="/log")
    assert fake.cut_follow_streams(POD) == 1
    wait_until(lambda: follower.following() == [], 15, interval=0.05, what="the follower letting the pod go")
    ended = {k: v for k, v in ledger.stats().items() if k.startswith("follow_ended")}
    assert ended == {"follow_ended:kube_error": 1}
    assert lease_of(ledger, uid) is None
    fake.write_many(POD, traffic.lines(50))
    assert fetcher.fetch(POD, uid)["status"] == FetchStatus.KUBE_ERROR
    assert ledger.read_records()[uid].fail_since is not None
    fake.clear_failures("/log")
    assert fetcher.fetch(POD, uid)["status"] == FetchStatus.OK
    assert committed(ledger) == traffic.expected()
