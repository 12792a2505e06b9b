"""``traefik-metrics-scraper check``: is this deployment ready to meter? Without sending
any traffic or report.

One line per check, ``OK``, ``WARN``, ``FAIL`` or ``SKIP`` (a check that needs one that
failed), with what to do when it is not OK. Exit status 1 when any check FAILs, else 0.

1. ``redis``: the ledger's Redis answers, with ``appendonly yes``, ``appendfsync always``
   and ``maxmemory-policy noeviction`` (docs/design.md, invariant 6); ``broker`` too when
   ``CELERY_BROKER_URL`` names another one; ``ledger``: initialised or not yet, and a
   FAIL when it makes its reports under another ``REPORT_INTERVAL`` or ``SCRAPER_ID``
   than this environment's (workers and beat would stop at start).
2. ``kubernetes``: a config loads (in-cluster, else ``KUBECONFIG``).
3. ``permissions``: SelfSubjectAccessReviews for ``list``, ``watch`` and ``get`` on
   ``pods`` and ``get`` on ``pods/log`` in ``TRAEFIK_NAMESPACE``.
4. ``pods``: at least one pod matches ``TRAEFIK_LABEL_SELECTOR`` there.
5. ``access log``: the newest lines of one pod hold JSON access lines (not CLF, not only
   Traefik's own lines), classified by the parser (``app/parser.py``'s Aggregator).
6. ``tunnel domain``: some of them are for ``*.<TUNNEL_DOMAIN>``.
7. ``platform``: the host of ``PLATFORM_API_URL`` accepts a TCP connection (and a TLS
   handshake, for https): no HTTP request, so the secret is never sent. And
   ``PLATFORM_INTERNAL_SECRET`` is set (its value never shown): without it, an OK becomes
   a WARN, not a FAIL, because check cannot tell whether this environment is a report
   worker's. A worker consuming ``report`` refuses to start without the secret, but fetch
   workers and beat do not need it: the Kubernetes deployment gives it to the report
   workers only, and check runs in a fetch worker's pod.

With ``LOG_SOURCE=file``, checks 2-4 are replaced by ``files`` (``LOG_FILES`` matches
readable, uncompressed files) and 5-6 read the newest lines of the newest file instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from app.errors import KubeError
from app.parser import CLF_NO_HOST, NOT_A_TUNNEL, OTHER_HOST, Aggregator
from app.settings import Settings, settings_or_exit

NEWEST_LINES = 200
NEWEST_BYTES = 4 * 1024 * 1024
PODS_TRIED = 3  # pods whose newest lines are read until one has lines
PERMISSIONS = (("list", "pods", ""), ("watch", "pods", ""), ("get", "pods", ""), ("get", "pods", "log"))
DURABLE = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}


@dataclass(frozen=True)
class Result:
    status: str  # OK, WARN, FAIL, SKIP
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.name:<14} {self.detail}"
        return f"{text} -> {self.fix}" if self.fix and self.status != "OK" else text


def run(args: argparse.Namespace) -> int:
    """The ``check`` command (``--lines``, ``--timeout``, ``--skip``): prints the lines, returns the exit status."""
    settings = settings_or_exit()
    results = list(checks(settings, args.lines, args.timeout, frozenset(args.skip)))
    for r in results:
        print(r.line(), flush=True)
    failed = [r for r in results if r.status == "FAIL"]
    if failed:
        print(f"{len(failed)} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


KUBE_CHECKS = ("kubernetes", "permissions", "pods", "access log", "tunnel domain")


def checks(s: Settings, lines: int = NEWEST_LINES, timeout: float = 5.0, skip: frozenset[str] = frozenset()):
    """Every check's Result, in order. ``skip``: ``kubernetes`` (the Kubernetes API and
    what needs it) and/or ``platform``, checks this pod cannot make (the NetworkPolicy)."""
    yield from check_redis(s, timeout)
    if s.log_source == "file":
        yield from check_files(s, lines)
        yield from _platform_unless(s, timeout, skip)
        return
    if "kubernetes" in skip:
        for name in KUBE_CHECKS:
            yield Result("SKIP", name, "--skip kubernetes")
        yield from _platform_unless(s, timeout, skip)
        return
    source, result = kube_source(s)
    yield result
    if source is None:
        for name in KUBE_CHECKS[1:]:
            yield Result("SKIP", name, "needs the Kubernetes API")
    else:
        try:
            yield check_permissions(s, source)
            pods, result = check_pods(s, source)
            yield result
            if not pods:
                yield Result("SKIP", "access log", "needs a Traefik pod")
                yield Result("SKIP", "tunnel domain", "needs a Traefik pod")
            else:
                agg, result = check_access_log(s, source, pods, lines)
                yield result
                yield check_domain(s, agg)
        finally:
            source.close()
    yield from _platform_unless(s, timeout, skip)


def _platform_unless(s: Settings, timeout: float, skip: frozenset[str]):
    if "platform" in skip:
        yield Result("SKIP", "platform", "--skip platform")
    else:
        yield check_platform(s, timeout)


# Redis ----------------------------------------------------------------------------------------


def where(url: str) -> str:
    """A Redis URL without its credentials: scheme://host:port/db."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}/{db}"


def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def check_redis(s: Settings, timeout: float):
    r = _client(s.redis_url, timeout)
    try:
        r.ping()
    except redis.RedisError as e:
        yield Result("FAIL", "redis", f"{where(s.redis_url)}: {type(e).__name__}: {str(e)[:160]}",
                     "check REDIS_URL (host, port, database, password) and that Redis runs")
        yield Result("SKIP", "ledger", "needs Redis")
        r.close()
        return
    try:
        conf: dict[str, str] = {}
        for name in DURABLE:
            conf.update({k: str(v) for k, v in r.config_get(name).items()})
    except redis.ResponseError as e:  # CONFIG disabled or not allowed (managed Redis)
        yield Result("WARN", "redis", f"{where(s.redis_url)} answers, but its config cannot be read "
                     f"({str(e)[:80]})", "make sure it runs with appendonly yes, appendfsync always, "
                     "maxmemory-policy noeviction")
    else:
        wrong = {k: conf.get(k, "?") for k, v in DURABLE.items() if conf.get(k) != v}
        settings = ", ".join(f"{k} {conf.get(k, '?')}" for k in DURABLE)
        if wrong:
            yield Result("FAIL", "redis", f"{where(s.redis_url)} answers with {settings}",
                         "the ledger must not forget: set " + ", ".join(f"{k} {DURABLE[k]}" for k in wrong)
                         + " (a crash could otherwise bill lines twice, an eviction lose counts)")
        else:
            yield Result("OK", "redis", f"{where(s.redis_url)} answers with {settings}")
    from app.ledger import IDENTITY, Ledger, iso

    ledger = Ledger(r, s.redis_key_prefix, s.report_interval)
    record = ledger.init_record()
    problem = ledger.identity_problem(record, s.scraper_id, adopt=False) if record else None
    if problem is not None:
        yield Result("FAIL", "ledger", problem)
    elif record and (ahead := ledger.start_ahead_ns(record)) is not None:
        yield Result("WARN", "ledger", f"initialised under prefix {s.redis_key_prefix!r}, counting from "
                     f"{iso(ahead // 1_000_000_000)}, still ahead: lines logged before "
                     "then are never billed", "if that is not the cut-over time you meant, run "
                     "`traefik-metrics-scraper init-ledger --force --start-at <time>` before the workers start")
    elif record and all(name in record for name in IDENTITY):
        yield Result("OK", "ledger", f"initialised under prefix {s.redis_key_prefix!r}, reports made with "
                     f"REPORT_INTERVAL={record['report_interval']} and SCRAPER_ID={record['scraper_id']!r}")
    elif record:
        yield Result("OK", "ledger", f"initialised under prefix {s.redis_key_prefix!r} by an earlier version: the "
                     "REPORT_INTERVAL and SCRAPER_ID its reports are made under are not recorded yet (the first "
                     "worker or beat of this version records its own)")
    else:
        yield Result("WARN", "ledger", f"not initialised under prefix {s.redis_key_prefix!r}",
                     "the first plan initialises it (counting from then); with START_AT set, run "
                     "`traefik-metrics-scraper init-ledger`")
    r.close()
    if s.broker_url != s.redis_url:
        b = _client(s.broker_url, timeout)
        try:
            b.ping()
            yield Result("OK", "broker", f"{where(s.broker_url)} answers")
        except redis.RedisError as e:
            yield Result("FAIL", "broker", f"{where(s.broker_url)}: {type(e).__name__}: {str(e)[:160]}",
                         "check CELERY_BROKER_URL and that that Redis runs")
        finally:
            b.close()


# Kubernetes -----------------------------------------------------------------------------------


def kube_source(s: Settings):
    from app.kube import LogSource

    try:
        source = LogSource(s.traefik_namespace, s.traefik_label_selector, s.kube_request_timeout)
    except KubeError as e:
        return None, Result("FAIL", "kubernetes", str(e),
                            "run it in a fetch worker pod (its ServiceAccount token), or set KUBECONFIG")
    host = getattr(source.api_client.configuration, "host", "")
    return source, Result("OK", "kubernetes", f"API server {host}")


def check_permissions(s: Settings, source) -> Result:
    from app.kube import access_review

    missing, errors = [], []
    for verb, resource, sub in PERMISSIONS:
        what = f"{verb} {resource}{'/' + sub if sub else ''}"
        try:
            allowed, _reason = access_review(source, verb, resource, sub)
        except KubeError as e:
            errors.append(f"{what}: {e}")
            continue
        if not allowed:
            missing.append(what)
    granted = ", ".join(f"{v} {r}{'/' + x if x else ''}" for v, r, x in PERMISSIONS)
    if errors:
        return Result("FAIL", "permissions", "cannot ask the API server: " + "; ".join(errors)[:300],
                      "check the API server address and that it is reachable (NetworkPolicy egress)")
    if missing:
        return Result("FAIL", "permissions", f"missing in namespace {s.traefik_namespace}: {', '.join(missing)}",
                      f"apply the Role and RoleBinding of k8s/base/rbac.yaml in namespace {s.traefik_namespace} "
                      "(pods get/list/watch, pods/log get) for this ServiceAccount")
    return Result("OK", "permissions", f"{granted} in namespace {s.traefik_namespace}")


def check_pods(s: Settings, source):
    try:
        pods = source.list_pods()
    except KubeError as e:
        return [], Result("FAIL", "pods", str(e), "check TRAEFIK_NAMESPACE and the permissions above")
    if not pods:
        return [], Result("FAIL", "pods", f"no pod in namespace {s.traefik_namespace} matches "
                          f"{s.traefik_label_selector}", "check TRAEFIK_NAMESPACE and TRAEFIK_LABEL_SELECTOR "
                          f"(kubectl get pods -n {s.traefik_namespace} --show-labels)")
    names = ", ".join(p.name for p in pods[:5]) + (f" and {len(pods) - 5} more" if len(pods) > 5 else "")
    return pods, Result("OK", "pods", f"{len(pods)} pod(s) match {s.traefik_label_selector} in "
                        f"{s.traefik_namespace}: {names}")


def check_files(s: Settings, lines: int):
    """``files``, then ``access log`` and ``tunnel domain`` on the newest file's last lines."""
    from app.filesource import discover

    found = discover(s.log_files)
    if not found.files:
        skipped = [f"{len(v)} {k}" for k, v in (("compressed", found.compressed), ("unreadable", found.errors),
                                                  ("without a complete first line", found.unidentified)) if v]
        yield Result("FAIL", "files", f"LOG_FILES={s.log_files} matches no readable log file"
                     + (f" ({', '.join(skipped)})" if skipped else ""),
                     "point LOG_FILES at Traefik's accessLog.filePath (a glob such as /var/log/traefik/access.log*) "
                     "and mount it readable into this container")
        yield Result("SKIP", "access log", "needs a log file")
        yield Result("SKIP", "tunnel domain", "needs a log file")
        return
    names = ", ".join(f.path for f in found.files[:5]) + (f" and {len(found.files) - 5} more"
                                                          if len(found.files) > 5 else "")
    note = f"; {len(found.compressed)} compressed file(s) skipped" if found.compressed else ""
    yield Result("OK", "files", f"{len(found.files)} file(s) match {s.log_files}: {names}{note}")
    newest = max(found.files, key=lambda f: os.stat(f.path).st_mtime if os.path.exists(f.path) else 0)
    agg = Aggregator(s.tunnel_domain, s.log_line_max_bytes)
    with open(newest.path, "rb") as fh:
        fh.seek(max(0, newest.size - NEWEST_BYTES))
        data = fh.read(NEWEST_BYTES)
    tail = data.split(b"\n")
    if newest.size > NEWEST_BYTES:
        tail = tail[1:]  # the first piece is the end of a line read from its middle
    if tail and not tail[-1]:
        tail.pop()
    agg.feed_lines(tail[-lines:])
    yield _classify(agg, f"file {newest.path}", "set Traefik's accessLog.format to json and keep "
                    "accessLog.filePath pointing at LOG_FILES; check accessLog.filters; or send a request and "
                    "run check again")[1]
    yield check_domain(s, agg if agg.access_lines() else None)


def check_access_log(s: Settings, source, pods, lines: int):
    from app.kube import newest_lines

    agg = Aggregator(s.tunnel_domain, s.log_line_max_bytes)
    read_from = None
    for pod in sorted(pods, key=lambda p: p.name)[:PODS_TRIED]:
        ctr = pod.container(s.traefik_container)
        if ctr is None or not ctr.container_id:
            continue
        try:
            data = newest_lines(source, pod.name, ctr.name, lines, NEWEST_BYTES)
        except KubeError as e:
            return None, Result("FAIL", "access log", str(e), "check the permissions above (get pods/log)")
        lines_read = data.split(b"\n")
        if lines_read and not lines_read[-1]:
            lines_read.pop()  # the newline that ends the last line
        agg.feed_lines(lines_read)
        read_from = pod.name
        if agg.total:
            break
    if read_from is None:
        return None, Result("FAIL", "access log", "no listed pod has a running container "
                            f"{s.traefik_container or '(traefik or the first)'}", "check TRAEFIK_CONTAINER")
    return _classify(agg, f"pod {read_from}", "enable Traefik's access log as JSON on stdout: "
                     "accessLog.format=json, no accessLog.filePath, and check accessLog.filters; or send a "
                     "request and run check again")


def _classify(agg: Aggregator, where: str, fix: str):
    """(the aggregator when it holds JSON access lines, else None; the ``access log`` Result)."""
    seen = f"{where}: {agg.access_lines()} of its newest {agg.total} lines are JSON access lines"
    if agg.total == 0:
        return None, Result("FAIL", "access log", f"{where} has written no log line yet",
                            "send a request through Traefik and run check again")
    if agg.access_lines() > 0:
        return agg, Result("OK", "access log", seen)
    if agg.ignored.get(CLF_NO_HOST):
        return None, Result("FAIL", "access log", f"{where} writes its access log in CLF "
                            f"({agg.ignored[CLF_NO_HOST]} of {agg.total} lines): it has no Host and no request "
                            "size, so nothing can be metered", "set Traefik's accessLog.format to json")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted({**agg.ignored, **agg.rejected}.items()))
    return None, Result("FAIL", "access log", f"{seen} ({reasons})", fix)


def check_domain(s: Settings, agg: Aggregator | None) -> Result:
    if agg is None:
        return Result("SKIP", "tunnel domain", "needs JSON access lines")
    if agg.counted:
        return Result("OK", "tunnel domain", f"{agg.counted} of them for *.{agg.domain} "
                      f"({len(agg.subdomains)} tunnel(s))")
    others = ", ".join(f"{k} {agg.ignored[k]}" for k in (OTHER_HOST, NOT_A_TUNNEL) if agg.ignored.get(k))
    return Result("FAIL", "tunnel domain", f"none of the {agg.access_lines()} access lines is for "
                  f"*.{agg.domain} ({others or 'no host'})",
                  "check TUNNEL_DOMAIN, or send a request to a tunnel and run check again")


# Platform -------------------------------------------------------------------------------------


SECRET_FIX = ("set PLATFORM_INTERNAL_SECRET where report workers run (celery worker -Q report refuses to "
              "start without it; in Kubernetes only worker-report gets it, from Secret "
              "traefik-metrics-scraper-secrets); fetch workers and beat do not need it")


def check_platform(s: Settings, timeout: float) -> Result:
    """``platform``: its address answers, and ``PLATFORM_INTERNAL_SECRET`` is set (a WARN
    when it is not; its value is never shown)."""
    result = _platform_address(s, timeout)
    if s.platform_internal_secret is not None:
        return result
    return Result("WARN" if result.status == "OK" else result.status, result.name,
                  f"{result.detail}; PLATFORM_INTERNAL_SECRET is not set here",
                  f"{result.fix}; {SECRET_FIX}" if result.fix else SECRET_FIX)


def _platform_address(s: Settings, timeout: float) -> Result:
    parts = urlsplit(s.platform_api_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parts.scheme == "https":
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host) as tls:
                    return Result("OK", "platform", f"{target} accepts TLS ({tls.version()}, certificate "
                                  "verified); no request sent")
    except ssl.SSLError as e:
        return Result("FAIL", "platform", f"{target}: TLS: {e.reason or e}",
                      "check PLATFORM_API_URL's scheme and host, and the platform's certificate")
    except OSError as e:
        return Result("FAIL", "platform", f"{target}: {type(e).__name__}: {e.strerror or e}",
                      "check PLATFORM_API_URL and that the NetworkPolicy lets report workers reach the platform")
    return Result("OK", "platform", f"{target} accepts TCP connections (http); no request sent")
