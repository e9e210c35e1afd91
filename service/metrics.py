"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process).

No label ever carries a user or item id: routes are labelled by their template (``/recommend/{user_id}``),
unmatched paths by ``<unmatched>``, so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

# `*_created` timestamp series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()

# Sub-millisecond resolution at the fast end (cache hits, the floor endpoint), seconds at the slow end.
_LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class ServiceMetrics:
    """Every metric the service exports, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hashrec_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "hashrec_http_request_duration_seconds",
            "HTTP request latency (first byte of the request to the end of the response)",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "hashrec_stage_duration_seconds",
            "Model stage latency per call (recall = Hamming top-C, rerank = continuous re-rank + top-k, "
            "model = the whole model call as seen from the event loop, thread hand-off included)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "hashrec_model_batch_users",
            "Users per Retriever call (concurrent requests are micro-batched into one call)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.cache = Counter(
            "hashrec_cache_requests",
            "Cache look-ups and writes by backend and result (hit, miss, error, skipped = breaker open, "
            "bypassed = a cold cache's look-up answered as a miss without asking, ok)",
            ["backend", "op", "result"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "hashrec_cache_breaker_open", "1 while the cache circuit breaker is open", registry=r
        )
        self.fallbacks = Counter(
            "hashrec_fallbacks",
            "Answers not produced by the model for the user, by reason",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "hashrec_bundle_reloads", "Bundle reload attempts by result", ["result"], registry=r
        )
        self.shed = Counter(
            "hashrec_shed_requests",
            "Requests answered 503 instead of computed, by reason (inflight = too many requests in progress in "
            "this worker, deadline = waited past its deadline, exports = too many exports running)",
            ["reason"],
            registry=r,
        )
        self.inflight = Gauge("hashrec_inflight_requests", "Requests in progress in this worker", registry=r)
        self.exported_rows = Counter(
            "hashrec_export_rows", "Rows streamed by POST /candidates/export", registry=r
        )
        self.bundle = Info("hashrec_bundle", "The bundle version being served", registry=r)

    def set_bundle(self, version: str, index_type: str, n_items: int, n_users: int, bits: int) -> None:
        """Record the served bundle (an info metric: one series whose labels are the current values)."""
        self.bundle.info(
            {
                "version": version,
                "index_type": index_type,
                "items": str(n_items),
                "users": str(n_users),
                "bits": str(bits),
            }
        )
