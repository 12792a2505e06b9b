"""``scan``: totals of the committed sample, stdin, errors, notes, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import parser, scan
from app.parser import IGNORED_REASONS, REJECTED_REASONS
from app.scan import human_bytes, main

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sample.log"
EXPECTED = json.loads((DATA / "sample.expected.json").read_text())
ROOT = Path(__file__).resolve().parents[2]


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_sample_json_equals_committed_expected_totals(capsys):
    assert run_json(capsys, str(SAMPLE)) == EXPECTED


def test_sample_exercises_every_reason():
    lines = EXPECTED["lines"]
    assert set(lines["ignored"]) == set(IGNORED_REASONS)
    # too_long needs a line over 16 MiB: see test_line_over_the_bound_is_too_long_*
    assert set(lines["rejected"]) == set(REJECTED_REASONS) - {"too_long"}
    assert not SAMPLE.read_bytes().endswith(b"\n")  # the last line has no newline


# The sample's 70 KB line (a v2.11 line for legacy, 4096 bytes in, 123456 out): billed
# under the default bound, too_long under a bound below it.
LONG_LINE = max(SAMPLE.read_bytes().split(b"\n"), key=len)


def _without_the_long_line(expected: dict) -> dict:
    out = json.loads(json.dumps(expected))
    legacy = out["subdomains"]["legacy"]
    legacy["bytes_in"] -= 4096
    legacy["bytes_out"] -= 123456
    legacy["requests"] -= 1
    out["lines"]["counted"] -= 1
    out["lines"]["rejected"] = dict(sorted({**out["lines"]["rejected"], "too_long": 1}.items()))
    return out


def test_sample_holds_a_70kb_line_that_is_billed():
    assert 70_000 < len(LONG_LINE) < 71_000 and b'"RequestHost":"legacy.t.lum.tools"' in LONG_LINE
    assert EXPECTED["lines"]["rejected"].get("too_long") is None


@pytest.mark.parametrize("how", ["option", "environment"])
def test_line_over_the_bound_is_too_long_and_counted_once(capsys, monkeypatch, how):
    bound = str(len(LONG_LINE) - 1)
    if how == "option":
        result = run_json(capsys, str(SAMPLE), "--max-line-bytes", bound)
    else:
        monkeypatch.setenv("LOG_LINE_MAX_BYTES", bound)
        result = run_json(capsys, str(SAMPLE))
    assert result == _without_the_long_line(EXPECTED)
    monkeypatch.setenv("LOG_LINE_MAX_BYTES", str(len(LONG_LINE)))  # the bound is inclusive
    assert run_json(capsys, str(SAMPLE)) == EXPECTED


def test_line_over_the_bound_with_tiny_chunks(capsys, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_BYTES", 7)
    result = run_json(capsys, str(SAMPLE), "--max-line-bytes", "65536")
    assert result == _without_the_long_line(EXPECTED)


def test_bad_max_line_bytes_exit_2(capsys):
    for value in ("0", "-1", "16MiB", "1", " 8192", str(scan.LINE_BOUND_MIN - 1), str(scan.LINE_BOUND_MAX + 1)):
        assert main([str(SAMPLE), "--max-line-bytes", value]) == 2
        err = capsys.readouterr().err
        assert f"error: argument --max-line-bytes: {value!r} is not a whole number of bytes from 4096 to " in err
        assert "_positive_int" not in err and "_line_bytes" not in err


@pytest.mark.parametrize("value", ["abc", "1", "0", "-1", str(scan.LINE_BOUND_MAX + 1)])
def test_bad_log_line_max_bytes_names_the_variable(capsys, monkeypatch, value):
    monkeypatch.setenv("LOG_LINE_MAX_BYTES", value)
    assert main([str(SAMPLE)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    # Without the value, as the workers' settings lines (README, Configuration; a review).
    assert captured.err == (f"scan: LOG_LINE_MAX_BYTES is not a whole number of bytes "
                            f"from {scan.LINE_BOUND_MIN} to {scan.LINE_BOUND_MAX}\n")


@pytest.mark.parametrize("value", ["8192", "+8192", "8_192", " 8192 ", "8192.0"])
def test_log_line_max_bytes_is_read_as_the_workers_read_it(capsys, monkeypatch, value):
    # scan refused "+8192" and "8_192", which the workers take (a review).
    from app.settings import Settings

    monkeypatch.setenv("LOG_LINE_MAX_BYTES", value)
    monkeypatch.setenv("FETCH_MAX_BYTES", str(1 << 20))
    assert Settings().log_line_max_bytes == 8192
    from_env = run_json(capsys, str(SAMPLE))
    assert from_env == run_json(capsys, str(SAMPLE), "--max-line-bytes", "8192")
    assert from_env["lines"]["rejected"]["too_long"] >= 1


def test_line_bounds_are_the_workers():
    # scan and the settings both take LOG_LINE_MAX_BYTES's bounds from app.parser: the same rule.
    from pydantic import ValidationError

    from app.settings import EXPECTED, Settings

    for good in (scan.LINE_BOUND_MIN, scan.LINE_BOUND_MAX):
        assert Settings(log_line_max_bytes=good, fetch_max_bytes=1 << 30).log_line_max_bytes == good
    for bad in (scan.LINE_BOUND_MIN - 1, scan.LINE_BOUND_MAX + 1):
        with pytest.raises(ValidationError, match="log_line_max_bytes"):
            Settings(log_line_max_bytes=bad, fetch_max_bytes=1 << 30)
    assert f"from {scan.LINE_BOUND_MIN} to {scan.LINE_BOUND_MAX}" in EXPECTED["log_line_max_bytes"]


def test_same_totals_with_tiny_chunks(capsys, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_BYTES", 7)
    assert run_json(capsys, str(SAMPLE)) == EXPECTED


def test_two_files_add_up(capsys, tmp_path):
    copy = tmp_path / "copy.log"
    copy.write_bytes(SAMPLE.read_bytes() + b"\n")
    result = run_json(capsys, str(SAMPLE), str(copy))
    for name, totals in EXPECTED["subdomains"].items():
        assert result["subdomains"][name] == {k: 2 * v for k, v in totals.items()}
    assert result["lines"]["total"] == 2 * EXPECTED["lines"]["total"]


def test_table_sorted_by_bytes_out_with_human_and_exact_bytes(capsys):
    assert main([str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    rows = [
        line.split()[0]
        for line in out.splitlines()[2:]
        if line and not line.startswith(("-", "TOTAL"))
    ]
    by_out = sorted(
        EXPECTED["subdomains"], key=lambda s: (-EXPECTED["subdomains"][s]["bytes_out"], s)
    )
    assert rows[: len(by_out)] == by_out
    top = by_out[0]
    top_out = EXPECTED["subdomains"][top]["bytes_out"]
    assert f"{human_bytes(top_out)} ({top_out})" in out
    assert (
        f"lines: {EXPECTED['lines']['total']} read, {EXPECTED['lines']['counted']} counted" in out
    )
    assert "size_too_large 1" in out and "clf_no_host 2" in out


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(1_258_291) == "1.2 MiB"
    assert human_bytes(2**63 - 1) == "8.0 EiB"


def test_missing_file_one_line_exit_2(capsys, tmp_path):
    missing = tmp_path / "nope.log"
    assert main([str(SAMPLE), str(missing), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"scan: cannot read {missing}: No such file or directory\n"


def test_directory_is_unreadable(capsys, tmp_path):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"scan: cannot read {tmp_path}: Is a directory\n"


@pytest.mark.parametrize("domain", ["", "*.t.lum.tools", "t.lum.tools:443", "http://t.lum.tools", "t..lum.tools",
                                    "-t.lum.tools", "t.lum.tools.."])
def test_bad_domain_exit_2(capsys, domain):
    # The workers' rule (TUNNEL_DOMAIN): scan counted 0 lines without a word for most of
    # these (found by a new-user trial).
    assert main([str(SAMPLE), f"--domain={domain}"]) == 2
    assert capsys.readouterr().err.startswith("scan: invalid tunnel domain")


@pytest.mark.parametrize("value", ["*.t.lum.tools", ""])
def test_bad_tunnel_domain_variable_exit_2(capsys, monkeypatch, value):
    # Set but empty too: the workers refuse it (scan took the default; a review).
    monkeypatch.setenv("TUNNEL_DOMAIN", value)
    assert main([str(SAMPLE)]) == 2
    assert capsys.readouterr().err.startswith(f"scan: TUNNEL_DOMAIN: invalid tunnel domain: {value!r}")


def test_an_empty_log_line_max_bytes_is_refused_as_by_the_workers(capsys, monkeypatch):
    monkeypatch.setenv("LOG_LINE_MAX_BYTES", "")
    assert main([str(SAMPLE)]) == 2
    assert capsys.readouterr().err.startswith("scan: LOG_LINE_MAX_BYTES is not a whole number")


@pytest.mark.parametrize("domain", ["T.Lum.Tools", " t.lum.tools. ", "t.lum.tools"])
def test_domain_is_normalised_as_the_workers_do(domain):
    from app.settings import Settings

    assert parser.normalise_domain(domain) == Settings(tunnel_domain=domain).tunnel_domain == "t.lum.tools"


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "--domain" in capsys.readouterr().out


def test_domain_from_environment_and_option(capsys, monkeypatch, tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(
        b'{"DownstreamContentSize":5,"RequestContentSize":1,"RequestHost":"a.example.org","StartUTC":"x"}\n'
    )
    monkeypatch.setenv("TUNNEL_DOMAIN", "example.org")
    assert run_json(capsys, str(log))["subdomains"] == {
        "a": {"bytes_in": 1, "bytes_out": 5, "requests": 1}
    }
    assert run_json(capsys, str(log), "--domain", "t.lum.tools")["subdomains"] == {}
    monkeypatch.delenv("TUNNEL_DOMAIN")
    assert run_json(capsys, str(log))["lines"]["ignored"] == {"other_host": 1}


def test_clf_note(capsys, tmp_path):
    log = tmp_path / "clf.log"
    log.write_bytes(
        b'10.0.0.9 - - [24/Nov/2026:03:12:03 +0000] "GET /a HTTP/1.1" 200 10 "-" "curl" 1 "r@file" "http://x" 1ms\n'
    )
    assert main([str(log)]) == 0
    err = capsys.readouterr().err
    assert "accessLog.format" in err and "json" in err


def test_no_access_lines_note(capsys, tmp_path):
    log = tmp_path / "own.log"
    log.write_bytes(
        b"\x1b[90m2026-11-24T03:11:53Z\x1b[0m \x1b[32mINF\x1b[0m Starting provider\nmore text\n"
    )
    assert main([str(log), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["lines"]["ignored"] == {"not_access_log": 2}
    assert "none is an access-log entry" in captured.err and "accessLog.filePath" in captured.err


def test_notes_agree_with_a_count_of_one(capsys, tmp_path):
    log = tmp_path / "one.log"
    log.write_bytes(
        b'10.0.0.9 - - [24/Nov/2026:03:12:03 +0000] "GET /a HTTP/1.1" 200 10 "-" "curl" 1 "r@file" "http://x" 1ms\n'
    )
    assert main([str(log)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("scan: 1 access line is in Common Log Format,")
    assert "TOTAL (0 tunnels)" in captured.out
    log.write_bytes(b"Starting provider\n")
    assert main([str(log)]) == 0
    assert capsys.readouterr().err.startswith("scan: 1 line read but it is not an access-log entry:")
    log.write_bytes(b'{"DownstreamContentSize":0,"DownstreamStatus":101,"RequestContentSize":0,'
                    b'"RequestHost":"a.t.lum.tools"}\n')
    assert main([str(log)]) == 0
    out = capsys.readouterr().out
    assert "TOTAL (1 tunnel)" in out and "unmetered: 1 upgraded connection counted with 0 bytes" in out


def test_empty_input_no_note(capsys, tmp_path):
    log = tmp_path / "empty.log"
    log.write_bytes(b"")
    assert main([str(log), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["lines"]["total"] == 0
    assert captured.err == ""


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    class Terminal:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(scan, "PROGRESS_MIN_BYTES", 1)
    monkeypatch.setattr(scan, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(scan, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(sys, "stderr", term)
    assert main([str(SAMPLE), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED
    assert "\rscan: " in term.text and "%" in term.text
    assert "\r\x1b[K" in term.text  # the bar is cleared before anything else is printed


def _run_scan_subprocess(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    code = "import sys; from app.scan import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], input=stdin, capture_output=True, cwd=ROOT, timeout=60
    )


def test_stdin_dash_and_default(tmp_path):
    data = SAMPLE.read_bytes()
    for args in (["-", "--json"], ["--json"]):
        proc = _run_scan_subprocess(args, stdin=data)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == EXPECTED


def test_missing_file_no_traceback_in_subprocess(tmp_path):
    proc = _run_scan_subprocess([str(tmp_path / "missing.log")])
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1 and b"Traceback" not in proc.stderr


def test_scan_does_not_import_celery_or_kubernetes():
    code = (
        "import io, sys, contextlib\n"
        "from app.scan import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main([{str(SAMPLE)!r}, '--json'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('celery', 'kombu', 'kubernetes', 'pydantic', 'pydantic_settings', 'redis'))\n"
        "print(rc, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == "0 []"


@pytest.mark.parametrize("flag", ["--json", None])
def test_broken_pipe_is_quiet(flag, tmp_path):
    # Enough tunnels that the output overflows the pipe after the reader has gone.
    log = tmp_path / "many.log"
    log.write_bytes(
        b"".join(
            b'{"DownstreamContentSize":%d,"RequestContentSize":0,"RequestHost":"t%d.t.lum.tools"}\n'
            % (i, i)
            for i in range(4000)
        )
    )
    code = "import sys; from app.scan import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, str(log)] + ([flag] if flag else [])
    reader = subprocess.Popen(
        ["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        proc = subprocess.run(
            args, stdout=reader.stdin, stderr=subprocess.PIPE, cwd=ROOT, timeout=60
        )
    finally:
        reader.stdin.close()
        reader.wait(timeout=10)
    assert proc.returncode == 0
    assert proc.stderr == b""


# ----------------------------------------------------------------- unmetered (additive)


def test_json_adds_unmetered_per_tunnel_and_keeps_its_shape(capsys):
    result = run_json(capsys, str(SAMPLE))
    assert list(result) == ["subdomains", "lines", "unmetered"]  # the addition comes last
    assert list(result["lines"]) == ["total", "counted", "ignored", "rejected"]
    assert all(list(totals) == ["bytes_in", "bytes_out", "requests"] for totals in result["subdomains"].values())
    # Three WebSocket sessions through the real Traefik (alpha twice, charlie once) and a
    # synthetic status-101 line (legacy); a session to example.com is no tunnel's.
    assert result["unmetered"] == {"alpha": 2, "charlie": 1, "legacy": 1}
    for sub, count in result["unmetered"].items():
        assert result["subdomains"][sub]["requests"] >= count  # still counted as requests


def test_json_unmetered_is_an_empty_map_without_upgrades(capsys, tmp_path):
    log = tmp_path / "plain.log"
    log.write_bytes(b'{"DownstreamContentSize":2,"DownstreamStatus":200,"RequestContentSize":1,'
                    b'"RequestHost":"a.t.lum.tools","StartUTC":"2026-11-24T01:50:22Z"}\n')
    result = run_json(capsys, str(log))
    assert result["unmetered"] == {}
    assert result["subdomains"] == {"a": {"bytes_in": 1, "bytes_out": 2, "requests": 1}}


def test_table_lists_unmetered_tunnels(capsys, tmp_path):
    assert main([str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "unmetered: 4 upgraded connections counted with 0 bytes" in out
    assert "(alpha 2, charlie 1, legacy 1)" in out
    log = tmp_path / "plain.log"
    log.write_bytes(b'{"DownstreamStatus":200,"RequestHost":"a.t.lum.tools"}\n')
    assert main([str(log)]) == 0
    assert "unmetered" not in capsys.readouterr().out


def _pod_log(lines: list[bytes], cri: bool, rng) -> bytes:
    """``lines`` as a pod's log: each stamped as `kubectl logs --timestamps` prints it, or
    in the CRI format of /var/log/pods, with random lines cut into P pieces (the runtime
    cuts at 16 KiB) and a Traefik stderr line between the pieces now and then."""
    out = []
    for i, line in enumerate(lines):
        stamp = b"2026-11-24T01:50:%02d.%09dZ " % (i % 60, i)
        if not cri:
            out.append(stamp + line + b"\n")
            continue
        cuts = sorted(rng.sample(range(1, len(line)), min(len(line) - 1, rng.choice([0, 0, 1, 3])))) if line else []
        pieces = [line[a:b] for a, b in zip([0, *cuts], [*cuts, len(line)], strict=True)]
        for piece in pieces[:-1]:
            out.append(stamp + b"stdout P " + piece + b"\n")
            if rng.random() < 0.3:
                out.append(stamp + b'stderr F time="2026-11-24T01:50:00Z" level=info msg="Configuration loaded"\n')
        out.append(stamp + b"stdout F " + pieces[-1] + b"\n")
    return b"".join(out)


@pytest.mark.parametrize("cri", [False, True], ids=["kubectl logs --timestamps", "CRI"])
@pytest.mark.parametrize("chunk", [7, 256 * 1024])
def test_a_pods_log_gives_the_totals_of_traefiks_own(capsys, monkeypatch, tmp_path, cri, chunk):
    # A new-user trial: a pod's log, stamped, was counted 0 and every line rejected as
    # split_line, while auditing billing against pod logs is what scan is for.
    import random

    monkeypatch.setattr(scan, "CHUNK_BYTES", chunk)
    rng = random.Random(7)
    lines = SAMPLE.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    log = tmp_path / "pod.log"
    log.write_bytes(_pod_log(lines, cri, rng))
    result = run_json(capsys, str(log))
    stderr_lines = log.read_bytes().count(b" stderr F ")
    expected = json.loads(json.dumps(EXPECTED))
    expected["lines"]["total"] += stderr_lines
    if stderr_lines:
        expected["lines"]["ignored"]["not_access_log"] += stderr_lines
    assert result == expected


def test_a_pods_log_is_said_so_and_a_plain_one_is_not(capsys, tmp_path):
    pod = tmp_path / "pod.log"
    pod.write_bytes(b"2026-11-24T01:50:00.000000000Z stdout F {}\n")
    assert main([str(pod)]) == 0
    assert "pod.log is a pod's log" in capsys.readouterr().err
    assert main([str(SAMPLE)]) == 0
    assert "pod's log" not in capsys.readouterr().err


def test_a_cri_line_whose_f_piece_never_came_is_counted_by_reason(capsys, tmp_path):
    log = tmp_path / "pod.log"
    log.write_bytes(b'2026-11-24T01:50:00.000000000Z stdout P {"RequestHost":"a.t.lum.tools",\n')
    result = run_json(capsys, str(log))
    assert result["lines"]["total"] == 1 and result["lines"]["counted"] == 0
    assert sum(result["lines"]["rejected"].values()) + sum(result["lines"]["ignored"].values()) == 1


def test_traefiks_own_text_log_first_is_not_taken_for_a_pods_log(capsys, tmp_path):
    # Traefik v3's own log lines start with a time to the second and a level; the kubelet's
    # and the runtime's stamps carry a fraction (or the CRI tags follow).
    log = tmp_path / "traefik.log"
    log.write_bytes(b"2026-11-24T01:50:00Z INF Traefik version 3.7.15 built on 2026-11-01\n" + SAMPLE.read_bytes())
    assert main([str(log), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["subdomains"] == EXPECTED["subdomains"] and result["lines"]["total"] == EXPECTED["lines"]["total"] + 1
    assert "pod's log" not in err


def test_a_pods_line_over_the_bound_is_too_long_by_traefiks_length_and_never_held(tmp_path):
    # A review: the P pieces of a CRI line were joined without a bound (434 MB for a 200 MiB
    # line), and a stamped line over the bound was measured with its stamp.
    bound = 64 * 1024
    agg = parser.Aggregator(max_line_bytes=bound)
    pod = scan.PodLogLines(bound)
    framer = parser.LineFramer(bound + parser.LINE_PREFIX_ROOM)
    stamp = b"2026-11-24T01:50:00.123456789Z "
    long_text = b'{"RequestHost":"a.t.lum.tools","x":"' + b"y" * (10 * bound) + b'"}'
    pieces = [long_text[i:i + 16384] for i in range(0, len(long_text), 16384)]
    cri = b"".join(stamp + b"stdout P " + piece + b"\n" for piece in pieces[:-1]) + stamp + b"stdout F " + pieces[-1] + b"\n"
    kubectl = stamp + long_text + b"\n"
    held = 0
    for chunk in (cri[i:i + 50_000] for i in range(0, len(cri), 50_000)):
        agg.feed_lines(pod.lines(framer.feed(chunk)))
        held = max(held, sum(map(len, pod._pieces[b"stdout"])))
    agg.feed_lines(pod.lines(framer.feed(kubectl)))
    assert held <= bound
    assert agg.rejected == {"too_long": 2} and agg.too_long_lengths == [len(long_text), len(long_text)]
