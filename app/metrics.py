"""Prometheus metrics of the pipeline, read from the ledger at each scrape.

The counters live in Redis (the ``stats`` hash), so they are right across any number of
worker processes; this exporter only translates them. ``lines_read`` becomes
``traefik_metrics_scraper_lines_read_total``; ``ignored:<reason>`` becomes
``traefik_metrics_scraper_ignored_lines_total{reason="<reason>"}``, and so on.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.ledger import Ledger

NS = "traefik_metrics_scraper"
# stats keys with a ":<label>" part -> (metric, label name, help)
LABELLED = {
    "ignored": ("ignored_lines", "reason", "Log lines skipped as not tunnel traffic, by reason"),
    "rejected": ("rejected_lines", "reason", "Malformed log lines skipped, by reason"),
    "fetch_errors": ("fetch_errors", "kind", "Fetches that failed and will be retried next round"),
}
HELP = {
    "lines_read": "Log lines consumed",
    "lines_counted": "Access-log lines counted for a tunnel",
    "bytes_in": "Request body bytes counted (RequestContentSize)",
    "bytes_out": "Response body bytes counted (DownstreamContentSize)",
    "requests": "Tunnel requests counted",
    "gaps": "Log spans that may be lost (rotation past the cursor, previous log gone)",
    "no_progress": "Reads that could not get past one second of log (raise FETCH_MAX_BYTES)",
    "fetch_conflicts": "Fetches that lost the cursor race to another fetch (nothing committed)",
    "fetch_restarted": "Fetches that saw the container change during the read (nothing committed)",
    "pods_without_access_lines": "Pods warned about for showing no access-log lines",
    "pods_with_bad_timestamps": "Pods warned about for log lines whose timestamp cannot be read",
}


class LedgerCollector(Collector):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator:
        stats = self.ledger.stats()
        families: dict[str, CounterMetricFamily] = {}
        for key, value in sorted(stats.items()):
            head, _, label = key.partition(":")
            if label and head in LABELLED:
                name, label_name, doc = LABELLED[head]
                fam = families.setdefault(name, CounterMetricFamily(f"{NS}_{name}", doc, labels=[label_name]))
                fam.add_metric([label], value)
            elif head.startswith("reports_"):
                fam = families.setdefault(
                    "reports", CounterMetricFamily(f"{NS}_reports", "Report outcomes", labels=["outcome"])
                )
                fam.add_metric([head.removeprefix("reports_")], value)
            elif not label:
                yield CounterMetricFamily(f"{NS}_{key}", HELP.get(key, key.replace("_", " ")), value=value)
        yield from families.values()
        yield GaugeMetricFamily(f"{NS}_reports_waiting", "Reports not yet delivered (queued, due or parked)",
                                value=self.ledger.due_count())
        yield GaugeMetricFamily(f"{NS}_dead_letters", "Reports in the dead-letter store",
                                value=len(self.ledger.dead_letters()))
