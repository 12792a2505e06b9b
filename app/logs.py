"""Log record formats: ``LOG_FORMAT=human`` (default, the original scraper's
``[INFO] message``) or ``json`` (one JSON object a line), for Celery's own records too.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``task`` and
``task_id`` inside a task, the fields a log call passes with ``extra=`` (``pod``,
``namespace``, ``interval``, ``tunnel``, ``outcome``...), and ``exc`` (the traceback) when
there is one::

    {"time": "2026-11-24T01:51:02.120Z", "level": "INFO", "logger": "app.reporting",
     "message": "✅ my-tunnel: ↓1024B ↑2048B (15req) → User:abc123def456",
     "tunnel": "my-tunnel", "interval": "2026-11-24T01:50:00Z", "outcome": "delivered", ...}

Both formats mask secrets in everything they write (message, fields, traceback): the
value of ``PLATFORM_INTERNAL_SECRET``, the passwords of the Redis URLs in the settings, and
any ``user:password@`` in a URL. The code never logs a secret on purpose (docs/design.md,
invariant 7); this is the net under it.

Celery prints its worker start-up banner (not a log record): run JSON workers with
``celery -A app --quiet worker ...`` so that stdout holds JSON lines only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from app.settings import Settings

HUMAN_FORMAT = "[%(levelname)s] %(message)s"
MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)@", re.I)
# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class Redactor:
    """Masks the secret values it was given, and any password in a URL."""

    def __init__(self, secrets: list[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def from_settings(cls, s: Settings) -> Redactor:
        secrets = []
        if s.platform_internal_secret is not None:
            secrets.append(s.platform_internal_secret.get_secret_value())
        for url in (s.redis_url, s.celery_broker_url, s.celery_result_backend):
            password = urlsplit(url).password if url else None
            if password:
                secrets += [password, unquote(password)]
        return cls(secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)


class HumanFormatter(logging.Formatter):
    """``[LEVEL] message`` (and the traceback), secrets masked."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__(HUMAN_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring), secrets masked."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task = _current_task()
        if task is not None:
            doc["task"], doc["task_id"] = task
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
        if record.exc_info:
            doc["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        line = json.dumps(doc, ensure_ascii=False, default=str)
        return self.redact(line)


def _current_task() -> tuple[str, str] | None:
    """(name, id) of the Celery task running in this process, if any."""
    if "celery" not in sys.modules:
        return None
    from celery import current_task

    task = current_task._get_current_object() if current_task else None
    if task is None or task.request.id is None:
        return None
    return task.name, task.request.id


def formatter(s: Settings) -> logging.Formatter:
    redact = Redactor.from_settings(s)
    return JsonFormatter(redact) if s.log_format == "json" else HumanFormatter(redact)


def apply(logger: logging.Logger, s: Settings) -> None:
    """Give every handler of ``logger`` the format LOG_FORMAT names."""
    fmt = formatter(s)
    for handler in logger.handlers:
        handler.setFormatter(fmt)


def configure(s: Settings, stream=None) -> None:
    """For the commands outside Celery: one handler on the root logger, at LOG_LEVEL."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    root.handlers[:] = [handler]
    root.setLevel(s.log_level)
    apply(root, s)


def install(settings: Settings) -> None:
    """Celery processes: format the root and task loggers once Celery has set them up,
    and send Python warnings (Celery's SecurityWarning...) through them too."""
    from celery import signals

    logging.captureWarnings(True)

    def _apply(logger, **_: object) -> None:
        apply(logger, settings)

    signals.after_setup_logger.connect(_apply, weak=False)
    signals.after_setup_task_logger.connect(_apply, weak=False)
