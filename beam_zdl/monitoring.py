"""Prometheus metrics and a health check for the driver and the receiver.

``--metrics_port=N`` (on ``run_micro_batches`` and ``beam-zdl receive``) serves, on
every interface, in a thread of the process:

* ``/metrics`` — Prometheus' text exposition, written by the ``prometheus-client``
  library from its own registry (one per server, so two in a process never mix);
* ``/healthz`` — ``200`` while the loop keeps turning, ``503`` when it is stuck:
  the driver's loop beats at every plan, every completed batch and every idle check
  (a run with nothing to read is healthy); the receiver's at every poll that
  reached the broker and every seal. A heartbeat older than ``--health_timeout_s``
  means stuck. The body is JSON: ``status``, ``last`` (what beat last), ``age_s``,
  ``bound_s``.

The metric names and labels are listed in ``docs/monitoring.md``. Labels carry
topics, partitions, steps, modes and metric names, never a client setting: secrets
in ``--consumer_config`` never reach the exposition.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, make_wsgi_app)
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, Metric,
                                    SummaryMetricFamily)
from prometheus_client.registry import Collector

from beam_zdl.errors import ConfigError

__all__ = ["Heartbeat", "MetricsServer", "DriverMetrics", "ReceiverCollector"]

_LOGGER = logging.getLogger(__name__)

# No *_created series beside every counter and histogram: they double the exposition and
# nobody alerts on them (prometheus-client's switch is process-wide).
disable_created_metrics()

# Step durations: a batch's plan or commit takes milliseconds, its run seconds to minutes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0, 120.0, 300.0, 600.0)


class Heartbeat:
    """When a loop last turned, and what turned it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._what = "start"

    def beat(self, what: str) -> None:
        """The loop turned: ``what`` is shown by ``/healthz`` (``"batch 3"``, ``"idle"``)."""
        with self._lock:
            self._last = time.monotonic()
            self._what = what

    def age_s(self) -> float:
        """Seconds since the last beat."""
        with self._lock:
            return time.monotonic() - self._last

    def last(self) -> str:
        """What beat last."""
        with self._lock:
            return self._what


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        _LOGGER.debug("metrics server: " + format, *args)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``port`` (see the module doc), in a daemon thread.

    Args:
        port: the TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        registry: the metrics to serve.
        heartbeat: what ``/healthz`` judges.
        bound_s: a heartbeat older than this is stuck (``--health_timeout_s``).
    """

    def __init__(self, port: int, registry: CollectorRegistry, heartbeat: Heartbeat,
                 bound_s: float) -> None:
        self._requested_port = port
        self.registry = registry
        self.heartbeat = heartbeat
        self.bound_s = bound_s
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._metrics_app = make_wsgi_app(registry)

    @property
    def port(self) -> int:
        """The port served (the one picked when 0 was asked for)."""
        return self._server.server_port if self._server is not None else self._requested_port

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, body)`` as ``/healthz`` answers them."""
        age = self.heartbeat.age_s()
        ok = age <= self.bound_s
        return ok, {"status": "ok" if ok else "stuck", "last": self.heartbeat.last(),
                    "age_s": round(age, 3), "bound_s": self.bound_s}

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in ("/healthz", "/healthz/"):
            ok, body = self.health()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        result: Iterable[bytes] = self._metrics_app(environ, start_response)
        return result

    def start(self) -> "MetricsServer":
        """Listen and serve in a daemon thread.

        Raises:
            ConfigError: the port cannot be listened on (taken), naming it.
        """
        try:
            self._server = make_server("", self._requested_port, self._app,
                                       server_class=_Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"--metrics_port={self._requested_port}: cannot listen there "
                              f"({exc.strerror}); pick a free port, or 0 for any") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="beam-zdl-metrics", daemon=True)
        self._thread.start()
        _LOGGER.info("serving /metrics and /healthz on port %d (stuck after %.0f s without "
                     "progress)", self.port, self.bound_s)
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DriverMetrics:
    """The driver's metrics, fed one :class:`BatchProgress` at a time (``observe``).

    Also a :class:`~beam_zdl.batch_progress.ProgressListener` in all but
    name: the loop calls :meth:`observe` after each batch.
    """

    def __init__(self, registry: CollectorRegistry,
                 commit_failures: Callable[[], int] = lambda: 0) -> None:
        self.batches = Counter("beam_zdl_batches", "Micro-batches completed.", ["mode", "replay"],
                               registry=registry)
        self.records = Counter("beam_zdl_records", "Records read by completed batches.",
                               registry=registry)
        self.bytes = Counter("beam_zdl_bytes", "Key and value bytes read by completed batches.",
                             registry=registry)
        self.dead_letters = Counter("beam_zdl_dead_letter_records",
                                    "Records DecodeRecords sent to its dead-letter output.",
                                    registry=registry)
        self.data_loss = Counter("beam_zdl_data_loss_records",
                                 "Records skipped as lost (--fail_on_data_loss=false).",
                                 registry=registry)
        self.duration = Histogram("beam_zdl_batch_duration_seconds",
                                  "Seconds per Step of a batch (plan, run, complete, commit) "
                                  "and in total.", ["step"], buckets=_DURATION_BUCKETS,
                                  registry=registry)
        self.lag = Gauge("beam_zdl_lag_offsets", "Offsets behind the latest end offset known, "
                         "after the last batch.", ["topic", "partition"], registry=registry)
        self.last_batch = Gauge("beam_zdl_last_batch_id", "Id of the last completed batch.",
                                registry=registry)
        self.last_batch_time = Gauge("beam_zdl_last_batch_timestamp_seconds",
                                     "Unix time the last batch completed.", registry=registry)
        self.pipeline_counters = Counter(
            "beam_zdl_pipeline_counter", "Every Beam counter of the batch pipelines (the "
            "user's, beam_zdl's, the sink's), summed over steps.", ["namespace", "name"],
            registry=registry)
        registry.register(_CallbackCounter("beam_zdl_commit_failures",
                                           "Kafka offset commits that failed after every retry "
                                           "(the checkpoint holds the progress; the next commit "
                                           "carries it).", commit_failures))

    def observe(self, progress: Any) -> None:
        """Count a completed batch's :class:`BatchProgress`."""
        self.batches.labels(progress.mode, str(progress.replay).lower()).inc()
        self.records.inc(progress.records)
        self.bytes.inc(progress.bytes)
        self.dead_letters.inc(progress.dead_letter_records)
        self.data_loss.inc(progress.data_loss_records)
        for step, seconds in progress.durations_s.items():
            self.duration.labels(step).observe(seconds)
        for p in progress.partitions:
            if p.lag is not None:
                self.lag.labels(p.topic, str(p.partition)).set(p.lag)
        for ns, names in progress.counters.items():
            for name, value in names.items():
                if value > 0:
                    self.pipeline_counters.labels(ns, name).inc(value)
        self.last_batch.set(progress.batch_id)
        self.last_batch_time.set(time.time())


class _CallbackCounter(Collector):
    """A counter whose value a callable gives at scrape time."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self._name, self._doc, self._value = name, documentation, value

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._doc, value=self._value())


class ReceiverCollector(Collector):
    """The receiver's metrics, read from its stats at scrape time.

    Args:
        stats: a callable returning the receiver's stats as a mapping (the fields of
            :class:`~beam_zdl.receiver.ReceiverStats`; missing ones count 0).
        buffered_bytes: a callable returning the bytes buffered, not yet sealed.
    """

    def __init__(self, stats: Callable[[], Mapping[str, float]],
                 buffered_bytes: Callable[[], int]) -> None:
        self._stats = stats
        self._buffered = buffered_bytes

    def collect(self) -> Iterator[Metric]:
        s = self._stats()

        def get(name: str) -> float:
            return float(s.get(name, 0) or 0)

        for name, doc, key in (
                ("records", "Records received and sealed into WAL segments.", "records"),
                ("bytes", "Bytes sealed into WAL segments.", "sealed_bytes"),
                ("segments_sealed", "WAL segments sealed.", "segments"),
                ("commits", "Offset commits after a seal.", "commits"),
                ("commit_failures", "Offset commits that failed after every retry.",
                 "failed_commits"),
                ("rebalances", "Partition assignments and revocations.", "rebalances"),
                ("lost_records", "Records lost before they were received "
                 "(--fail_on_data_loss=false).", "lost_records")):
            yield CounterMetricFamily(f"beam_zdl_receiver_{name}", doc, value=get(key))
        yield GaugeMetricFamily("beam_zdl_receiver_buffered_bytes",
                                "Bytes buffered, not yet sealed.", value=self._buffered())
        yield SummaryMetricFamily("beam_zdl_receiver_seal_seconds",
                                  "Seconds to seal a WAL segment (durable when done).",
                                  count_value=int(get("segments")), sum_value=get("seal_seconds"))
        yield SummaryMetricFamily("beam_zdl_receiver_commit_seconds",
                                  "Seconds to commit offsets after a seal.",
                                  count_value=int(get("commits") + get("failed_commits")),
                                  sum_value=get("commit_seconds"))
