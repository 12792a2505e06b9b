"""LOG_FORMAT: ``human`` keeps the original's ``[INFO] message``; ``json`` is one object a
line with the fields passed by ``extra=``; neither ever shows a secret (app/logs.py)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.logs import MASK, HumanFormatter, JsonFormatter, Redactor, configure
from app.settings import Settings

SECRET = "pl4tform-S3cret-value"
REDIS_PASSWORD = "r3dis-pass/word"  # URL-encoded in the URL below


def settings(**env: str) -> Settings:
    return Settings(**{"platform_internal_secret": SECRET,
                       "redis_url": "redis://:r3dis-pass%2Fword@redis:6379/0", **env})


def emit(fmt: logging.Formatter, *args, exc: BaseException | None = None, **extra) -> str:
    logger = logging.getLogger("test.logs")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    if exc is not None:
        try:
            raise exc
        except type(exc):
            logger.error(*args, exc_info=True, extra=extra)
    else:
        logger.info(*args, extra=extra)
    return stream.getvalue()


def test_human_is_the_originals_format():
    out = emit(HumanFormatter(Redactor([])), "✅ %s: ↓%dB ↑%dB (%dreq) → User:%s", "my-tunnel", 1024, 2048, 15,
               "abc123def456", tunnel="my-tunnel")
    assert out == "[INFO] ✅ my-tunnel: ↓1024B ↑2048B (15req) → User:abc123def456\n"


def test_json_has_the_fields_and_extras():
    out = emit(JsonFormatter(Redactor([])), "✅ %s: ↓%dB", "my-tunnel", 1024,
               tunnel="my-tunnel", interval="2026-11-24T01:50:00Z", outcome="delivered", pod=None)
    (line,) = out.splitlines()
    doc = json.loads(line)
    assert doc["level"] == "INFO" and doc["logger"] == "test.logs"
    assert doc["message"] == "✅ my-tunnel: ↓1024B"
    assert doc["tunnel"] == "my-tunnel" and doc["interval"] == "2026-11-24T01:50:00Z" and doc["outcome"] == "delivered"
    assert doc["time"].endswith("Z") and "T" in doc["time"]
    assert "task" not in doc  # outside a task


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_a_secret_bearing_error_is_masked(fmt):
    s = settings(log_format=fmt)
    formatter = HumanFormatter(Redactor.from_settings(s)) if fmt == "human" else JsonFormatter(Redactor.from_settings(s))
    error = RuntimeError(f"POST failed with x-internal-secret: {SECRET} via redis://:{REDIS_PASSWORD}@redis:6379/0")
    out = emit(formatter, "report failed: %s (%s)", error, "redis://user:other-pass@elsewhere:6379/1", exc=error,
               reason=f"echoed {SECRET}")
    assert SECRET not in out
    assert REDIS_PASSWORD not in out and "r3dis-pass%2Fword" not in out
    assert "other-pass" not in out  # any user:password@ in a URL
    assert MASK in out and "Traceback" in out
    if fmt == "json":
        doc = json.loads(out)
        assert "RuntimeError" in doc["exc"] and doc["reason"] == f"echoed {MASK}"


def test_configure_installs_the_format_on_the_root_logger():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(settings(log_format="json", log_level="WARNING"), stream)
        logging.getLogger("x").warning("hello %s", SECRET)
        logging.getLogger("x").info("not at INFO")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == f"hello {MASK}"


def test_log_format_setting():
    assert Settings().log_format == "human"
    assert settings(log_format="JSON").log_format == "json"
