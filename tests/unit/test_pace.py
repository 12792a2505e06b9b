"""app/pace.py: when a pod is read again after a read of it (read_delay), and when an
interval's own sealing round runs (seal_point)."""

from __future__ import annotations

import pytest

from app.pace import PACE_LINES, SEAL_AFTER, read_delay, seal_point
from app.settings import Settings


@pytest.fixture
def s() -> Settings:
    return Settings(fetch_interval=10, fetch_min_interval=1.0)


def test_a_cut_read_that_made_progress_is_followed_at_once(s):
    assert read_delay(5000, True, 0.2, s) == 0.0
    assert read_delay(5000, True, None, s) == 0.0


def test_no_progress_never_reads_again_early(s):
    # A cut read that consumed nothing (one second holds more than FETCH_MAX_BYTES) would spin.
    assert read_delay(0, True, 1.0, s) is None
    assert read_delay(0, False, 1.0, s) is None


def test_a_busy_pod_is_read_after_about_pace_lines_but_not_sooner_than_the_minimum(s):
    assert read_delay(2000, False, 1.0, s) == 1.0  # 2,000 lines/s: capped at FETCH_MIN_INTERVAL
    assert read_delay(500, False, 1.0, s) == pytest.approx(PACE_LINES / 500)  # 2 s
    assert read_delay(2000, False, 1.0, Settings(fetch_interval=10, fetch_min_interval=0.25)) == pytest.approx(0.5)


def test_a_quiet_pod_is_left_to_the_rounds(s):
    assert read_delay(50, False, 1.0, s) is None  # 50 lines/s: 20 s > FETCH_INTERVAL
    assert read_delay(900, False, 10.0, s) is None


def test_a_first_read_with_new_lines_looks_again_soon_to_measure_the_growth(s):
    # No earlier read to measure from: once, after FETCH_MIN_INTERVAL.
    assert read_delay(PACE_LINES, False, None, s) == 1.0
    assert read_delay(1, False, None, s) == 1.0
    assert read_delay(0, False, None, s) is None


def test_fetch_min_interval_is_bounded_by_fetch_interval():
    with pytest.raises(ValueError):
        Settings(fetch_interval=5, fetch_min_interval=6)
    with pytest.raises(ValueError):
        Settings(fetch_min_interval=0.01)


def test_the_sealing_point_is_the_end_plus_margin_window_and_a_second():
    s = Settings(report_interval=60, fetch_interval=10, seal_clock_margin=2, log_reorder_window=1)
    lead = 2 + 1 + SEAL_AFTER
    assert seal_point(1_800_000_030.0, s) == (1_800_000_060, 1_800_000_060 + lead)
    # Just after an end, until its point has passed, the point ahead is still that end's:
    # a round there must not skip to the next interval.
    assert seal_point(1_800_000_061.5, s) == (1_800_000_060, 1_800_000_060 + lead)
    assert seal_point(1_800_000_060 + lead, s) == (1_800_000_120, 1_800_000_120 + lead)


def test_every_sealing_point_is_ahead_of_now_and_the_nearest_one():
    s = Settings(report_interval=10, fetch_interval=5, seal_clock_margin=0.5, log_reorder_window=0.25)
    for tenth in range(0, 400):
        now = 1_800_000_000 + tenth / 10
        end, at = seal_point(now, s)
        assert end % 10 == 0 and at > now
        assert at - 10 <= now  # the previous end's point has passed: none is skipped
