"""The file source's pieces without a server: the identity of a file, a line's time,
the file cursor's string form, discovery, and the settings (app/filesource.py,
app/model.py FileCursor, app/settings.py LOG_SOURCE / LOG_FILES / FILE_QUEUE(S))."""

from __future__ import annotations

import gzip
import shutil

import pytest

from app.filesource import FINGERPRINT_BYTES, discover, identity_of, line_time_ns
from app.model import FileCursor
from app.settings import ConfigError, Settings, load_settings
from tests.traffic import Traffic

LINE = Traffic(seed=3, written_ns=1_795_485_022_124_656_789).line()  # StartUTC 2026-11-24T01:50:22.123456789Z


def test_identity_is_the_first_line_and_waits_for_its_newline():
    two = LINE + b"\n" + b'{"second":1}\n'
    assert identity_of(two) == identity_of(LINE + b"\n") == identity_of(LINE + b"\n" + b"more, partial")
    assert identity_of(LINE) is None  # its newline is not written yet
    assert identity_of(b"") is None
    assert identity_of(Traffic(seed=4).line() + b"\n") != identity_of(two)
    assert len(identity_of(two)) == 32  # 128 bits, hex


def test_identity_of_a_first_line_longer_than_the_fingerprint_is_its_first_bytes():
    long_line = b"x" * (FINGERPRINT_BYTES + 10)
    assert identity_of(long_line[: FINGERPRINT_BYTES - 1]) is None
    assert identity_of(long_line) == identity_of(long_line[:FINGERPRINT_BYTES]) == identity_of(long_line + b"\n")


def test_line_time_is_start_plus_duration_else_time():
    # StartUTC 2026-11-24T01:50:22.123456789Z, Duration 1.2 ms.
    start = 1_795_485_022_123_456_789
    assert line_time_ns(LINE) == start + 1_200_000
    without_duration = LINE.replace(b'"Duration":1200000,', b"")
    # No Duration: the time the line was written (``time``), not the request's start (a
    # request that started 10 minutes before its line would land 10 minutes early).
    assert line_time_ns(without_duration) == 1_795_485_022 * 10**9
    late = without_duration.replace(b'"time":"2026-11-24T01:50:22Z"', b'"time":"2026-11-24T02:00:22Z"')
    assert line_time_ns(late) == 1_795_485_622 * 10**9
    assert line_time_ns(without_duration.replace(b'"time":"2026-11-24T01:50:22Z"', b'"x":"y"')) == start
    only_time = LINE.replace(b'"StartUTC":"2026-11-24T01:50:22.123456789Z",', b"")
    assert line_time_ns(only_time) == 1_795_485_022 * 10**9
    zoned = only_time.replace(b'"time":"2026-11-24T01:50:22Z"', b'"time":"2026-11-24T02:50:22+01:00"')
    assert line_time_ns(zoned) == 1_795_485_022 * 10**9
    assert line_time_ns(b"not json") is None
    assert line_time_ns(b'{"RequestPath":"/\\"StartUTC\\":\\"x"}') is None  # inside a string: escaped


def test_file_cursor_string_form():
    cursor = FileCursor(4096, "2049:1234", FileCursor.tail_of(b"x" * 5000), 2, True)
    assert cursor.encode() == f"f1|4096|2|1|2049:1234|{cursor.tail}"
    assert FileCursor.decode(cursor.encode()) == cursor
    assert FileCursor.decode("") is None
    assert FileCursor.decode(FileCursor().encode()) == FileCursor()
    assert FileCursor.tail_of(b"") == "" and FileCursor.tail_of(b"y" * 10) != FileCursor.tail_of(b"y" * 11)
    # The tail covers the last TAIL_BYTES bytes only.
    assert FileCursor.tail_of(b"a" + b"z" * FileCursor.TAIL_BYTES) == FileCursor.tail_of(b"z" * FileCursor.TAIL_BYTES)
    assert FileCursor.field("ab12") == "file:ab12"
    for bad in ("cid|1|2", "f1|x|0|0||", "f1|10|0|0|1:2|", "f1|0|0|0|1:2|abcd", "f1|1|0|2|1:2|ab", "f1|1|0|1"):
        with pytest.raises(ValueError):
            FileCursor.decode(bad)


def test_discover_skips_compressed_and_unidentified_and_keeps_the_larger_copy(tmp_path):
    (tmp_path / "access.log").write_bytes(LINE + b"\n" + LINE + b"\n")
    shutil.copyfile(tmp_path / "access.log", tmp_path / "access.log.1")
    with open(tmp_path / "access.log", "ab") as f:
        f.write(b"partial")  # larger: the one planned
    (tmp_path / "access.log.2.gz").write_bytes(gzip.compress(LINE + b"\n"))
    (tmp_path / "access.log.3").write_bytes(gzip.compress(LINE + b"\n"))  # gzip without the suffix
    (tmp_path / "access.log.4").write_bytes(b"")  # no first line yet
    (tmp_path / "access.log.d").mkdir()  # not a regular file
    found = discover(str(tmp_path / "access.log*"))
    assert [f.path for f in found.files] == [str(tmp_path / "access.log")]
    assert found.files[0].size == 2 * len(LINE) + 2 + len(b"partial")
    assert found.compressed == [str(tmp_path / "access.log.2.gz"), str(tmp_path / "access.log.3")]
    assert found.unidentified == [str(tmp_path / "access.log.4")]
    assert discover(str(tmp_path / "nothing*")).files == []


def _settings(monkeypatch, **env: str) -> Settings:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_log_source_defaults_to_kubernetes(monkeypatch):
    s = _settings(monkeypatch)
    assert (s.log_source, s.log_files, s.file_queue, s.file_plan_queues) == ("kubernetes", "", "fetch", ["fetch"])


def test_file_source_settings(monkeypatch):
    s = _settings(monkeypatch, LOG_SOURCE="File", LOG_FILES=" /var/log/traefik/access.log* ")
    assert (s.log_source, s.log_files) == ("file", "/var/log/traefik/access.log*")
    s = _settings(monkeypatch, LOG_SOURCE="file", FILE_QUEUE="fetch.web1", FILE_QUEUES="fetch.web1, fetch.web2,fetch.web1")
    assert s.file_plan_queues == ["fetch.web1", "fetch.web2"]
    assert s.file_queue_names == ["fetch.web1", "fetch.web2"]
    # beat's own FILE_QUEUE is declared too, but gets no plan when FILE_QUEUES lists the hosts.
    s = _settings(monkeypatch, LOG_SOURCE="file", FILE_QUEUES="fetch.a")
    assert s.file_plan_queues == ["fetch.a"] and s.file_queue_names == ["fetch.a", "fetch"]


@pytest.mark.parametrize(("name", "value"), [
    ("LOG_SOURCE", "files"),
    ("LOG_FILES", "access.log*"),
    ("LOG_FILES", "/var/log/a\nb"),
    ("FILE_QUEUE", "report"),
    ("FILE_QUEUE", "fetch."),
    ("FILE_QUEUE", "fetchx"),
    ("FILE_QUEUES", "fetch.a,report"),
    ("FILE_QUEUES", ","),
])
def test_bad_file_source_settings_name_the_variable(monkeypatch, name, value):
    with pytest.raises(ConfigError) as e:
        _settings(monkeypatch, **{name: value})
    assert str(e.value).startswith(f"config error: {name} ") and "\n" not in str(e.value)
