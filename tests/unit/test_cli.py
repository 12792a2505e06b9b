"""The command line: argparse subcommands, each with --help, and the documented exit
statuses (0 done, 1 failed, 2 usage or configuration error)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["scan", "init-ledger", "status", "deadletters", "replay", "write-off", "metrics", "watch"]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "PLATFORM_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "app", *args], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_every_documented_command_is_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)
    readme = (ROOT / "README.md").read_text()
    for name in sub.choices:
        assert f"traefik-metrics-scraper {name}" in readme, f"{name} is not in the README's Commands"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_has_help_and_exits_0(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"traefik-metrics-scraper {command}" in capsys.readouterr().out


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys):
    assert main([]) == 2
    assert main(["nosuch"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(capsys):
    assert main(["init-ledger", "--start-at", "yesterday"]) == 2
    assert main(["init-ledger", "--start-at", "2026-11-24T00:00:00"]) == 2  # no zone
    assert main(["metrics", "--port", "eighty"]) == 2
    assert main(["replay"]) == 2  # neither --all nor KEYs
    assert main(["replay", "--all", "1:a"]) == 2  # both
    assert main(["replay", "not-a-key"]) == 2
    err = capsys.readouterr().err
    assert "give a zone" in err and "give --all or KEYs" in err and "not a report key" in err


def test_redis_unreachable_is_a_failure_in_one_line():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run("status", REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traefik-metrics-scraper status: Redis: ConnectionError")
    assert "hunter2" not in proc.stderr + proc.stdout


def test_a_bad_variable_is_a_configuration_error():
    proc = run("status", REPORT_INTERVAL="seven")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("config error: REPORT_INTERVAL is not a whole number; expected a whole number "
                                   "of seconds from 1 to 86400 that divides 86400")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("config error: REPORT_INTERVAL is not a whole number; expected a whole number "
                                   "of seconds from 1 to 86400 that divides 86400")


def test_out_of_range_values_are_usage_errors(capsys):
    assert main(["metrics", "--port", "99999"]) == 2
    assert main(["metrics", "--port", "0"]) == 2
    assert "not a TCP port" in capsys.readouterr().err
    assert main(["metrics", "--port", "9" * 5000]) == 2  # past int()'s 4,300 digits: not argparse's generic line
    err = capsys.readouterr().err
    assert "not a TCP port (1-65535): '999" in err and "_port" not in err and len(err) < 1000
    assert main(["init-ledger", "--start-at", "0001-01-01T00:00:00+01:00"]) == 2
    assert main(["init-ledger", "--start-at", "1969-12-31T23:59:59Z"]) == 2
    assert main(["init-ledger", "--start-at", "2300-01-01T00:00:00Z"]) == 2
    assert main(["replay", "²:a"]) == 2  # not ASCII digits
    err = capsys.readouterr().err
    assert "outside 1970-01-01" in err and "not a report key" in err


def test_start_at_is_exact_to_the_microsecond():
    from app.cli import _parse_time

    assert _parse_time("2026-11-24T01:50:00.123457Z") == 1_795_485_000_123_457_000
    assert _parse_time("2026-11-24T09:50:00.000001+08:00") == 1_795_485_000_000_001_000
    assert _parse_time("1970-01-01T00:00:00Z") == 0


@pytest.mark.parametrize("args", [["--timeout", "-1"], ["--timeout", "nan"], ["--timeout", "inf"],
                                  ["--timeout", "0"], ["--timeout", "1e300"], ["--timeout", "soon"],
                                  ["--lines", "-5"], ["--lines", "0"], ["--lines", "1.5"], ["--lines", "many"],
                                  # past int64, which tailLines is; past int()'s 4,300 digits (a review)
                                  ["--lines", "99999999999999999999"], ["--lines", "9" * 5000]])
def test_check_refuses_a_bad_timeout_or_line_count(args, capsys):
    # Refused by argparse, before any connection: no traceback, no misleading FAIL line.
    assert main(["check", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: argument {args[0]}: not a " in captured.err and "Traceback" not in captured.err
    assert len(captured.err) < 1000  # the value is cut short


def test_check_takes_a_good_timeout_and_line_count():
    from app.cli import _count, _seconds

    assert _seconds("0.5") == 0.5 and _seconds("3600") == 3600.0
    assert _count("1") == 1 and _count("200") == 200 and _count("1000000") == 1_000_000


def test_check_help_describes_both_log_sources(capsys):
    assert main(["check", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "LOG_SOURCE=kubernetes" in out and "LOG_SOURCE=file" in out and "LOG_FILES" in out
    assert "PLATFORM_INTERNAL_SECRET" in out


def test_readme_synopsis_names_every_option():
    readme = (ROOT / "README.md").read_text()
    synopsis = readme.split("\n## Commands\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = {line.split()[1]: line for line in synopsis.splitlines() if line.strip()}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in lines[name], f"{name} {option} is not in the README's synopsis"


# (A START:SUBDOMAIN whose start is not an interval start is looked up, not refused: it
# may be a dead letter of an earlier REPORT_INTERVAL, which replay --all revives too.)
@pytest.mark.parametrize(("key", "why"), [
    ("1796111280:a.b", "'a.b' is not a tunnel subdomain"),
    ("default:2026-11-24T01:50:01Z/60:alpha", "1795485001 is not an interval start"),
])
def test_replay_says_why_a_key_names_no_report(key, why):
    # Refused before Redis is asked (none runs here): exit 2 and the reason, not "not a dead letter".
    proc = run("replay", key, REPORT_INTERVAL="60", SCRAPER_ID="default")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traefik-metrics-scraper replay: not a report key"), lines
    assert why in lines[0] and "dead letter" not in lines[0]


def _platform(url: str, secret: str | None):
    from app.settings import Settings

    return Settings(platform_api_url=url, platform_internal_secret=secret)


def test_check_platform_warns_when_the_secret_is_not_set():
    from app.check import check_platform

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with_secret = check_platform(_platform(url, "hunter2"), 5.0)
        without = check_platform(_platform(url, None), 5.0)
    assert with_secret.status == "OK" and "hunter2" not in with_secret.line()
    assert without.status == "WARN"
    assert "PLATFORM_INTERNAL_SECRET is not set" in without.detail
    assert "refuses to start" in without.fix and "-Q report" in without.fix


def test_check_platform_keeps_a_failure_a_failure_without_the_secret():
    from app.check import check_platform

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = check_platform(_platform(f"http://127.0.0.1:{port}", None), 5.0)
    assert result.status == "FAIL"
    assert "PLATFORM_INTERNAL_SECRET is not set" in result.detail
    assert result.fix.startswith("check PLATFORM_API_URL") and "PLATFORM_INTERNAL_SECRET" in result.fix


def test_replay_refuses_a_start_past_any_interval_briefly():
    # A start of 4,000 digits was taken, and "not a dead letter: <all of it>" printed (a review).
    from app.cli import _replay_key

    with pytest.raises(ValueError, match="is not an interval start") as info:
        _replay_key("9" * 4000 + ":web", "scraper", 60)
    assert len(str(info.value)) < 400
    assert _replay_key("9223372020:web", "scraper", 60).start == 9_223_372_020  # the last minute before 2262-04-11


def test_watch_without_a_kubernetes_config_is_a_configuration_error(tmp_path):
    # It exited 1 with an [ERROR] line, where a worker exits 2 for the same (a new-user trial).
    proc = run("watch", HOME=str(tmp_path), KUBECONFIG="", KUBERNETES_SERVICE_HOST="")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: the watcher has ") and "KUBECONFIG" in lines[0]


@pytest.mark.parametrize(("args", "why"), [
    ((), "give the KEYs of the dead letters to write off"),
    (("1796111280:web",), "--reason is required"),
    (("1796111280:web", "--reason", ""), "--reason must be one line of printable text"),
    (("1796111280:web", "--reason", "two\nlines"), "--reason must be one line of printable text"),
    (("1796111280:web", "--reason", "x" * 501), "at most 500 characters"),
    (("1796111280:web", "--reason", "ok", "--by", "\t"), "--by must be one line"),
    (("1796111280:web", "--reason", "ok", "--json"), "--json goes with --list"),
    (("--list", "1796111280:web"), "--list takes no KEY"),
    (("--list", "--reason", "x"), "--list takes no KEY"),
    (("--list", "--reason", "", "--by", ""), "--list takes no KEY"),
    (("1796111280:a.b", "--reason", "ok"), "'a.b' is not a tunnel subdomain"),
])
def test_write_off_refuses_bad_arguments_before_asking_redis(args, why):
    # No Redis runs here (REDIS_URL points at a closed port): exit 2 and one line saying why.
    proc = run("write-off", *args, REDIS_URL="redis://127.0.0.1:1/0")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traefik-metrics-scraper write-off: "), lines
    assert why in lines[0]


def test_metrics_tells_a_bad_addr_from_a_port_in_use():
    # An --addr that names no address of this host is a usage error (2); a port already
    # taken is a failure (1).
    env = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = str(probe.getsockname()[1])
    for addr in ("bogus.invalid", "a" * 64 + ".example", "192.0.2.1"):
        proc = run("metrics", "--addr", addr, "--port", free, **env)
        assert proc.returncode == 2, (addr, proc.stderr)
        assert "cannot listen on" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run("metrics", "--addr", "127.0.0.1", "--port", str(taken.getsockname()[1]), **env)
    assert proc.returncode == 1 and "cannot listen on" in proc.stderr, proc.stderr
