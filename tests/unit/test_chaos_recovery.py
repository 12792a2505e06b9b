"""The chaos run's recovery bound (``sim.chaos.Run._recovery``): each wait after a fault,
through the report's own random failures, to its delivery."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.model import ReportKey
from app.reporting import idempotency_key
from sim.chaos import RECOVERY_SLACK, SCRAPER_ID, Fault, Run
from sim.platform_stub import Attempt

RI = 10
KEY = ReportKey(1000, "tun-0")
IDEM = idempotency_key(SCRAPER_ID, KEY.start, RI, KEY.name)
OUTAGE = Fault("platform_outage", 0, start=1005.0, end=1030.0)  # the interval ends at 1010
BOUND = RECOVERY_SLACK + RI


def attempt(at: float, outcome: str, status: int | None = None, lost: bool = False) -> Attempt:
    return Attempt("POST", "/", IDEM, at, status=status, outcome=outcome, ended_at=at + 0.1, lost=lost)


def recovery(delivered_at: float, attempts: list[Attempt]) -> tuple[dict, list[str]]:
    run = SimpleNamespace(faults=[OUTAGE], workers=[], beat=None, ri=RI, problems=[],
                          platform=SimpleNamespace(attempts=attempts))
    run.problem = run.problems.append
    out = Run._recovery(run, {KEY: {"delivered_at": f"{delivered_at:.3f}"}})
    return out, run.problems


def test_delivered_soon_after_the_fault():
    out, problems = recovery(1040.0, [attempt(1040.0, "logged", 201)])
    assert out["max"] == pytest.approx(10.0) and problems == []


def test_random_failures_after_the_fault_restart_the_clock():
    """Three failures the platform drew, 30 s apart, then delivery 20 s later: 110 s after
    the outage, but no wait was longer than 30 s."""
    fails = [attempt(t, "fault", 503) for t in (1060.0, 1090.0, 1120.0)]
    out, problems = recovery(1140.0, [*fails, attempt(1140.0, "logged", 201)])
    assert out["max"] == pytest.approx(30.0, abs=0.2) and problems == []


def test_an_answer_the_client_never_got_restarts_the_clock():
    """A drop after commit 60 s after the outage, then the replay 60 s later: 120 s after
    the outage, no wait longer than 60 s."""
    out, problems = recovery(1150.0, [attempt(1090.0, "logged", None, lost=True), attempt(1150.0, "replayed", 201)])
    assert out["max"] == pytest.approx(60.0, abs=0.2) and problems == []


def test_a_long_wait_before_a_random_failure_still_counts():
    """A defect that held the report 600 s, then one random 503: measuring only from the
    last failure would have hidden it (a review)."""
    out, problems = recovery(1631.5, [attempt(1630.0, "fault", 503), attempt(1631.0, "logged", 201)])
    assert out["max"] == pytest.approx(600.0, abs=0.2)
    assert len(problems) == 1 and "platform_outage" in problems[0]


def test_a_409_this_side_could_cause_restarts_nothing():
    out, problems = recovery(1110.0, [attempt(1080.0, "in_flight", 409), attempt(1110.0, "logged", 201)])
    assert out["max"] == pytest.approx(80.0) and out["max"] > BOUND
    assert len(problems) == 1
