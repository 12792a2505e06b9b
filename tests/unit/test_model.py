"""ReportKey and Cursor own their string forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger import SUBDOMAIN
from app.model import ReportKey, ReportState


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
