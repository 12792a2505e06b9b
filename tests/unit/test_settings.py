"""Settings: the original service's defaults, and bad configuration stopping every entry
point with exit status 2, one line naming the variable, and no secret in the output."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.parser import MAX_LINE_BYTES
from app.platform import PATH, PlatformClient
from app.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-secret"
REDIS_PASSWORD = "p4ssw0rd"
SETTING_VARS = [name.upper() for name in Settings.model_fields] + ["POD_NAMESPACE"]
SETTINGS_EXIT = "from app.settings import settings_or_exit; settings_or_exit()"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any scraper setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_VARS}
    env.update(extra)
    return env


@pytest.fixture
def no_setting_env(monkeypatch):
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# Defaults ---------------------------------------------------------------------------


def test_defaults_are_the_original_services(no_setting_env):
    s = Settings()
    assert s.platform_api_url == "http://platform.platform.svc.cluster.local:3000"
    assert s.report_interval == 60
    assert s.log_level == "INFO"
    assert s.traefik_namespace == "traefik"
    assert s.traefik_label_selector == "app.kubernetes.io/name=traefik"
    assert s.tunnel_domain == "t.lum.tools"
    assert s.fetch_interval is None and s.fetch_every == 10
    assert s.fetch_max_bytes == 32 * 1024 * 1024
    assert s.log_line_max_bytes == 16 * 1024 * 1024 == MAX_LINE_BYTES
    assert s.report_max_age == 24 * 3600
    assert s.platform_internal_secret is None
    assert s.scraper_id == "default"


@pytest.mark.parametrize(("report_interval", "fetch_every"), [("5", 5), ("10", 10), ("60", 10), ("3600", 10)])
def test_fetch_interval_defaults_to_min_of_10_and_report_interval(no_setting_env, report_interval, fetch_every):
    no_setting_env.setenv("REPORT_INTERVAL", report_interval)
    assert Settings().fetch_every == fetch_every


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_fetch_interval_is_the_default(no_setting_env, empty):
    # docker-compose.yml passes FETCH_INTERVAL on as set where compose runs; an empty
    # .env line gives "". It passed a fixed 10, which refused REPORT_INTERVAL=5 (a new
    # user's trial).
    no_setting_env.setenv("REPORT_INTERVAL", "5")
    no_setting_env.setenv("FETCH_INTERVAL", empty)
    assert Settings().fetch_every == 5


def test_log_reorder_window_defaults_to_a_second_and_takes_fractions(no_setting_env):
    assert Settings().log_reorder_window == 1.0
    no_setting_env.setenv("LOG_REORDER_WINDOW", "0.25")
    assert Settings().log_reorder_window == 0.25


def test_explicit_fetch_interval_is_used(no_setting_env):
    no_setting_env.setenv("REPORT_INTERVAL", "60")
    no_setting_env.setenv("FETCH_INTERVAL", "60")
    assert Settings().fetch_every == 60


def test_scraper_id_defaults_to_pod_namespace(no_setting_env):
    no_setting_env.setenv("POD_NAMESPACE", "tunnels-prod")
    assert Settings().scraper_id == "tunnels-prod"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://platform.example:3000/", "http://platform.example:3000"),
        ("http://platform.example:3000//", "http://platform.example:3000"),
        ("https://platform.example/base/", "https://platform.example/base"),
        ("http://platform.example", "http://platform.example"),
    ],
)
def test_trailing_slash_on_platform_url_is_dropped(no_setting_env, given, kept):
    no_setting_env.setenv("PLATFORM_API_URL", given)
    s = Settings()
    assert s.platform_api_url == kept
    client = PlatformClient(s.platform_api_url, "x", 1, 1)
    try:
        assert client.url == kept + PATH
        assert "//api" not in client.url
    finally:
        client.close()


@pytest.mark.parametrize("value", ["debug", "Debug", " warning ", "ERROR", "info"])
def test_log_level_is_case_insensitive(no_setting_env, value):
    no_setting_env.setenv("LOG_LEVEL", value)
    assert Settings().log_level == value.strip().upper()


def test_start_at_with_zone_is_utc(no_setting_env):
    no_setting_env.setenv("START_AT", "2026-11-24T02:00:00+02:00")
    assert Settings().start_at_ns == 1_795_478_400 * 10**9  # 2026-11-24T00:00:00Z


def test_start_at_given_in_code_as_an_aware_time(no_setting_env):
    from datetime import UTC, datetime, timedelta, timezone

    assert Settings(start_at=datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)).start_at_ns == 1_767_225_600_123_456_000
    tz = timezone(timedelta(hours=2))
    assert Settings(start_at=datetime(2026, 1, 1, 2, tzinfo=tz)).start_at_ns == 1_767_225_600 * 10**9
    with pytest.raises(ValidationError):
        Settings(start_at=datetime(2026, 1, 1))  # no zone


@pytest.mark.parametrize("given", ["1700000000", "1700000000000", "2026-11-24T00:00:00", "yesterday"])
def test_start_at_is_an_iso_time_with_a_zone_only(no_setting_env, given):
    # A number was taken as seconds, or as milliseconds past 2e10 (pydantic's guess);
    # --start-at refused it (a review of the new-user fixes).
    no_setting_env.setenv("START_AT", given)
    with pytest.raises(ConfigError, match="START_AT is not valid"):
        load_settings()


def test_repr_and_dump_hide_the_secret(no_setting_env):
    no_setting_env.setenv("PLATFORM_INTERNAL_SECRET", SECRET)
    s = Settings()
    assert s.require_secret() == SECRET
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump())):
        assert SECRET not in text


def test_empty_secret_counts_as_missing(no_setting_env):
    no_setting_env.setenv("PLATFORM_INTERNAL_SECRET", "")
    s = Settings()
    assert s.platform_internal_secret is None
    with pytest.raises(ConfigError, match="PLATFORM_INTERNAL_SECRET"):
        s.require_secret()


def test_load_settings_error_names_variable_without_value(no_setting_env):
    no_setting_env.setenv("REDIS_URL", f"redis://:{REDIS_PASSWORD}@host:notaport")
    no_setting_env.setenv("PLATFORM_INTERNAL_SECRET", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "REDIS_URL" in message
    assert REDIS_PASSWORD not in message and SECRET not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


# Bad configuration, in real processes ----------------------------------------------

# (case id, environment, the variable the error line must name)
BAD = [
    ("report-interval-not-number", {"REPORT_INTERVAL": "sixty"}, "REPORT_INTERVAL"),
    ("report-interval-zero", {"REPORT_INTERVAL": "0"}, "REPORT_INTERVAL"),
    ("report-interval-negative", {"REPORT_INTERVAL": "-60"}, "REPORT_INTERVAL"),
    ("report-interval-not-dividing-a-day", {"REPORT_INTERVAL": "7"}, "REPORT_INTERVAL"),
    ("fetch-interval-not-number", {"FETCH_INTERVAL": "1.5s"}, "FETCH_INTERVAL"),
    ("fetch-interval-zero", {"FETCH_INTERVAL": "0"}, "FETCH_INTERVAL"),
    ("fetch-interval-negative", {"FETCH_INTERVAL": "-10"}, "FETCH_INTERVAL"),
    ("fetch-over-report", {"REPORT_INTERVAL": "30", "FETCH_INTERVAL": "31"}, "FETCH_INTERVAL"),
    ("fetch-max-bytes-not-number", {"FETCH_MAX_BYTES": "32MiB"}, "FETCH_MAX_BYTES"),
    ("fetch-max-bytes-zero", {"FETCH_MAX_BYTES": "0"}, "FETCH_MAX_BYTES"),
    ("log-reorder-window-zero", {"LOG_REORDER_WINDOW": "0"}, "LOG_REORDER_WINDOW"),
    ("log-reorder-window-too-long", {"LOG_REORDER_WINDOW": "61"}, "LOG_REORDER_WINDOW"),
    ("log-reorder-window-unit", {"LOG_REORDER_WINDOW": "1s"}, "LOG_REORDER_WINDOW"),
    # A read must hold the longest line and its timestamp, or it never gets past it.
    ("fetch-max-bytes-not-above-line-max", {"FETCH_MAX_BYTES": "16777216"}, "FETCH_MAX_BYTES"),
    ("fetch-max-bytes-line-max-plus-64", {"FETCH_MAX_BYTES": str(16 * 1024 * 1024 + 64)}, "FETCH_MAX_BYTES"),
    ("fetch-max-bytes-below-raised-line-max", {"LOG_LINE_MAX_BYTES": "33554432"}, "FETCH_MAX_BYTES"),
    ("log-line-max-bytes-not-number", {"LOG_LINE_MAX_BYTES": "16MiB"}, "LOG_LINE_MAX_BYTES"),
    ("log-line-max-bytes-too-small", {"LOG_LINE_MAX_BYTES": "1024"}, "LOG_LINE_MAX_BYTES"),
    ("log-line-max-bytes-too-large", {"LOG_LINE_MAX_BYTES": str(1 << 30), "FETCH_MAX_BYTES": str(1 << 30)},
     "LOG_LINE_MAX_BYTES"),
    ("report-max-age-negative", {"REPORT_MAX_AGE": "-1"}, "REPORT_MAX_AGE"),
    ("platform-url-no-scheme", {"PLATFORM_API_URL": "platform:3000"}, "PLATFORM_API_URL"),
    ("platform-url-ftp", {"PLATFORM_API_URL": "ftp://platform.example"}, "PLATFORM_API_URL"),
    ("platform-url-no-host", {"PLATFORM_API_URL": "http://"}, "PLATFORM_API_URL"),
    ("platform-url-bad-port", {"PLATFORM_API_URL": "http://platform:99999"}, "PLATFORM_API_URL"),
    # Taken at start and refused by urllib3 at every send (a review): now refused at start.
    ("platform-url-port-0", {"PLATFORM_API_URL": "http://platform:0"}, "PLATFORM_API_URL"),
    ("platform-url-space-in-host", {"PLATFORM_API_URL": "http://plat form:3000"}, "PLATFORM_API_URL"),
    ("log-level-unknown", {"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    ("redis-url-http", {"REDIS_URL": f"http://:{REDIS_PASSWORD}@localhost:6379"}, "REDIS_URL"),
    ("redis-url-no-host", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@"}, "REDIS_URL"),
    ("redis-url-bad-port", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:port"}, "REDIS_URL"),
    ("broker-url-amqp", {"CELERY_BROKER_URL": f"amqp://u:{REDIS_PASSWORD}@rabbit"}, "CELERY_BROKER_URL"),
    # What redis-py refuses only when it connects (a worker died with a traceback), or reads
    # as database 0 without a word (redis-py) while kombu refuses it (a broker's database).
    ("redis-url-db-not-a-number", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/abc"}, "REDIS_URL"),
    ("redis-url-db-negative", {"REDIS_URL": "redis://127.0.0.1:6390/-1"}, "REDIS_URL"),
    ("redis-url-db-two-segments", {"REDIS_URL": "redis://127.0.0.1:6390/0/1"}, "REDIS_URL"),
    ("redis-url-unknown-option", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/0?foo=bar"}, "REDIS_URL"),
    ("redis-url-db-option-not-a-number", {"REDIS_URL": "redis://127.0.0.1:6390/0?db=x"}, "REDIS_URL"),
    # Celery's result backend refuses a rediss:// URL without ssl_cert_reqs at worker start
    # (a traceback), and its broker takes it for no certificate check (a review).
    ("redis-url-tls-without-cert-reqs", {"REDIS_URL": f"rediss://:{REDIS_PASSWORD}@r.example:6380/1"}, "REDIS_URL"),
    ("broker-url-tls-without-cert-reqs", {"CELERY_BROKER_URL": "rediss://r.example:6380/0"}, "CELERY_BROKER_URL"),
    ("result-backend-tls-without-cert-reqs", {"CELERY_RESULT_BACKEND": "rediss://r.example:6380/0"},
     "CELERY_RESULT_BACKEND"),
    ("redis-url-celery-cert-reqs-spelling", {"REDIS_URL": "rediss://r.example:6380/0?ssl_cert_reqs=CERT_REQUIRED"},
     "REDIS_URL"),  # redis-py (the ledger) knows required, optional, none only
    # A header cannot carry a line break: every report failed, the secret in the error (a review).
    ("secret-with-a-trailing-newline", {"PLATFORM_INTERNAL_SECRET": "s3cr3t-from-a-file\n"}, "PLATFORM_INTERNAL_SECRET"),
    ("secret-with-a-carriage-return", {"PLATFORM_INTERNAL_SECRET": "s3cr3t\r\nX-Evil: 1"}, "PLATFORM_INTERNAL_SECRET"),
    # http.client sends header values as Latin-1: every report failed, and was sent again for ever (a review).
    ("secret-not-latin-1", {"PLATFORM_INTERNAL_SECRET": "s3cr3t-€"}, "PLATFORM_INTERNAL_SECRET"),
    # An empty or over-long DNS label: the resolver's idna codec refused every send (a review).
    ("platform-url-empty-label", {"PLATFORM_API_URL": "http://platform..platform.svc:3000"}, "PLATFORM_API_URL"),
    ("platform-url-long-label", {"PLATFORM_API_URL": f"http://{'a' * 64}.platform:3000"}, "PLATFORM_API_URL"),
    ("redis-url-timeout-not-a-number", {"REDIS_URL": "redis://127.0.0.1:6390/0?socket_timeout=abc"}, "REDIS_URL"),
    ("redis-url-unix-db-not-a-number", {"REDIS_URL": "unix:///run/redis.sock?db=x"}, "REDIS_URL"),
    ("redis-url-unix-unknown-option", {"REDIS_URL": "unix:///run/redis.sock?foo=bar"}, "REDIS_URL"),
    ("redis-url-object-option", {"REDIS_URL": "redis://127.0.0.1:6390/0?cache_config=x"}, "REDIS_URL"),
    ("redis-url-protocol-4", {"REDIS_URL": "redis://127.0.0.1:6390/0?protocol=4"}, "REDIS_URL"),
    ("redis-url-ssl-option-without-tls", {"REDIS_URL": "redis://127.0.0.1:6390/0?ssl_cert_reqs=none"}, "REDIS_URL"),
    ("broker-url-db-not-a-number", {"CELERY_BROKER_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/abc"},
     "CELERY_BROKER_URL"),
    ("broker-url-db-trailing-slash", {"CELERY_BROKER_URL": "redis://redis:6379/0/"}, "CELERY_BROKER_URL"),
    ("broker-url-unknown-option", {"CELERY_BROKER_URL": "redis://redis:6379/0?foo=bar"}, "CELERY_BROKER_URL"),
    ("result-backend-db-not-a-number", {"CELERY_RESULT_BACKEND": "redis://redis:6379/abc"}, "CELERY_RESULT_BACKEND"),
    ("result-backend-bad-option", {"CELERY_RESULT_BACKEND": "redis://redis:6379/0?socket_timeout=abc"},
     "CELERY_RESULT_BACKEND"),
    # kombu (Celery's broker) takes no ?option on a redis:// URL but ssl_*: any other is
    # "TypeError: Connection._init_params() got an unexpected keyword argument".
    ("broker-url-option-kombu-refuses", {"CELERY_BROKER_URL": "redis://redis:6379/0?socket_timeout=3"},
     "CELERY_BROKER_URL"),
    ("redis-url-as-broker-option-kombu-refuses", {"REDIS_URL": "redis://redis:6379/0?db=1"}, "REDIS_URL"),
    ("start-at-no-zone", {"START_AT": "2026-11-24T00:00:00"}, "START_AT"),
    ("start-at-garbage", {"START_AT": "yesterday"}, "START_AT"),
    # START_AT is kept in 64 bits of nanoseconds since the epoch (app.model.parse_time_ns).
    ("start-at-after-2262", {"START_AT": "9999-12-31T00:00:00Z"}, "START_AT"),
    ("start-at-just-after-2262", {"START_AT": "2262-04-11T23:47:16.854776Z"}, "START_AT"),
    ("start-at-before-1970", {"START_AT": "1969-12-31T23:59:59Z"}, "START_AT"),
    # (these two overflowed datetime in the conversion to UTC: an OverflowError traceback)
    ("start-at-year-1-east", {"START_AT": "0001-01-01T00:00:00+01:00"}, "START_AT"),
    ("start-at-year-9999-west", {"START_AT": "9999-12-31T23:59:59-01:00"}, "START_AT"),
    ("scraper-id-space", {"SCRAPER_ID": "two words"}, "SCRAPER_ID"),
    ("scraper-id-too-long", {"SCRAPER_ID": "a" * 64}, "SCRAPER_ID"),
    ("scraper-id-colon", {"SCRAPER_ID": "a:b"}, "SCRAPER_ID"),
    ("tunnel-domain", {"TUNNEL_DOMAIN": "not a domain"}, "TUNNEL_DOMAIN"),
    # The API server refused these with 400 at every round (app.labels.label_selector_problem).
    ("label-selector-two-keys", {"TRAEFIK_LABEL_SELECTOR": "app traefik"}, "TRAEFIK_LABEL_SELECTOR"),
    ("label-selector-bad-key", {"TRAEFIK_LABEL_SELECTOR": "app.kubernetes.io/name/x=traefik"}, "TRAEFIK_LABEL_SELECTOR"),
    ("label-selector-bad-value", {"TRAEFIK_LABEL_SELECTOR": "app=traefik:v3"}, "TRAEFIK_LABEL_SELECTOR"),
    ("label-selector-unclosed-set", {"TRAEFIK_LABEL_SELECTOR": "app in (traefik"}, "TRAEFIK_LABEL_SELECTOR"),
    ("label-selector-trailing-comma", {"TRAEFIK_LABEL_SELECTOR": "app=traefik,"}, "TRAEFIK_LABEL_SELECTOR"),
    # Accepted, then every report (or read) failed with OverflowError: a socket timeout
    # past time_t (a new-user trial). At most an hour, as `check --timeout`.
    ("platform-read-timeout-1e10", {"PLATFORM_READ_TIMEOUT": "1e10"}, "PLATFORM_READ_TIMEOUT"),
    ("platform-connect-timeout-hours", {"PLATFORM_CONNECT_TIMEOUT": "3601"}, "PLATFORM_CONNECT_TIMEOUT"),
    ("kube-request-timeout-huge", {"KUBE_REQUEST_TIMEOUT": "99999999999999999999999"}, "KUBE_REQUEST_TIMEOUT"),
    # A report attempt's limit (connect + read + 15 s) beyond half the visibility timeout:
    # the broker would deliver the task again while it runs.
    ("visibility-below-a-report-attempt", {"PLATFORM_READ_TIMEOUT": "3000"}, "VISIBILITY_TIMEOUT"),
    # One bad value, one line: not a second about a variable checked against it.
    ("fetch-time-limit-huge", {"FETCH_TIME_LIMIT": "100000"}, "FETCH_TIME_LIMIT"),
    ("report-hold-lease-huge", {"REPORT_HOLD_LEASE": "100000"}, "REPORT_HOLD_LEASE"),
    ("report-probe-interval-zero", {"REPORT_PROBE_INTERVAL": "0"}, "REPORT_PROBE_INTERVAL"),
    ("report-probe-interval-huge", {"REPORT_PROBE_INTERVAL": "3601"}, "REPORT_PROBE_INTERVAL"),
    ("interval-retention-zero", {"INTERVAL_RETENTION": "0"}, "INTERVAL_RETENTION"),
    ("report-interval-bad-fetch-interval-above-it", {"REPORT_INTERVAL": "7", "FETCH_INTERVAL": "10"}, "REPORT_INTERVAL"),
]

# Every run also carries the secret, which must never be printed.
COMMANDS = {
    "settings": [sys.executable, "-c", SETTINGS_EXIT],
    "celery": [sys.executable, "-m", "celery", "-A", "app", "inspect", "ping", "--timeout", "1"],
    "cli": [sys.executable, "-m", "app", "status"],
}
# In a real process: one bad value per variable (each run costs a Python start).
PER_VARIABLE = [
    "report-interval-not-number",
    "fetch-interval-zero",
    "fetch-over-report",
    "fetch-max-bytes-not-number",
    "fetch-max-bytes-not-above-line-max",
    "report-max-age-negative",
    "platform-url-ftp",
    "log-level-unknown",
    "redis-url-bad-port",
    "broker-url-amqp",
    "start-at-no-zone",
    "scraper-id-space",
    "tunnel-domain",
    "label-selector-bad-value",
]
RUNS = [("settings", case, env, var) for case, env, var in BAD if case in PER_VARIABLE] + [
    ("celery", "report-interval-not-number", {"REPORT_INTERVAL": "sixty"}, "REPORT_INTERVAL"),
    ("celery", "redis-url-no-host", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@"}, "REDIS_URL"),
    ("cli", "redis-url-bad-port", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:port"}, "REDIS_URL"),
    ("cli", "fetch-over-report", {"REPORT_INTERVAL": "30", "FETCH_INTERVAL": "31"}, "FETCH_INTERVAL"),
    # `status` used to read database 0 of this Redis without a word.
    ("cli", "redis-url-db-not-a-number", {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/abc"},
     "REDIS_URL"),
]


@pytest.mark.parametrize(("case", "env", "var"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_safe_line_naming_the_variable(no_setting_env, case, env, var):
    no_setting_env.setenv("PLATFORM_INTERNAL_SECRET", SECRET)
    for name, value in env.items():
        no_setting_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"config error: {var} ")
    assert SECRET not in lines[0] and REDIS_PASSWORD not in lines[0]
    problem = lines[0].split("; expected ")[0]
    for value in env.values():
        if len(value) > 3:
            assert value not in problem, "the bad value itself is echoed"


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        COMMANDS[command],
        env=clean_env(PLATFORM_INTERNAL_SECRET=SECRET, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def bad_runs():
    """All bad-config runs at once (they are independent processes)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {(cmd, case): pool.submit(_run, cmd, env) for cmd, case, env, _ in RUNS}
        return {key: f.result() for key, f in futures.items()}


@pytest.mark.parametrize(("command", "case", "env", "var"), RUNS, ids=[f"{r[0]}-{r[1]}" for r in RUNS])
def test_bad_config_exits_2_with_one_line_naming_it(bad_runs, command, case, env, var):
    proc = bad_runs[(command, case)]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"config error: {var} ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for secret in (SECRET, REDIS_PASSWORD):
        assert secret not in proc.stdout
        assert secret not in proc.stderr
    problem = lines[0].split("; expected ")[0]
    for value in env.values():
        if len(value) > 3:
            assert value not in problem, "the bad value itself is echoed"


def test_good_config_passes_the_same_check():
    proc = _run("settings", {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_scan_runs_without_the_secret():
    line = (
        b'{"DownstreamContentSize":2048,"DownstreamStatus":201,"RequestContentSize":1024,'
        b'"RequestHost":"my-tunnel.t.lum.tools","StartUTC":"2026-11-24T01:50:22Z"}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "app", "scan", "-"],
        input=line,
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"PLATFORM_INTERNAL_SECRET" not in proc.stderr
    assert b"my-tunnel" in proc.stdout


@pytest.mark.parametrize(
    ("line_max", "fetch_max"),
    [("4096", "8192"), ("4096", "4161"), (str(1 << 29), str(1 << 30)), (None, str(16 * 1024 * 1024 + 65))],
)
def test_fetch_max_bytes_just_above_the_line_bound_is_accepted(no_setting_env, line_max, fetch_max):
    if line_max is not None:
        no_setting_env.setenv("LOG_LINE_MAX_BYTES", line_max)
    no_setting_env.setenv("FETCH_MAX_BYTES", fetch_max)
    s = load_settings()
    assert s.fetch_max_bytes > s.log_line_max_bytes + 64


def test_a_unix_socket_url_is_given_to_celery_as_redis_socket():
    """kombu and Celery's result backend know no unix:// scheme (a worker died with
    "No such transport: unix"): the socket goes to them as redis+socket://, with the
    database as each of them names it."""
    from app.settings import celery_url

    assert celery_url("unix:///run/redis.sock?db=2", "virtual_host") == "redis+socket:///run/redis.sock?virtual_host=2"
    assert celery_url("unix:///run/redis.sock?db=2", "db") == "redis+socket:///run/redis.sock?db=2"
    assert celery_url("unix:///run/redis.sock", "db") == "redis+socket:///run/redis.sock"
    for url in ("redis://redis:6379/0", "rediss://r.example:6380/1"):
        assert celery_url(url, "virtual_host") == url


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": "redis://localhost:6379/0"},
        {"REDIS_URL": "redis://redis:6379"},
        {"REDIS_URL": "redis://redis:6379/"},
        {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/15"},
        {"REDIS_URL": f"redis://scraper:{REDIS_PASSWORD}@redis/2"},
        {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/%31"},
        {"REDIS_URL": f"rediss://:{REDIS_PASSWORD}@r.example:6380/1?ssl_cert_reqs=optional"},
        # Celery's own spellings, on the URLs only Celery reads.
        {"CELERY_BROKER_URL": "rediss://r.example:6380/1?ssl_cert_reqs=CERT_REQUIRED",
         "CELERY_RESULT_BACKEND": "rediss://r.example:6380/2?ssl_cert_reqs=CERT_NONE"},
        {"REDIS_URL": "rediss://r.example:6380/0?ssl_cert_reqs=required"},
        {"REDIS_URL": "unix:///run/redis.sock"},
        {"REDIS_URL": "unix:///run/redis.sock?db=1"},
        {"REDIS_URL": f"unix://:{REDIS_PASSWORD}@/run/redis.sock?db=1&socket_timeout=5"},
        # redis-py's options on the ledger's URL, with a broker URL of its own.
        {"REDIS_URL": "redis://redis:6379/0?socket_timeout=5&health_check_interval=10&db=3",
         "CELERY_BROKER_URL": "redis://redis:6379/1"},
        {"CELERY_BROKER_URL": "rediss://r.example:6380/1?ssl_cert_reqs=none",
         "CELERY_RESULT_BACKEND": "redis://redis:6379/2?socket_timeout=5"},
    ],
)
def test_redis_urls_that_work_are_accepted(no_setting_env, env):
    for name, value in env.items():
        no_setting_env.setenv(name, value)
    s = load_settings()
    assert s.redis_url == env.get("REDIS_URL", "redis://localhost:6379/0")
    assert s.broker_url == env.get("CELERY_BROKER_URL", s.redis_url)


def test_redis_url_check_connects_nowhere(no_setting_env):
    """The URLs are checked by redis-py building a connection object, never connecting."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the settings check opened a socket")

    no_setting_env.setattr(socket, "socket", no_network)
    no_setting_env.setattr(socket, "create_connection", no_network)
    no_setting_env.setattr(socket, "getaddrinfo", no_network)
    no_setting_env.setenv("REDIS_URL", "redis://redis.invalid:6379/1?socket_timeout=5")
    no_setting_env.setenv("CELERY_BROKER_URL", "rediss://r.invalid:6380/0?ssl_cert_reqs=required")
    no_setting_env.setenv("CELERY_RESULT_BACKEND", "unix:///run/redis.sock?db=2")
    assert load_settings().result_backend == "unix:///run/redis.sock?db=2"


def test_redis_url_as_the_broker_names_celery_broker_url_in_its_error(no_setting_env):
    """REDIS_URL with a redis-py option is a good ledger URL, but Celery's broker (kombu)
    refuses every option but ssl_*: the line says why, and how to keep the option."""
    no_setting_env.setenv("REDIS_URL", f"redis://:{REDIS_PASSWORD}@redis:6379/0?socket_timeout=5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    (line,) = str(info.value).splitlines()
    assert line.startswith("config error: REDIS_URL ")
    assert "CELERY_BROKER_URL" in line and "ssl_" in line
    assert REDIS_PASSWORD not in line and "socket_timeout=5" not in line


@pytest.mark.parametrize("blank", [" ", "   ", "\t", " \n "])
def test_blank_secret_counts_as_missing(no_setting_env, blank):
    """A secret of blanks only is a mistake (every report would be refused 401): as unset."""
    no_setting_env.setenv("PLATFORM_INTERNAL_SECRET", blank)
    s = Settings()
    assert s.platform_internal_secret is None
    with pytest.raises(ConfigError, match="PLATFORM_INTERNAL_SECRET"):
        s.require_secret()


@pytest.mark.parametrize("secret", [" hunter2", "hunter2 ", "two words", "\thunter2\t"])
def test_a_secret_with_content_is_kept_as_given(no_setting_env, secret):
    no_setting_env.setenv("PLATFORM_INTERNAL_SECRET", secret)
    assert Settings().require_secret() == secret


@pytest.mark.parametrize(
    ("given", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("2262-04-11T23:47:16.854775Z", 9223372036854775000),
        ("2026-11-24T00:00:00.123457Z", 1795478400123457000),
        ("2026-11-24T00:00:00.123456789Z", 1795478400123456789),  # to the nanosecond
        ("2026-11-24T08:00:00,5+08:00", 1795478400500000000),
    ],
)
def test_start_at_within_64_bit_nanoseconds_is_accepted(no_setting_env, given, ns):
    from app.cli import _parse_time

    no_setting_env.setenv("START_AT", given)
    s = load_settings()
    assert s.start_at_ns == ns == _parse_time(given)  # the setting and --start-at read it alike


def test_a_label_selector_error_says_where_without_the_text(no_setting_env):
    no_setting_env.setenv("TRAEFIK_LABEL_SELECTOR", "app.kubernetes.io/name in (traefik")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "config error: TRAEFIK_LABEL_SELECTOR is not a label selector the API server takes (at the end: expected "
        "',' or ')'); expected a label selector on one line without tabs, such as app.kubernetes.io/name=traefik")
