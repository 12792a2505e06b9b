"""ReportKey and Cursor own their string forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger import SUBDOMAIN
from app.model import Cursor, ReportKey, ReportState, fingerprint, parse_time_ns, whole_number


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
    assert {s for s in ReportState if s.final} == {ReportState.DELIVERED, ReportState.SKIPPED, ReportState.DEAD,
                                                 ReportState.WRITTEN_OFF}


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


@given(
    start=st.integers(0, 4_000_000_000).map(lambda s: s - s % 60),
    sub=st.from_regex(SUBDOMAIN, fullmatch=True),
    amendment=st.integers(0, 50),
    scraper=st.from_regex(r"[a-z0-9][a-z0-9:._/-]{0,30}", fullmatch=True),
)
def test_a_report_key_is_found_again_from_its_idempotency_key(start, sub, amendment, scraper):
    """``replay`` takes the Idempotency-Key as the platform's logs show it."""
    from app.reporting import idempotency_key, report_key_of

    key = ReportKey(start, sub, amendment)
    assert report_key_of(idempotency_key(scraper, start, 60, key.name), scraper, 60) == key


@pytest.mark.parametrize("raw, why", [
    ("scraper-1:2026-12-01T01:00:00Z/60:alice", ""),
    ("other:2026-12-01T01:00:00Z/60:alice", "SCRAPER_ID='other'"),
    ("scraper-1:2026-12-01T01:00:00Z/300:alice", "REPORT_INTERVAL=60"),
    ("2026-12-01T01:00:00Z/60:alice", "REPORT_INTERVAL=60"),
    ("scraper-1:2026-12-01T01:00:00/60:alice", "REPORT_INTERVAL=60"),
    ("scraper-1:2026-13-01T01:00:00Z/60:alice", "REPORT_INTERVAL=60"),
    ("scraper-1:2026-12-01T01:00:00Z/60:", "not a report name"),
    ("scraper-1:2026-12-01T01:00:00Z/60:alice:b2", "not a report name"),
])
def test_an_idempotency_key_names_a_report_of_this_scraper_and_interval_only(raw, why):
    from app.reporting import report_key_of

    if not why:
        assert report_key_of(raw, "scraper-1", 60) == ReportKey(1_796_086_800, "alice")
        return
    with pytest.raises(ValueError, match=why.replace("(", r"\(")):
        report_key_of(raw, "scraper-1", 60)


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("7", 7), ("0042", 42), (str(2**70), 2**70),
    ("", None), ("-1", None), ("+1", None), (" 1", None), ("1 ", None), ("1_000", None), ("1.0", None),
    ("\u0663", None), ("\uff11", None), ("0x10", None),  # int() takes the first two
    ("9" * 5000, None),  # past int()'s 4,300-digit limit: int() raises ValueError
])
def test_whole_number_is_ascii_digits_only(text, value):
    assert whole_number(text) == value


def test_a_report_key_with_other_digits_is_refused():
    with pytest.raises(ValueError, match="not a report key"):
        ReportKey.parse("\u0661\u0662:web")
    with pytest.raises(ValueError, match="not a report key"):
        ReportKey.parse("60:web:a\u0661")
    with pytest.raises(ValueError, match="not a report key"):  # int() raised its own message (a review)
        ReportKey.parse("9" * 5000 + ":web")


@pytest.mark.parametrize(("text", "ns"), [
    ("2026-01-01T00:00:00.123456789Z", 1_767_225_600_123_456_789),
    ("2026-01-01T00:00:00,5+01:00", 1_767_222_000_500_000_000),
    ("20260101T000000.25Z", 1_767_225_600_250_000_000),  # the basic format
    ("2026-01-01 00:00:00.1Z", 1_767_225_600_100_000_000),
])
def test_parse_time_ns_reads_the_fraction_of_the_seconds(text, ns):
    assert parse_time_ns(text) == ns


@pytest.mark.parametrize("text", [
    # Read as 00:00:01.0, 00:00:01.8, 00:30:00.5 and 00:00:00.5 (a review): the first fraction
    # was taken, fromisoformat added the rest, and a fraction of a minute or an hour was
    # read as one of a second.
    "2026-01-01T00:00:00.5.5Z", "2026-01-01T00:00:00.9.9Z", "2026-01-01T00:30.5Z", "2026-01-01T00.5Z",
    "2026-01-01T00:00:00.123456789.999999Z",
])
def test_parse_time_ns_refuses_a_fraction_that_is_not_the_seconds(text):
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_time_ns(text)


def test_parse_time_ns_without_a_zone_says_so_with_a_fraction_too():
    with pytest.raises(ValueError, match="no zone"):
        parse_time_ns("2026-01-01T00:00:00.5")
