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
COMMANDS = ["scan", "init-ledger", "status", "deadletters", "replay", "metrics", "watch"]


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
    assert main(["init-ledger", "--start-at", "0001-01-01T00:00:00+01:00"]) == 2
    assert main(["init-ledger", "--start-at", "1969-12-31T23:59:59Z"]) == 2
    assert main(["init-ledger", "--start-at", "2300-01-01T00:00:00Z"]) == 2
    assert main(["replay", "²:a"]) == 2  # not ASCII digits
    err = capsys.readouterr().err
    assert "not a TCP port" in err and "outside 1970-01-01" in err and "not a report key" in err


def test_start_at_is_exact_to_the_microsecond():
    from app.cli import _parse_time

    assert _parse_time("2026-11-24T01:50:00.123457Z") == 1_795_485_000_123_457_000
    assert _parse_time("2026-11-24T09:50:00.000001+08:00") == 1_795_485_000_000_001_000
    assert _parse_time("1970-01-01T00:00:00Z") == 0
