"""Numbers in settings are finite: ``inf`` or ``nan`` is a configuration error naming the
variable (it used to crash in a derived value, or fail without a name)."""

from __future__ import annotations

import pytest

from app.settings import ConfigError, load_settings


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("var", ["PLATFORM_READ_TIMEOUT", "PLATFORM_CONNECT_TIMEOUT", "KUBE_REQUEST_TIMEOUT"])
def test_non_finite_numbers_are_refused_by_name(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    lines = str(err.value).splitlines()
    assert lines == [f"config error: {var} is not valid; expected a number of seconds above 0, at most 3600"]


def _refused(monkeypatch, **env: str) -> list[str]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    return [line.split(" ", 3)[2] for line in str(err.value).splitlines()]


def test_visibility_timeout_must_exceed_twice_every_hold(monkeypatch):
    """A countdown, a fetch or a lease longer than half the visibility timeout would make
    Redis redeliver a message that is still held (docs/design.md, "Celery on Redis")."""
    assert _refused(monkeypatch, VISIBILITY_TIMEOUT="100") == ["VISIBILITY_TIMEOUT"]
    monkeypatch.delenv("VISIBILITY_TIMEOUT")
    assert _refused(monkeypatch, REPORT_LEASE="1801") == ["VISIBILITY_TIMEOUT"]  # 2 x 1801 > 3600
    monkeypatch.delenv("REPORT_LEASE")
    assert _refused(monkeypatch, FETCH_TIME_LIMIT="1800") == ["VISIBILITY_TIMEOUT"]  # 2 x 1810 > 3600
    monkeypatch.setenv("VISIBILITY_TIMEOUT", "3621")  # just above 2 x (1800 + 10)
    assert load_settings().visibility_timeout == 3621


def test_interval_retention_is_at_least_the_report_max_age(monkeypatch):
    assert _refused(monkeypatch, REPORT_MAX_AGE="7200", INTERVAL_RETENTION="7199") == ["INTERVAL_RETENTION"]
    monkeypatch.setenv("INTERVAL_RETENTION", "7200")
    assert load_settings().interval_retention == 7200


def test_a_read_that_cannot_hold_a_line_names_both_variables(monkeypatch):
    """LOG_LINE_MAX_BYTES=32 MiB is in its own range but not below the default
    FETCH_MAX_BYTES: the line names both, with the rule and the two ways out (it used to
    say only "FETCH_MAX_BYTES is not valid", a variable the user had not set)."""
    expected = (
        "config error: FETCH_MAX_BYTES is not above LOG_LINE_MAX_BYTES + 64; expected FETCH_MAX_BYTES "
        "(default 32 MiB) above LOG_LINE_MAX_BYTES (default 16 MiB) + 64, so that one read holds the longest "
        "line and its timestamp: raise FETCH_MAX_BYTES or lower LOG_LINE_MAX_BYTES"
    )
    monkeypatch.delenv("FETCH_MAX_BYTES", raising=False)
    monkeypatch.setenv("LOG_LINE_MAX_BYTES", str(32 * 1024 * 1024))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).splitlines() == [expected]
    monkeypatch.delenv("LOG_LINE_MAX_BYTES")
    monkeypatch.setenv("FETCH_MAX_BYTES", str(16 * 1024 * 1024 + 64))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).splitlines() == [expected]
    # Out of its own range, FETCH_MAX_BYTES gets its own line only.
    monkeypatch.setenv("FETCH_MAX_BYTES", "1024")
    assert _refused(monkeypatch) == ["FETCH_MAX_BYTES"]
