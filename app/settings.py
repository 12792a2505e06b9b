"""The one typed settings object, built from the environment and checked at start.

Every field is read from the environment variable of the same name in upper case
(``report_interval`` <- ``REPORT_INTERVAL``). The original scraper's variables keep
their names and defaults. A bad value stops the program with exit status 2 and one
line per bad variable, built here from pydantic's error *type*, never from its text:
pydantic's messages can quote the input, and the input may be a secret or a Redis URL
holding a password.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import ConnectionPool

from app.labels import label_selector_problem
from app.model import parse_time_ns
from app.parser import (
    LINE_BOUND_MAX,
    LINE_BOUND_MIN,
    LINE_PREFIX_ROOM,
    MAX_LINE_BYTES,
    normalise_domain,
)

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# The database in a redis:// or rediss:// URL's path: none, or a whole number. redis-py reads
# any other path as database 0 without a word; kombu (Celery's broker) refuses it at start.
REDIS_DB_PATH = re.compile(r"/?[0-9]*")
# A file source's queue: the normal fetch queue, or a host's own (fetch.<host>).
FILE_QUEUE = re.compile(r"^fetch(\.[A-Za-z0-9][A-Za-z0-9._-]{0,56})?$")

# ssl_cert_reqs as Celery's broker (kombu) and result backend read it; redis-py knows
# the lower-case ones only.
CERT_REQS = ("required", "optional", "none", "CERT_REQUIRED", "CERT_OPTIONAL", "CERT_NONE")
_CELERY_CERT_REQS = re.compile(r"(?<=[?&]ssl_cert_reqs=)CERT_(REQUIRED|OPTIONAL|NONE)(?=&|$)")


def _lower_cert_reqs(m: re.Match[str]) -> str:
    return m.group(1).lower()


_REDIS_URL = (
    "a redis://, rediss:// or unix:// URL that redis-py takes: a whole-number database (/0, or ?db=0 "
    "for unix://) and only redis-py's ?options (socket_timeout=5...)"
)

# What each field expects, said in the error line; pydantic's own text is not shown.
EXPECTED = {
    "platform_api_url": "an http:// or https:// URL with a host (DNS labels of 1 to 63 characters) and no "
    "user:password, e.g. http://platform.platform.svc.cluster.local:3000",
    "platform_internal_secret": "a non-empty string of Latin-1 characters (an HTTP header's) without line breaks or "
    "other control characters (a file's trailing newline?); blanks only count as unset",
    "report_interval": "a whole number of seconds from 1 to 86400 that divides 86400",
    "log_level": "one of DEBUG, INFO, WARNING, ERROR",
    "redis_url": _REDIS_URL,
    "celery_broker_url": _REDIS_URL + "; as the broker, a redis:// or rediss:// URL takes no ?option but ssl_*, "
    "and a rediss:// URL needs ?ssl_cert_reqs=required (or optional, none)",
    "celery_result_backend": _REDIS_URL + "; a rediss:// URL needs ?ssl_cert_reqs=required (or optional, none)",
    "tunnel_domain": "a DNS name such as t.lum.tools",
    "traefik_namespace": "a Kubernetes namespace name",
    "traefik_label_selector": "a label selector on one line without tabs, such as app.kubernetes.io/name=traefik",
    "traefik_container": "a container name, or empty",
    "fetch_interval": "a whole number of seconds from 1 to REPORT_INTERVAL",
    "fetch_min_interval": "a number of seconds from 0.1 to FETCH_INTERVAL",
    "follow_max_pods": "a whole number from 0 to 256",
    "follow_min_rate": "a number of lines per second from 0 to 1000000",
    "fetch_max_bytes": "a whole number of bytes from 4096 to 1073741824, more than LOG_LINE_MAX_BYTES + 64 "
    "(one read must hold the longest line and its timestamp)",
    "log_line_max_bytes": f"a whole number of bytes from {LINE_BOUND_MIN} to {LINE_BOUND_MAX}, below FETCH_MAX_BYTES - 64",
    "fetch_time_limit": "a whole number of seconds from 5 to 3600",
    "log_reorder_window": "a number of seconds from 0.001 to 60",
    "terminating_read_interval": "a number of seconds from 0.1 to FETCH_INTERVAL",
    "report_max_age": "a whole number of seconds, at least 60",
    "seal_max_wait": "a whole number of seconds from 1 to INTERVAL_RETENTION",
    "seal_clock_margin": "a number of seconds from 0 to 300",
    "scraper_id": "1-63 characters of A-Z a-z 0-9 . _ -",
    "redis_key_prefix": "1-63 characters of A-Z a-z 0-9 . _ -",
    "start_at": "an ISO 8601 time with a zone from 1970-01-01 to 2262-04-11, e.g. 2026-11-24T00:00:00Z",
    "visibility_timeout": "a whole number of seconds above twice the largest of FETCH_TIME_LIMIT + 10, "
    "REPORT_RETRY_MAX_DELAY, the report lease (REPORT_LEASE, default REPORT_INTERVAL (at most 600) plus twice "
    "REPORT_HOLD_LEASE) and a report attempt's limit (PLATFORM_CONNECT_TIMEOUT + PLATFORM_READ_TIMEOUT + 15); "
    "raise VISIBILITY_TIMEOUT or lower those",
    "report_auto_retries": "a whole number from 0 to 20",
    "report_retry_max_delay": "a whole number of seconds from 1 to 3600",
    "report_due_max_delay": "a whole number of seconds from 1 to 86400",
    "max_waiting_retries": "a whole number from 1 to 100000",
    "report_lease": "a whole number of seconds from 1 to 86400",
    "report_hold_lease": "a whole number of seconds from 3 to 3600",
    "report_probe_interval": "a whole number of seconds from 1 to 3600",
    "platform_connect_timeout": "a number of seconds above 0, at most 3600",
    "platform_read_timeout": "a number of seconds above 0, at most 3600",
    "kube_request_timeout": "a number of seconds above 0, at most 3600",
    "interval_retention": "a whole number of seconds, at least REPORT_MAX_AGE",
    "report_retention": "a whole number of seconds from 60 to INTERVAL_RETENTION",
    "task_events": "true or false",
    "log_format": "human or json",
    "health_dir": "an absolute directory path",
    "health_interval": "a whole number of seconds from 1 to 300",
    "log_source": "kubernetes or file",
    "log_files": "an absolute path or glob pattern such as /var/log/traefik/access.log* (required by a worker that "
    "consumes FILE_QUEUE with LOG_SOURCE=file)",
    "file_queue": "fetch, or fetch.<name> with <name> of A-Z a-z 0-9 . _ - (at most 63 characters in all)",
    "file_queues": "a comma-separated list of fetch or fetch.<name> queue names",
}


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the variable and is safe to print."""


class Settings(BaseSettings):
    """What the scraper is told by its environment."""

    # allow_inf_nan=False: a timeout of "inf" or "nan" is a configuration error naming the
    # variable, not a crash later in a derived value.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, allow_inf_nan=False)

    platform_api_url: str = "http://platform.platform.svc.cluster.local:3000"
    """Base URL of the platform API (the original's default: the in-cluster service).
    Kept as a plain string with no trailing slash, so ``/api/v1/...`` joins cleanly
    (pydantic's URL types would add a ``/`` to a bare host)."""

    platform_internal_secret: SecretStr | None = None
    """Sent as ``x-internal-secret``. Optional here so that ``scan`` and the fetch side
    run without it; a process that sends reports refuses to start without it."""

    report_interval: int = 60
    """Seconds per report interval (the original's 60 s). Intervals are aligned to
    multiples of this since the epoch, so it must divide a day. The ledger keeps the
    value it was initialised with, and a worker or beat with another one stops at start:
    reports not yet delivered would go out under new Idempotency-Keys. Change it with
    ``init-ledger --force`` once no report is waiting or dead-lettered."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging verbosity, as in the original."""

    redis_url: str = "redis://localhost:6379/0"
    """The ledger. Celery's broker and result backend default to it too."""

    celery_broker_url: str | None = None
    """Broker, when it should live apart from the ledger (it may be less durable:
    the sweep rebuilds lost tasks from the ledger). Default: ``REDIS_URL``."""

    celery_result_backend: str | None = None
    """Result backend for the chord. Default: ``REDIS_URL``."""

    tunnel_domain: str = "t.lum.tools"
    """Tunnels are ``<one label>.<TUNNEL_DOMAIN>``."""

    traefik_namespace: str = "traefik"
    """Namespace of the Traefik pods (the original's)."""

    traefik_label_selector: str = "app.kubernetes.io/name=traefik"
    """Selects the Traefik pods; the Traefik Helm chart's label."""

    traefik_container: str = ""
    """Container to read. Empty: the one named ``traefik``, else the pod's first."""

    fetch_interval: int | None = None
    """Seconds between rounds (every pod listed and read). Default (also when empty, as
    docker-compose.yml passes it from an empty ``.env`` line): the smaller of 10 and
    ``REPORT_INTERVAL``. A pod whose log grows by more than about 1,000 lines a round is
    also read between rounds, every ``FETCH_MIN_INTERVAL`` at most (``app/pace.py``): the
    kubelet renames a 10 Mi log away at its next 10 s check, and the lines written since
    the last read are then unreachable."""

    fetch_min_interval: float = 1.0
    """Seconds between two reads of a busy pod at least. Between rounds, a pod whose log
    grows is read again after about 1,000 new lines (``app/pace.py``), but not sooner
    than this. The kubelet serves only the current log file and renames it away once it
    reaches ``containerLogMaxSize`` (10 Mi by default, checked every 10 s): the lines
    written after the last read before that are unreachable, so a busy pod read every
    second loses at most about a second of lines at a rotation (each read also re-reads
    ``LOG_REORDER_WINDOW`` plus up to a second of log, hence not less). A pod that grows
    by less than 1,000 lines per ``FETCH_INTERVAL`` is read by the rounds only."""

    follow_max_pods: int = 16
    """Pods one fetch worker process holds a ``follow=true`` log stream open for, at most
    (``app/follow.py``); 0 turns following off (every pod is read by the rounds and the
    pace). A read without ``follow`` sees only the current log file, so the lines written
    after the last read before the kubelet renames a full file away (10 Mi, checked every
    10 s) are lost; a follow stream reads the renamed file to its end first, and loses
    none. Each costs two threads, an open connection to the apiserver, a stream from the
    kubelet, 1 MiB read ahead, and while it counts the lines of its last
    ``LOG_REORDER_WINDOW`` (about 2 MB at 2,000 lines/s of 1 KB). 16: a Traefik deployment rarely has more busy pods than that, and two fetch
    workers cover 32."""

    follow_min_rate: float = 1.0
    """Lines per second a pod's log must grow by (measured between two reads) to be
    followed (``FOLLOW_MAX_PODS``). A pod read by the rounds loses, at each rotation, the
    lines of up to ``FETCH_INTERVAL``; at 1 line/s of about 1 KB a rotation comes every
    3 hours or so, and may lose 10 lines. Below it a stream would mostly sit idle."""

    fetch_max_bytes: int = 32 * 1024 * 1024
    """``limitBytes`` of one log read (32 MiB); the rest is read next round. Bounds a
    read's time; memory stays small because the read is streamed."""

    log_line_max_bytes: int = MAX_LINE_BYTES
    """Longest log line parsed, in bytes (16 MiB); a longer one is rejected as
    ``too_long`` (counted, not billed) and logged at ERROR with its pod and length.
    Traefik accepts request heads up to 1 MiB (Go's ``http.DefaultMaxHeaderBytes``;
    ``maxHeaderBytes`` from v3.2) and logs ``RequestPath`` whole; Go's JSON encoder
    writes ``<``, ``>``, ``&``, control bytes and invalid UTF-8 as 6-byte escapes, so a
    path can take 6 MiB of a line, and logged headers add more. A lower bound lets a
    client pad its URLs to move traffic unbilled. A read must hold a whole line, so
    ``FETCH_MAX_BYTES`` must exceed this by the timestamp's 64 bytes (the defaults keep
    a factor of 2). A fetch holds at most about twice this for one line."""

    fetch_time_limit: int = 120
    """Time limit of one fetch task, in seconds (a 32 MiB read takes a few). The read
    stops itself at it, committing nothing (the fetch worker's thread pool has no Celery
    time limit); on a prefork pool Celery's soft limit is the same, its hard limit 10 s
    later."""

    log_reorder_window: float = 1.0
    """Seconds a log line's stamp may be older than a line before it in the log. The
    runtime stamps stdout and stderr in separate readers (containerd: one goroutine per
    stream, stamp taken when the line is read), so a stderr line can land in the file
    after a stdout line stamped later: the skew is scheduling delay, milliseconds. A
    line more out of order than this is never read (the kubelet filters sinceTime per
    line). 1 s is a thousand times the usual skew and still covers a runtime stalled
    for most of a second; 2 s would double the cost for stalls that long. The cost:
    each read re-reads up to this plus one second of log (FETCH_MAX_BYTES must hold
    more than that), and the cursor keeps 16 bytes per line of the window (12 binary,
    base64'd): 32 KB at 2,000 lines/s."""

    terminating_read_interval: float = 1.0
    """Seconds between reads of a terminating Traefik pod by the pod watcher
    (``traefik-metrics-scraper watch``): it reads the pod as soon as its deletionTimestamp
    is set, then this often while Traefik drains its in-flight requests, and once more as
    soon as the container reports terminated. The pod object, and its log, goes about a
    second after the container exits, so the last read must be short: reading often
    while the pod drains keeps it so. At most ``FETCH_INTERVAL``."""

    report_max_age: int = 24 * 3600
    """Seconds after its interval was sealed that a report is still retried; older ones
    go to the dead-letter store (24 h: a day's outage is recoverable unattended). Counted
    from the sealing, not the interval's end, so an interval backfilled after an outage
    of the workers gets the whole time too."""

    seal_max_wait: int | None = None
    """Seconds a Traefik pod (or log file) whose log cannot be read (its reads fail: API
    errors, a node down, NO PROGRESS) may hold back the sealing of report intervals.
    While it holds them, ``seal_held_back_seconds{pod}`` names it; after that the
    intervals are sealed without it, with a WARNING naming it and the counters
    ``seal_forced_total`` and ``seal_forced_by_total{pod}``; its lines, once read, are reported as amendments. Default: 3 x ``REPORT_INTERVAL`` (three minutes with 60 s intervals):
    long enough for a pod restart or an API hiccup to pass without amendments, short
    enough that one broken node delays the other pods' reports by minutes, not hours."""

    seal_clock_margin: float = 2.0
    """Seconds of clock skew allowed between Redis ``TIME`` (when a read started) and
    the kubelet's stamps (the node's clock): a read that reached the end of a pod's log
    at Redis time T is taken to hold every line stamped before T minus this margin minus
    ``LOG_REORDER_WINDOW``. NTP keeps nodes within milliseconds; 2 s also covers a read
    started while the runtime still held a line it had stamped. A larger margin delays
    every report by as much."""

    scraper_id: str = Field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or "default")
    """Names this deployment in idempotency keys, so two clusters never share one.
    Default: the pod's namespace (``POD_NAMESPACE``), else ``default``. Kept by the
    ledger as ``REPORT_INTERVAL`` is, for the same reason."""

    redis_key_prefix: str = "tms"
    """Every Redis key of the ledger starts with this and a colon."""

    start_at: str | None = None
    """Earliest log line time that is counted: an ISO 8601 time with a zone, read to the
    nanosecond (``start_at_ns``). Default: when the ledger is first initialised, so a new
    deployment never bills what the old one already billed."""

    visibility_timeout: int = 3600
    """Redis broker redelivery time for unacknowledged tasks, in seconds (Celery's
    default). Must exceed the longest task and the longest retry countdown, or a
    task would be delivered twice."""

    report_auto_retries: int = 5
    """Celery retries of a report before it is parked in the due set."""

    report_retry_max_delay: int = 60
    """Cap, in seconds, of one automatic retry's countdown (Retry-After included);
    far below the visibility timeout."""

    report_due_max_delay: int = 900
    """Cap, in seconds, of the delay between attempts of a parked report (15 min)."""

    max_waiting_retries: int = 1000
    """Reports allowed in automatic retry at once, across all workers. Beyond it a
    failing report is parked at once, so no worker holds an unbounded number of
    waiting retry messages, however long the platform is down."""

    report_lease: int | None = None
    """Seconds an enqueued report belongs to its message until a worker receives it;
    then the worker holds it (``REPORT_HOLD_LEASE``). When it runs out (the message was
    lost, or the process that claimed it died before sending it) the sweep enqueues the
    report again; a copy that was only slow in the queue then finds it delivered, or
    busy, and sends nothing. An interval's reports are all queued when it is sealed, and
    while delivery keeps up the last of them waits up to one interval in the queue (at
    10,000 tunnels a minute, about 45 s): a shorter lease would have the sweep queue
    copies of reports that are only waiting their turn. Default: ``REPORT_INTERVAL`` (at
    most 600) plus twice ``REPORT_HOLD_LEASE``."""

    report_hold_lease: int = 20
    """Seconds a report's lease lasts while a live worker holds its message (waiting in
    its prefetch, waiting for a retry's countdown, or running): the worker's main process
    renews it every third of this. A worker that dies (killed, or its broker connection
    reset) stops renewing, and the sweep sends the report again this long after."""

    report_probe_interval: int = 15
    """Seconds after the last report was parked, with no success since, before the sweep
    sends the parked report due soonest, one attempt: a probe of the platform, as a
    circuit breaker's half-open state. The platform's next success makes every parked
    report due (``wake.lua``), but a report parked after the last success, when nothing
    else is being sent (a quiet hour, or the end of a backlog), would otherwise wait its
    own backoff, up to ``REPORT_DUE_MAX_DELAY``, from a platform that answers. The sweep
    runs every 3 x ``FETCH_INTERVAL``, so a probe goes at the first sweep after this; 15 s:
    at most one a sweep at the default ``FETCH_INTERVAL``, one request on a platform that
    is down. Never before a ``Retry-After`` the platform gave."""

    platform_connect_timeout: float = 5.0
    """Seconds to connect to the platform."""

    platform_read_timeout: float = 30.0
    """Seconds to wait for the platform's answer."""

    kube_request_timeout: float = 30.0
    """Seconds for one Kubernetes API call (connect, and each read of a stream)."""

    interval_retention: int = 7 * 24 * 3600
    """Seconds the history of an interval (one line: its tunnels, bytes in and out,
    requests) is kept after it ended (7 days), for audit; never less than
    ``REPORT_MAX_AGE``. An interval's per-tunnel counts go once all its reports are
    final; what each tunnel was sent stays ``REPORT_RETENTION``."""

    report_retention: int = 3600
    """Seconds the record of a delivered (or skipped) report is kept after its
    interval's last delivery (1 h): its sums, attempts, the platform's user id and when,
    about 110 bytes a report in its interval's ``done`` hash. At 10,000 tunnels a minute
    that is 65 MB an hour: the default keeps the ledger's Redis (``maxmemory`` 256mb in
    ``k8s/base/redis.yaml``) under half full. A delivered report is never sent again
    whether its record is kept or not."""

    task_events: bool = False
    """Whether workers send Celery task events (``worker_send_task_events``) and senders
    the ``task-sent`` events (``task_send_sent_event``), for monitors. Off: nothing reads
    them unless Flower runs, and Flower turns the workers' events on by itself (its
    ``enable_events`` broadcast, every few seconds) while it runs. On: also the
    ``task-sent`` events, and events from a worker's start."""

    log_format: Literal["human", "json"] = "human"
    """How log records are written: ``human`` is the original's ``[INFO] message``;
    ``json`` is one JSON object a line (``time``, ``level``, ``logger``, ``message``, and
    ``pod``, ``interval``, ``tunnel``, ``outcome``... where the code gives them), Celery's
    own records included. The worker's start-up banner is printed, not logged: run
    ``celery -A app --quiet worker`` in JSON mode. Secrets are masked in both formats."""

    health_dir: str = "/tmp/health"
    """Directory of the files the Kubernetes probes read (``app/health.py``): ``live`` and
    ``ready`` (workers), ``beat`` (beat), each holding the unix time until which the
    process counts as alive or ready."""

    health_interval: int = 15
    """Seconds between the pings a worker sends itself on its own direct queue to prove
    it still consumes (``app/health.py``); the liveness and readiness budgets derive from
    it and from the task time limits."""

    log_source: Literal["kubernetes", "file"] = "kubernetes"
    """Where the access log is read from. ``kubernetes``: the Traefik pods' logs through
    the Kubernetes API (Traefik writes its access log to stdout). ``file``: files on the
    worker's own disk matching ``LOG_FILES``, for a Traefik outside Kubernetes that writes
    its access log to a file (``accessLog.filePath``); each file is identified by its first
    line and read from a byte offset (``app/filesource.py``)."""

    log_files: str = ""
    """With ``LOG_SOURCE=file``: the access-log files to read, an absolute path or glob,
    rotated files included (``/var/log/traefik/access.log*``), so lines written to a file
    after it was renamed are still read. Compressed files (``.gz``...) are skipped with a
    note: compress with ``delaycompress``. A worker that consumes ``FILE_QUEUE`` refuses
    to start without it; beat and report workers do not need it."""

    file_queue: str = "fetch"
    """With ``LOG_SOURCE=file``: the queue of this host's file work. A fetch must run
    where the files are: on one host keep ``fetch``; with several hosts give each its
    own (``fetch.<host>``), and run each host's worker with ``-Q fetch.<host>``. beat
    sends each listed queue's plan there (``FILE_QUEUES``), and that plan sends its
    fetches and its merge to the same queue."""

    file_queues: str = ""
    """With ``LOG_SOURCE=file``, on beat (and any process that sends to several hosts):
    every host's ``FILE_QUEUE``, comma-separated; beat sends one plan per queue each
    ``FETCH_INTERVAL``. Default: ``FILE_QUEUE``."""

    @field_validator("platform_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("bad url")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in url")  # the secret goes in its own header
        if parts.port == 0:  # urlsplit's port raises ValueError on one outside 0-65535
            raise ValueError("bad port")
        from urllib3.exceptions import LocationParseError
        from urllib3.util import parse_url  # what PlatformClient's pool parses it with

        try:
            host = parse_url(value).host or ""
            if not host.startswith("["):  # a name, or an IPv4 address: what the resolver gets
                host.encode("idna")  # an empty label (a..b), or one over 63 characters
        except (LocationParseError, UnicodeError) as e:  # a space, a control character
            raise ValueError("bad url") from e
        return value.rstrip("/")

    @field_validator("redis_url", "celery_broker_url", "celery_result_backend")
    @classmethod
    def _redis_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("bad url")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("bad url")
        _ = parts.port
        if parts.scheme != "unix" and not REDIS_DB_PATH.fullmatch(unquote(parts.path)):
            raise ValueError("bad database")
        # Celery's own spellings of ssl_cert_reqs (CERT_REQUIRED...) are fine on its URLs;
        # redis-py, which reads REDIS_URL (the ledger), knows the lower-case ones only.
        checked = value if info.field_name == "redis_url" else _CELERY_CERT_REQS.sub(_lower_cert_reqs, value)
        if not _redis_py_takes(checked):
            raise ValueError("bad url")
        return value

    @field_validator("fetch_interval", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("platform_internal_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Blanks only are a mistake (every report would be refused 401), not a secret: as
        # unset. A secret with content is kept as given, blanks around it included.
        if value is not None and not value.get_secret_value().strip():
            return None
        # It goes in a header: http.client refuses a line break in one ("Invalid header
        # value", with the value in the message), so every report would fail. A secret
        # read from a file often ends with a newline.
        # RFC 9110 5.5: a field value holds no control character but a tab.
        if value is not None and any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value.get_secret_value()):
            raise ValueError("control character")
        # http.client encodes a header value as Latin-1: any other character made every
        # report fail with UnicodeEncodeError, and the sweep send it again for ever (a review).
        if value is not None and not all(ord(c) < 256 for c in value.get_secret_value()):
            raise ValueError("not latin-1")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("health_dir")
    @classmethod
    def _absolute_dir(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "\n\r\t"):
            raise ValueError("not absolute")
        return value.rstrip("/") or "/"

    @field_validator("log_source", mode="before")
    @classmethod
    def _source(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_files")
    @classmethod
    def _files(cls, value: str) -> str:
        value = value.strip()
        if value and (not value.startswith("/") or any(c in value for c in "\n\r\t\0")):
            raise ValueError("not absolute")
        return value

    @field_validator("file_queue")
    @classmethod
    def _file_queue(cls, value: str) -> str:
        value = value.strip()
        if not FILE_QUEUE.match(value):
            raise ValueError("bad queue")
        return value

    @field_validator("file_queues")
    @classmethod
    def _file_queues(cls, value: str) -> str:
        names = [q.strip() for q in value.split(",") if q.strip()]
        if value.strip() and (not names or not all(FILE_QUEUE.match(q) for q in names)):
            raise ValueError("bad queue")
        return ",".join(dict.fromkeys(names))

    @field_validator("tunnel_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return normalise_domain(value)  # ValueError: "is not valid; expected a DNS name..."

    @field_validator("traefik_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError("bad namespace")
        return value

    @field_validator("traefik_label_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        # labels.Parse takes "" (every pod of the namespace: not only Traefik's), and takes
        # tabs and line breaks as spaces; neither is meant here.
        if not value.strip(" ") or any(c in value for c in "\n\r\t"):
            raise ValueError("bad selector")
        # On the value as set, so that the position it names is the user's; the spaces
        # around it are the lexer's whitespace (only those: str.strip() would also take
        # characters the API server reads as part of a key).
        problem = label_selector_problem(value)
        if problem is not None:  # it names a position, never the text (see _describe)
            raise PydanticCustomError("label_selector", "{problem}", {"problem": problem})
        return value.strip(" ")

    @field_validator("traefik_container")
    @classmethod
    def _container(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError("bad container")
        return value

    @field_validator("scraper_id", "redis_key_prefix")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not SAFE_ID.match(value):
            raise ValueError("bad id")
        return value

    @field_validator("start_at", mode="before")
    @classmethod
    def _start_at_given_as_a_time(cls, value: object) -> object:
        # Settings(start_at=<an aware datetime>) in code: its ISO text (naive: no zone, refused).
        return value.isoformat() if isinstance(value, datetime) else value

    @field_validator("start_at")
    @classmethod
    def _start_at(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_time_ns(value)  # ValueError: a zone, ISO 8601, 1970 .. 2262
        return value.strip()

    @model_validator(mode="after")
    def _ranges(self) -> Settings:
        line_max_ok = LINE_BOUND_MIN <= self.log_line_max_bytes <= LINE_BOUND_MAX
        fetch_max_ok = 4096 <= self.fetch_max_bytes <= 1 << 30
        report_ok = 1 <= self.report_interval <= 86400 and 86400 % self.report_interval == 0
        checks = {
            "report_interval": report_ok,
            # (against REPORT_INTERVAL only when it is in range: one error, not two)
            "fetch_interval": self.fetch_interval is None
            or 1 <= self.fetch_interval <= (self.report_interval if report_ok else 86400),
            "fetch_min_interval": 0.1 <= self.fetch_min_interval <= max(self.fetch_every, 1),
            "follow_max_pods": 0 <= self.follow_max_pods <= 256,
            "follow_min_rate": 0 <= self.follow_min_rate <= 1_000_000,
            "fetch_max_bytes": fetch_max_ok,
            "log_line_max_bytes": line_max_ok,
            # Against each other only when each is in its own range: one error, not two.
            "fetch_max_bytes_holds_a_line": not (fetch_max_ok and line_max_ok)
            or self.fetch_max_bytes > self.log_line_max_bytes + LINE_PREFIX_ROOM,
            "fetch_time_limit": 5 <= self.fetch_time_limit <= 3600,
            "log_reorder_window": 0.001 <= self.log_reorder_window <= 60,
            # (against 1 s while FETCH_INTERVAL itself is out of range: one error, not two)
            "terminating_read_interval": 0.1 <= self.terminating_read_interval <= max(self.fetch_every, 1),
            "report_max_age": self.report_max_age >= 60,
            "seal_max_wait": self.seal_max_wait is None or 1 <= self.seal_max_wait <= self.interval_retention,
            "seal_clock_margin": 0 <= self.seal_clock_margin <= 300,
            "report_auto_retries": 0 <= self.report_auto_retries <= 20,
            "report_retry_max_delay": 1 <= self.report_retry_max_delay <= 3600,
            "report_due_max_delay": 1 <= self.report_due_max_delay <= 86400,
            "max_waiting_retries": 1 <= self.max_waiting_retries <= 100000,
            "report_lease": self.report_lease is None or 1 <= self.report_lease <= 86400,
            "report_hold_lease": 3 <= self.report_hold_lease <= 3600,
            "report_probe_interval": 1 <= self.report_probe_interval <= 3600,
            # At most an hour, as `check --timeout`: a socket timeout beyond about 1e9 s
            # overflows the event loop's time_t (OverflowError on every request).
            "platform_connect_timeout": 0 < self.platform_connect_timeout <= 3600,
            "platform_read_timeout": 0 < self.platform_read_timeout <= 3600,
            "kube_request_timeout": 0 < self.kube_request_timeout <= 3600,
            "interval_retention": self.interval_retention >= self.report_max_age,
            "health_interval": 1 <= self.health_interval <= 300,
        }
        # Checks against other variables, made only when those are in range: one bad value
        # gives one line, naming it, not a second about a variable the user did not set.
        if checks["interval_retention"]:
            checks["report_retention"] = 60 <= self.report_retention <= self.interval_retention
        if all(checks[name] for name in ("report_interval", "fetch_time_limit", "report_retry_max_delay", "report_lease",
                                         "report_hold_lease", "platform_connect_timeout", "platform_read_timeout")):
            checks["visibility_timeout"] = self.visibility_timeout > 2 * max(
                self.fetch_time_limit + 10, self.report_retry_max_delay, self.lease_seconds, self.report_time_limit)
        # kombu, Celery's broker, takes no ?option on a redis:// or rediss:// URL but ssl_*:
        # any other (redis-py's own included) is "TypeError: Connection._init_params() got an
        # unexpected keyword argument" when a worker starts. REDIS_URL is the broker while
        # CELERY_BROKER_URL is unset, and may carry redis-py's options then only.
        broker = urlsplit(self.broker_url)
        if broker.scheme != "unix" and any(not key.startswith("ssl_") for key, _ in parse_qsl(broker.query)):
            checks["celery_broker_url" if self.celery_broker_url is not None else "redis_url_as_broker"] = False
        # Celery's Redis result backend refuses a rediss:// URL without ssl_cert_reqs
        # ("A rediss:// URL must have parameter ssl_cert_reqs": a traceback at worker start),
        # and its broker takes it for no certificate check; redis-py (the ledger) checks
        # the certificate by default. So a rediss:// URL that Celery reads must say it.
        for name, url, own in (("celery_broker_url", self.broker_url, self.celery_broker_url),
                               ("celery_result_backend", self.result_backend, self.celery_result_backend)):
            parts = urlsplit(url)
            if parts.scheme == "rediss" and dict(parse_qsl(parts.query)).get("ssl_cert_reqs") not in CERT_REQS:
                checks[name if own is not None else "redis_url_tls_for_celery"] = False
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("out of range: " + ",".join(bad))
        return self

    # Derived values -------------------------------------------------------------

    @property
    def start_at_ns(self) -> int | None:
        """``START_AT`` in nanoseconds since the epoch, exact (``app.model.parse_time_ns``)."""
        return None if self.start_at is None else parse_time_ns(self.start_at)

    @property
    def fetch_every(self) -> int:
        """Seconds between log reads, the default applied."""
        return self.fetch_interval or min(10, self.report_interval)

    @property
    def file_plan_queues(self) -> list[str]:
        """The queues beat sends the file source's plans to, one per host: ``FILE_QUEUES``,
        default ``FILE_QUEUE``."""
        return [q for q in self.file_queues.split(",") if q] or [self.file_queue]

    @property
    def file_queue_names(self) -> list[str]:
        """The file source's queues this process may send to or consume (every host's and
        its own), all declared to Celery (``task_create_missing_queues`` is off)."""
        return list(dict.fromkeys([*self.file_plan_queues, self.file_queue]))

    @property
    def broker_url(self) -> str:
        """The broker's Redis, as a redis-py URL (``celery_url`` gives Celery's form)."""
        return self.celery_broker_url or self.redis_url

    @property
    def result_backend(self) -> str:
        """The result backend's Redis, as a redis-py URL (``celery_url`` gives Celery's form)."""
        return self.celery_result_backend or self.redis_url

    @property
    def report_time_limit(self) -> int:
        """Hard limit of one report attempt: the HTTP timeouts and some slack."""
        return int(self.platform_connect_timeout + self.platform_read_timeout) + 15

    @property
    def lease_seconds(self) -> int:
        """How long an enqueued report is owned by its message before a worker receives
        it (after that, ``report_hold_lease``, renewed by the holder)."""
        if self.report_lease is not None:
            return self.report_lease
        return min(self.report_interval, 600) + 2 * self.report_hold_lease

    @property
    def seal_wait(self) -> int:
        """``SEAL_MAX_WAIT`` with its default (3 x ``REPORT_INTERVAL``) applied."""
        return self.seal_max_wait if self.seal_max_wait is not None else 3 * self.report_interval

    @property
    def sweep_merge_age(self) -> int:
        """An ended interval unsealed for this long is merged by the sweep. Two rounds:
        the chord's merge normally seals it first. The sweep's merge seals only what the
        watermark allows (a line read later for a sealed interval is an amendment), so
        running it early is harmless. Not longer: a round whose fetch was held by a worker
        that died never runs its merge."""
        return 2 * self.fetch_every

    def require_secret(self) -> str:
        """The platform secret, for a process that sends reports."""
        if self.platform_internal_secret is None:
            raise ConfigError(
                "config error: PLATFORM_INTERNAL_SECRET is not set (or blank); expected a non-empty string "
                "(the platform's internal secret, e.g. from Secret traefik-metrics-scraper-secrets)"
            )
        return self.platform_internal_secret.get_secret_value()


def _redis_py_takes(url: str) -> bool:
    """Whether redis-py takes ``url``: its own parsing (``from_url``), then one connection
    object built from it, never connected (a connection's constructor opens no socket and
    resolves no name; it is disconnected anyway). Catches what redis-py would otherwise
    raise only at the first command: a ``?db=``/``?socket_timeout=`` that is not a number
    (ValueError), an option it does not know (TypeError), a bad ``?protocol=`` or
    ``?ssl_cert_reqs=`` (RedisError), an option that must be an object (``?cache_config=``:
    AttributeError). Any exception is a refusal, so that none reaches the user as a
    traceback; its text is dropped: it may quote the URL."""
    try:
        pool = ConnectionPool.from_url(url)
        connection = pool.connection_class(**pool.connection_kwargs)
    except Exception:  # noqa: BLE001 - whatever redis-py raises, the URL is refused by name
        return False
    connection.disconnect()
    pool.disconnect()
    return True


# The model-level checks whose line is not "<VARIABLE> is not valid; expected <EXPECTED>":
# each names every variable involved and how to fix it.
_RELATIONS = {
    "fetch_max_bytes_holds_a_line": (
        f"FETCH_MAX_BYTES is not above LOG_LINE_MAX_BYTES + {LINE_PREFIX_ROOM}; expected FETCH_MAX_BYTES "
        f"(default {Settings.model_fields['fetch_max_bytes'].default >> 20} MiB) above LOG_LINE_MAX_BYTES "
        f"(default {MAX_LINE_BYTES >> 20} MiB) + {LINE_PREFIX_ROOM}, so that one read holds the longest line and "
        "its timestamp: raise FETCH_MAX_BYTES or lower LOG_LINE_MAX_BYTES"
    ),
    "redis_url_tls_for_celery": (
        "REDIS_URL is a rediss:// URL without ?ssl_cert_reqs, which Celery needs (REDIS_URL is its broker and "
        "result backend while CELERY_BROKER_URL / CELERY_RESULT_BACKEND are unset); expected "
        "?ssl_cert_reqs=required (or optional, none) on the URL"
    ),
    "redis_url_as_broker": (
        "REDIS_URL has a ?option that Celery's broker does not take (REDIS_URL is the broker while "
        "CELERY_BROKER_URL is unset); expected no ?option but ssl_* on a redis:// or rediss:// broker URL "
        "(kombu refuses any other): drop it, or set CELERY_BROKER_URL to a URL without it"
    ),
}


def _describe(error: ValidationError) -> str:
    """One line per bad variable, with no input value in it."""
    lines = []
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        loc = item.get("loc") or ()
        names = [str(loc[0])] if loc else []
        if not names:
            # A model-level check: its message lists the field names, and nothing else.
            msg = item.get("msg", "")
            names = msg.split("out of range: ", 1)[1].split(",") if "out of range: " in msg else ["settings"]
        for name in names:
            if name in _RELATIONS:
                lines.append(f"config error: {_RELATIONS[name]}")
                continue
            problem = {
                "int_parsing": "is not a whole number",
                "float_parsing": "is not a number",
                "literal_error": "is not a known value",
                "datetime_from_date_parsing": "is not a time",
                "datetime_parsing": "is not a time",
                "missing": "is missing",
                "bool_parsing": "is not true or false",
                # app.labels' reason: a position in the text, none of the text itself
                "label_selector": f"is not a label selector the API server takes ({item.get('msg', '')})",
            }.get(item.get("type", ""), "is not valid")
            lines.append(f"config error: {name.upper()} {problem}; expected {EXPECTED.get(name, 'a valid value')}")
    return "\n".join(dict.fromkeys(lines))


def load_settings() -> Settings:
    """Build the settings from the environment, or raise ConfigError with a safe message."""
    try:
        return Settings()
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded once."""
    return load_settings()


def settings_or_exit() -> Settings:
    """For entry points: the settings, or one line on stderr and exit status 2."""
    try:
        return get_settings()
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None


def celery_url(url: str, db_key: str) -> str:
    """``url`` (a redis-py URL: ``redis://``, ``rediss://`` or ``unix://``) in the form
    Celery takes: kombu and Celery's Redis backend know no ``unix://`` scheme (``KeyError:
    'No such transport: unix'``) and read a Unix socket as ``redis+socket:///path``, with
    the database as ``virtual_host`` for the broker and ``db`` for the result backend
    (``db_key``); redis-py's ``?db=N`` is renamed so. Other URLs are returned unchanged."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    query = urlencode([(db_key if key == "db" else key, value) for key, value in parse_qsl(parts.query)])
    # Not urlunsplit: with no host it writes "redis+socket:/path", which Celery does not
    # take for a URL.
    return f"redis+socket://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
