"""The Prometheus exporter translates the ledger's counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from app.ledger import Ledger
from app.metrics import LedgerCollector


def test_metrics_reflect_the_ledger(r):
    ledger = Ledger(r, "m", 60)
    ledger.initialise(0)
    ledger.incr({"lines_read": 7, "lines_counted": 4, "ignored:other_host": 2, "rejected:invalid_json": 1,
                 "reports_delivered": 3, "gaps": 1, "fetch_errors:kube": 2})
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger))
    text = generate_latest(registry).decode()
    assert "traefik_metrics_scraper_lines_read_total 7.0" in text
    assert "traefik_metrics_scraper_lines_counted_total 4.0" in text
    assert 'traefik_metrics_scraper_ignored_lines_total{reason="other_host"} 2.0' in text
    assert 'traefik_metrics_scraper_rejected_lines_total{reason="invalid_json"} 1.0' in text
    assert 'traefik_metrics_scraper_reports_total{outcome="delivered"} 3.0' in text
    assert 'traefik_metrics_scraper_fetch_errors_total{kind="kube"} 2.0' in text
    assert "traefik_metrics_scraper_gaps_total 1.0" in text
    assert "traefik_metrics_scraper_reports_waiting 0.0" in text
    assert "traefik_metrics_scraper_dead_letters 0.0" in text
