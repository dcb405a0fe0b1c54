"""Prometheus metrics of one app instance (own registry: two apps never collide)."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "llmemb_request_duration_seconds", "HTTP request latency by route", ["method", "route", "status"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram(
            "llmemb_queue_wait_seconds", "time a text waits in the batch queue", buckets=WAIT_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "llmemb_batch_size", "texts per forward pass", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "llmemb_batch_tokens", "padded tokens per forward pass", buckets=TOKEN_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "llmemb_inference_seconds", "duration of one forward pass (LLM, PCA, adapter)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.model_restarts = Counter("llmemb_model_restarts_total", "times the model process ended and was "
                                      "started again", registry=r)
        self.queue_depth = Gauge("llmemb_queue_depth", "texts waiting for the model", registry=r)
        self.rejected = Counter("llmemb_rejected_total", "requests refused before work", ["reason"], registry=r)
        self.cache_hits = Counter("llmemb_cache_hits_total", "vectors found in the cache", ["layer"], registry=r)
        self.cache_misses = Counter("llmemb_cache_misses_total", "vectors not in the cache", registry=r)
        self.cache_errors = Counter("llmemb_cache_errors_total", "failed Redis operations", ["op"], registry=r)
        self.redis_up = Gauge("llmemb_redis_up", "1 while Redis answers", ["role"], registry=r)
        self.catalogue_items = Gauge("llmemb_catalogue_items", "recommendable items", registry=r)
        self.catalogue_version = Gauge("llmemb_catalogue_version", "version of the catalogue snapshot", registry=r)
        self.in_flight = Gauge("llmemb_requests_in_flight", "HTTP requests being answered", registry=r)
        self.tokens = Counter("llmemb_tokens_total", "prompt tokens sent to the model (after the cache)", registry=r)
        self.build_info = Gauge("llmemb_build_info", "1, labelled with what this process serves",
                                ["fingerprint", "base_model", "method", "format_version"], registry=r)
        ProcessCollector(registry=r)   # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info
        self.catalogue_lost = Gauge("llmemb_catalogue_lost", "1 while the shared catalogue went backwards or "
                                    "vanished and the last good snapshot is served", registry=r)

    def watch_model_process(self, pid) -> None:
        """The model process's CPU seconds, memory and open files, as llmemb_model_process_* (the
        process_* metrics are the service's own process only); `pid()` names the current child."""
        ProcessCollector(namespace="llmemb_model", pid=pid, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

