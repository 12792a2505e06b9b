"""ReportKey and Cursor own their string forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger import SUBDOMAIN
from app.model import Cursor, ReportKey, ReportState, fingerprint


@given(start=st.integers(min_value=0, max_value=2**40), sub=st.from_regex(SUBDOMAIN, fullmatch=True))
def test_report_key_round_trips_through_its_string(start, sub):
    key = ReportKey(start, sub)
    assert str(key) == f"{start}:{sub}"
    assert ReportKey.parse(str(key)) == key
    assert ReportKey.parse(str(key).encode()) == key


@pytest.mark.parametrize("raw", ["", "123", "123:", ":sub", "x1:sub", "-5:sub", "1.5:sub"])
def test_report_key_refuses_what_is_not_one(raw):
    with pytest.raises(ValueError):
        ReportKey.parse(raw)


def test_report_keys_sort_by_interval_then_subdomain():
    keys = [ReportKey(120, "b"), ReportKey(60, "z"), ReportKey(120, "a")]
    assert sorted(keys) == [ReportKey(60, "z"), ReportKey(120, "a"), ReportKey(120, "b")]


def test_interval_pattern_matches_only_that_intervals_keys():
    import fnmatch

    pattern = ReportKey.interval_pattern(120)
    assert fnmatch.fnmatchcase(str(ReportKey(120, "a")), pattern)
    assert not fnmatch.fnmatchcase(str(ReportKey(1200, "a")), pattern)
    assert not fnmatch.fnmatchcase(str(ReportKey(12, "a")), pattern)


def test_final_report_states():
    assert {s for s in ReportState if s.final} == {ReportState.DELIVERED, ReportState.SKIPPED, ReportState.DEAD}


# Cursor ------------------------------------------------------------------------------


def test_old_and_fresh_cursors_keep_their_string_form():
    assert Cursor("containerd://abc", 0, 0).encode() == "containerd://abc|0|0"
    assert Cursor.decode("containerd://abc|1795000000123456789|3") == Cursor("containerd://abc", 1795000000123456789, 3)
    assert Cursor.decode("containerd://abc|5|2").encode() == "containerd://abc|5|2"
    assert Cursor.decode("") is None


@given(
    cid=st.sampled_from(["containerd://" + "ab" * 32, "cri-o://x", "docker://y"]),
    high=st.integers(min_value=0, max_value=2**63 - 1),
    width=st.integers(min_value=0, max_value=10**10),
    entries=st.lists(st.tuples(st.integers(0, 10**10), st.binary(max_size=30), st.integers(1, 3)), max_size=30),
)
def test_cursor_round_trips_through_its_string(cid, high, width, entries):
    floor = max(0, high - width)
    counts = {}
    for offset, text, count in entries:
        ts = min(high, floor + offset)
        counts[(ts, fingerprint(ts, text))] = count
    cursor = Cursor.build(cid, high, floor, counts)
    raw = cursor.encode()
    assert Cursor.decode(raw) == cursor
    if cursor.seen:
        assert raw.startswith("v2|") and "\n" not in raw


@pytest.mark.parametrize("raw", ["x", "cid|1", "cid|a|1", "v2|cid", "v2|cid|!!!", "v2|cid|AAAA", "v2|cid|gA=="])
def test_cursor_refuses_garbage(raw):
    with pytest.raises(ValueError):
        Cursor.decode(raw)


def test_cursor_n_counts_the_lines_at_its_highest_stamp():
    counts = {(10, b"a" * 8): 2, (10, b"b" * 8): 1, (9, b"c" * 8): 4}
    cursor = Cursor.build("cid", 10, 5, counts)
    assert (cursor.t_ns, cursor.n, cursor.floor_ns) == (10, 3, 5)
    assert Cursor("cid", 7, 4).n == 4
