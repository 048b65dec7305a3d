"""``--metrics-port``: Prometheus metrics and ``/healthz`` for a running task.

Values are read from the run at scrape time (a custom collector), so the relay's hot path
increments nothing.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.task.snapshot import Source

HEALTHY_STATES = ("starting", "standby", "running", "stopping", "restarting")


class _RunCollector:
    def __init__(self, run: Source) -> None:
        self.run = run

    def collect(self) -> Iterator[Any]:
        snap = self.run.snapshot()
        labels = ["task"]
        values = [snap.task]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield counter("dstream_envelopes_in", "Envelopes read from the input and written to the output", snap.envelopes)
        yield counter("dstream_envelopes_out", "Envelopes the output acknowledged (delivered)", snap.delivered)
        yield counter("dstream_bytes_in", "Bytes read from the input and written to the output", snap.bytes)
        yield counter("dstream_bytes_out", "Bytes the output acknowledged", snap.delivered_bytes)
        yield counter(
            "dstream_checkpoints_persisted", "Checkpoints written to the state store", snap.checkpoints_persisted
        )
        yield counter("dstream_dead_letters", "Lines set aside in the dead-letter file", snap.dead_letters)
        yield counter("dstream_provider_restarts", "Restarts of the pipeline by the restart policy", snap.restarts)
        yield gauge(
            "dstream_in_flight_envelopes",
            "Envelopes written to the output and not yet acknowledged (lag)",
            snap.in_flight,
        )
        age = -1.0 if snap.last_checkpoint_age is None else snap.last_checkpoint_age
        yield gauge("dstream_checkpoint_age_seconds", "Seconds since the last persisted checkpoint (-1: none)", age)
        yield gauge(
            "dstream_waiting_for_output",
            "1 while the input is paused because the output is behind",
            int(snap.waiting_for_output),
        )
        state = GaugeMetricFamily("dstream_state", "1 for the run's current state", labels=["task", "state"])
        for name in ("starting", "standby", "running", "stopping", "restarting", "finished", "failed"):
            state.add_metric([snap.task, name], int(snap.state == name))
        yield state


class MetricsServer:
    def __init__(self, run: Source, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
        self.registry = CollectorRegistry()
        self.registry.register(_RunCollector(run))
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/healthz"):
                    healthy = run.state in HEALTHY_STATES
                    self._reply(
                        200 if healthy else 503, b"ok\n" if healthy else run.state.encode() + b"\n", "text/plain"
                    )
                elif self.path.startswith("/metrics") or self.path == "/":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="metrics")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
