"""The watermark (app/watermark.py): when a report interval may be sealed.

The property of the issue: no interval is sealed while a listed, readable pod has not
been read to the end of its log at or after the interval's end plus the margin plus W
(or its highest stamp minus W is past that end), unless the maximum wait has passed.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from app.watermark import NEVER, Listed, Listing, ReadRecord, decide, past

RI = 60
MARGIN = 2.0
W = 1.0
LAG = MARGIN + W
MAX_WAIT = 180.0
T0 = 1_800_000_000  # a whole number of intervals


def run(listings, records, sealed_to=0, now=T0 + 5 * RI + 60):
    return decide(listings, records, sealed_to, now, interval=RI, margin=MARGIN, window=W, max_wait=MAX_WAIT)


def test_no_listing_seals_nothing():
    d = run([], {})
    assert d.seal_to == 0 and d.watermark == NEVER


def test_all_pods_read_to_the_end_after_the_point_seal_up_to_it():
    end = T0 + 5 * RI
    listing = Listing(end + LAG + 6, {"u1": Listed("p1", "c1"), "u2": Listed("p2", "c2")})
    records = {"u1": ReadRecord("c1", end + LAG, 0), "u2": ReadRecord("c2", end + LAG + 5, 0)}
    d = run([listing], records)
    assert d.seal_to == end and d.forced == []
    # One of them read a moment too early: the interval waits for it, and it is named.
    records["u1"] = ReadRecord("c1", end + LAG - 0.001, 0)
    d = run([listing], records)
    assert d.seal_to == end - RI
    assert [h.name for h in d.held_by] == ["p1"]


def test_the_listing_must_be_taken_after_the_point():
    end = T0 + 5 * RI
    records = {"u1": ReadRecord("c1", end + 100, 0)}
    d = run([Listing(end + LAG - 1, {"u1": Listed("p1", "c1")})], records, now=end + 100)
    assert d.seal_to == end - RI and d.held_by[0].name == "pod listing"
    # A listing that has failed for longer than the max wait (the API cannot list) holds
    # back no longer, nor do the pods it listed.
    failing = Listing(end + LAG - 1, {"u1": Listed("p1", "c1")}, fail_since=end + LAG - 1)
    d = run([failing], records, now=end + LAG + MAX_WAIT + 1)
    assert d.seal_to == end and [h.name for h in d.forced] == ["pod listing"]


def test_high_stamp_minus_w_past_the_end_is_enough():
    end = T0 + 5 * RI
    listing = Listing(end + 100, {"u1": Listed("p1", "c1")})
    d = run([listing], {"u1": ReadRecord("c1", None, int((end + W) * 1e9))}, now=end + 101)
    assert d.seal_to == end
    d = run([listing], {"u1": ReadRecord("c1", None, int((end + W) * 1e9) - 1_000_000)}, now=end + 101)
    assert d.seal_to == end - RI


def test_undrained_previous_container_holds_back_and_unstarted_pods_hold_nothing():
    end = T0 + 5 * RI
    listing = Listing(end + 100, {"u1": Listed("p1", "c2"), "new": Listed("p-new", "")})
    # The record is of the previous container c1 (drained or not): not past anything.
    d = run([listing], {"u1": ReadRecord("c1", end + 100, 0)}, now=end + 101)
    assert d.seal_to == 0 and d.held_by[0].name == "p1"
    d = run([listing], {"u1": ReadRecord("c2", end + LAG, 0)}, now=end + 101)
    assert d.seal_to == end


def test_an_unreadable_pod_holds_back_only_up_to_the_max_wait():
    end = T0 + 5 * RI
    now = end + 100
    listing = Listing(now - 1, {"u1": Listed("p1", "c1"), "u2": Listed("p2", "c2")})
    ok = ReadRecord("c2", now - 1, 0)
    failing = ReadRecord("c1", end - 30, 0, fail_since=now - MAX_WAIT + 1)
    d = run([listing], {"u1": failing, "u2": ok}, now=now)
    assert d.seal_to == end - RI and d.forced == [] and d.held_by[0].name == "p1"
    failing = ReadRecord("c1", end - 30, 0, fail_since=now - MAX_WAIT - 1)
    d = run([listing], {"u1": failing, "u2": ok}, now=now)
    assert d.seal_to == end + RI and [h.name for h in d.forced] == ["p1"]


def test_the_mark_never_goes_back():
    d = run([Listing(T0, {})], {}, sealed_to=T0 + 5 * RI)
    assert d.seal_to == T0 + 5 * RI


# The property ----------------------------------------------------------------------------

markers = st.sampled_from(["c1", "c2", ""])
times = st.floats(min_value=T0, max_value=T0 + 20 * RI, allow_nan=False)


def near_boundaries(now: float):
    """Times between T0 and ``now``, most of them within a few seconds of an interval
    boundary plus margin and W, where the rule's edges are."""
    near = st.builds(lambda k, d: T0 + k * RI + d / 10, st.integers(0, 21), st.integers(-10, int(LAG * 10) + 15))
    anywhere = st.floats(min_value=T0, max_value=now, allow_nan=False)
    return st.one_of(near, anywhere).map(lambda t: min(max(t, T0), now))


@st.composite
def scenarios(draw):
    now = draw(st.floats(min_value=T0 + 10 * RI, max_value=T0 + 21 * RI, allow_nan=False))
    n = draw(st.integers(0, 5))
    listed = {}
    records = {}
    for i in range(n):
        uid = f"u{i}"
        listed[uid] = Listed(f"p{i}", draw(st.one_of(st.none(), markers)))
        if draw(st.booleans()):
            fail = draw(st.one_of(st.none(), st.floats(min_value=now - 3 * MAX_WAIT, max_value=now)))
            end_at = draw(st.one_of(st.none(), near_boundaries(now)))
            high = draw(st.one_of(st.just(0), near_boundaries(now).map(lambda t: int(t * 1e9))))
            records[uid] = ReadRecord(draw(markers), end_at, high, fail)
    listing_at = draw(near_boundaries(now))
    sealed_to = draw(st.sampled_from([0, T0, T0 + 3 * RI]))
    return now, Listing(listing_at, listed), records, sealed_to


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_no_interval_is_sealed_before_every_readable_listed_pod_was_read_past_it(case):
    now, listing, records, sealed_to = case
    d = run([listing], records, sealed_to=sealed_to, now=now)
    assert d.seal_to >= sealed_to and d.seal_to % RI == 0
    assert d.seal_to <= now - LAG or d.seal_to == sealed_to
    forced = {h.source for h in d.forced}
    # Every interval newly sealed: [s, s + RI) with sealed_to <= s < seal_to (those before
    # T0 - RI, with nothing in them, stand or fall with the first ones).
    for start in range(max(sealed_to, T0 - RI), d.seal_to, RI):
        end = start + RI
        assert listing.at >= end + LAG or now - listing.at > MAX_WAIT
        for uid, listed in listing.sources.items():
            rec = records.get(uid)
            if rec is not None and rec.fail_since is not None and now - rec.fail_since > MAX_WAIT:
                if past(rec, listed, MARGIN, W) < end:
                    assert uid in forced  # sealed without it: said so
                continue  # unreadable for longer than the max wait
            if rec is None:
                assert listed.marker == ""  # a pod not started, never read: nothing to wait for
                continue
            same_log = listed.marker is None or rec.marker == listed.marker
            read_to_end_after = rec.end_at is not None and rec.end_at >= end + LAG
            high_past = rec.high_ns > 0 and rec.high_ns / 1e9 - W >= end
            assert same_log and (read_to_end_after or high_past), (start, uid, listed, rec)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_the_next_interval_is_held_by_someone_named(case):
    """Liveness: when the interval after the mark is not sealed, something is named as
    holding it back (a pod or the listing), or nothing was listed at all."""
    now, listing, records, sealed_to = case
    d = run([listing], records, sealed_to=sealed_to, now=now)
    nxt_end = d.seal_to + 2 * RI
    if nxt_end <= now - LAG and not math.isinf(d.watermark):
        assert d.held_by or d.watermark < nxt_end


def test_a_plan_that_cannot_list_holds_back_only_up_to_the_max_wait():
    """The API cannot list for an hour: plan records the failure; the listing and the
    pods it listed (read by nobody meanwhile) stop holding after the max wait."""
    last = T0
    listing = Listing(last, {"u1": Listed("p1", "c1")}, fail_since=last + 10)
    records = {"u1": ReadRecord("c1", last, 0)}
    now = last + 3600
    d = run([listing], records, sealed_to=(last - LAG) // RI * RI, now=now)
    assert d.seal_to >= (now - LAG - MAX_WAIT) // RI * RI - RI
    assert {h.name for h in d.forced} == {"pod listing", "p1"}
    # Not renewed but not failing (every worker down): it holds, the backlog goes first.
    d = run([Listing(last, {"u1": Listed("p1", "c1")})], records, sealed_to=(last - LAG) // RI * RI, now=now)
    assert d.seal_to == (last - LAG) // RI * RI


def test_a_listing_others_were_renewed_max_wait_after_stops_holding():
    """A retired file host (or a renamed FILE_QUEUE, or the pod listing of a ledger
    switched to the file source): plans run, but not its. It holds sealing back for
    SEAL_MAX_WAIT after the last time it was renewed, then is stale: forced past, named."""
    gone = T0 - 86400
    now = T0
    host_a = Listing(gone, {"file:a": Listed("/a", None)}, "file listing fetch.a", key="fetch.a")
    host_b = Listing(now - 1, {"file:b": Listed("/b", None)}, "file listing fetch.b", key="fetch.b")
    records = {"file:a": ReadRecord("", gone, 0), "file:b": ReadRecord("", now - 1, 0)}
    d = run([host_a, host_b], records, sealed_to=(gone - LAG) // RI * RI, now=now)
    assert d.seal_to == (now - 1 - LAG) // RI * RI
    assert d.stale == [host_a] and {h.name for h in d.forced} == {"file listing fetch.a", "/a"}
    # Just within SEAL_MAX_WAIT of the newer one: it still holds.
    last = now - MAX_WAIT
    host_a = Listing(last, {"file:a": Listed("/a", None)}, "file listing fetch.a", key="fetch.a")
    records["file:a"] = ReadRecord("", last, 0)
    d = run([host_a, host_b], records, sealed_to=(gone - LAG) // RI * RI, now=now)
    assert d.stale == [] and d.seal_to == (last - LAG) // RI * RI
    # The pod listing of a ledger now read from files: the same.
    pods = Listing(gone, {"u1": Listed("p1", "c1")}, key="pods")
    d = run([pods, host_b], {"u1": ReadRecord("c1", gone, 0), **records}, sealed_to=(gone - LAG) // RI * RI, now=now)
    assert d.stale == [pods] and d.seal_to == (now - 1 - LAG) // RI * RI


def test_every_listing_old_because_every_worker_is_down_still_holds():
    """No plan ran for a day: no listing is newer than another by more than the max wait,
    so none is stale; the backlog is read first and lands where it happened."""
    last = T0 - 86400
    host_a = Listing(last, {"file:a": Listed("/a", None)}, "file listing fetch.a", key="fetch.a")
    pods = Listing(last + 5, {"u1": Listed("p1", "c1")}, key="pods")
    records = {"file:a": ReadRecord("", last, 0), "u1": ReadRecord("c1", last + 5, 0)}
    d = run([host_a, pods], records, sealed_to=(last - LAG) // RI * RI - RI, now=T0)
    assert d.stale == [] and d.forced == [] and d.seal_to == (last - LAG) // RI * RI
