"""The node's Prometheus metrics (``GET /metrics``): queue depth, latency from receipt to result, films by
verdict, errors by reason, refusals, deliveries by outcome. Its own registry, so several nodes (tests) can live
in one process."""
from __future__ import annotations

import re
import threading

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (the API answers with it)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series only add noise here

MAX_REASONS = 32  # distinct error-reason labels kept; the rest count as "other" (labels must stay few)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def reason_label(error: str) -> str:
    """A bounded label for an error message: numbers, quoted text and parentheses dropped, 60 characters."""
    text = re.sub(r"\([^)]*\)|'[^']*'|\"[^\"]*\"", "", error or "")
    text = re.sub(r"[-+]?\d[\d.,x]*", "N", text)
    text = re.sub(r"\s+", " ", text).strip(" :;,.")
    return text[:60] or "unknown"


class Metrics:
    def __init__(self, queue_depth, pending_deliveries=None, model_threads=None):
        r = self.registry = CollectorRegistry()
        Gauge("cxrad_queue_depth", "Films received and waiting to be scored (in the spool)",
              registry=r).set_function(queue_depth)
        if pending_deliveries is not None:
            Gauge("cxrad_deliveries_pending", "Result objects waiting to be sent",
                  registry=r).set_function(pending_deliveries)
        if model_threads is not None:
            Gauge("cxrad_model_threads", "Batches the model scores at once, one torch thread each",
                  registry=r).set_function(model_threads)
        self.received = Counter("cxrad_films_received", "Films acknowledged, by source", ["source"], registry=r)
        self.refused = Counter("cxrad_films_refused", "Films refused (not acknowledged), by reason", ["reason"],
                               registry=r)
        self.films = Counter("cxrad_films", "Films recorded, by verdict", ["verdict"], registry=r)
        self.errors = Counter("cxrad_film_errors", "Films that could not be scored, by reason", ["reason"],
                              registry=r)
        self.latency = Histogram("cxrad_latency_seconds", "Time from receipt to the recorded result",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("cxrad_batch_films", "Films per model batch", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=r)
        self.deliveries = Counter("cxrad_deliveries", "Deliveries finished, by kind and outcome",
                                  ["kind", "outcome"], registry=r)
        for verdict in ("anomalous", "normal", "error"):
            self.films.labels(verdict)
        self._reasons: set[str] = set()
        self._lock = threading.Lock()

    def error(self, message: str) -> None:
        label = reason_label(message)
        with self._lock:
            if label not in self._reasons:
                if len(self._reasons) >= MAX_REASONS:
                    label = "other"
                else:
                    self._reasons.add(label)
        self.errors.labels(label).inc()

    def delivered(self, kind: str, state: str) -> None:
        self.deliveries.labels(kind, state).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
