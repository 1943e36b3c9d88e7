"""Prometheus metrics for `GET /metrics`, in a registry of their own (one per app, so tests and several apps in
one process never collide): requests and failures by route and status, queue size, batch tokens, and the
queue / tokenization / inference / request durations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("qzhou_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.failures = Counter("qzhou_request_failures", "HTTP requests answered with an error (status >= 400)",
                                ["route", "status"], registry=r)
        self.batch_failures = Counter("qzhou_batch_failures", "requests failed by the model", ["model"], registry=r)
        self.queue = Gauge("qzhou_queue_size", "inputs waiting or running in the batcher", ["model"], registry=r)
        self.batch_tokens = Histogram("qzhou_batch_tokens", "padded tokens per batch (rows x longest row)",
                                      ["model"], buckets=_TOKENS, registry=r)
        self.queue_seconds = Histogram("qzhou_queue_seconds", "time an input waited for its batch", ["model"],
                                       buckets=_SECONDS, registry=r)
        self.tokenize_seconds = Histogram("qzhou_tokenize_seconds", "tokenization time per request", ["model"],
                                          buckets=_SECONDS, registry=r)
        self.inference_seconds = Histogram("qzhou_inference_seconds", "model time per batch", ["model"],
                                           buckets=_SECONDS, registry=r)
        self.request_seconds = Histogram("qzhou_request_seconds", "time from request to response", ["route"],
                                         buckets=_SECONDS, registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.failures.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
