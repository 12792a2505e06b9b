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
    assert lines == [f"config error: {var} is not valid; expected a number of seconds above 0"]
