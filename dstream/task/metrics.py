"""``--metrics-port``: Prometheus metrics on ``/metrics`` and health on ``/healthz``.

Exposition is prometheus_client's own WSGI app, so content negotiation (the OpenMetrics
format when the scraper asks for it), gzip and ``?name[]=`` filtering behave as in any
Prometheus client. Values are read from the run at scrape time (a custom collector), so
the relay's hot path increments nothing. Gauges the providers report (``ctx.gauge``) are
exported as ``dstream_provider_<name>`` with the task, the stage and their own labels.
"""

from __future__ import annotations

import re
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from dstream.task.progress import Progress, Source

HEALTHY_STATES = ("starting", "standby", "running", "stopping", "restarting")
STATES = ("starting", "standby", "running", "stopping", "restarting", "finished", "failed")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _name(text: str) -> str:
    """A valid Prometheus metric or label name from what a provider sent."""
    cleaned = _INVALID.sub("_", text)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


class _RunCollector:
    def __init__(self, run: Source) -> None:
        self.run = run

    def collect(self) -> Iterator[Any]:
        now = self.run.progress()
        labels, values = ["task"], [now.task]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield counter("dstream_envelopes_in", "Envelopes read from the input and relayed", now.envelopes)
        yield counter("dstream_envelopes_out", "Input envelopes the output acknowledged (delivered)", now.delivered)
        yield counter("dstream_bytes_in", "Bytes read from the input and relayed", now.bytes)
        yield counter("dstream_bytes_out", "Input bytes the output acknowledged", now.delivered_bytes)
        yield counter(
            "dstream_checkpoints_persisted", "Checkpoints written to the state store", now.checkpoints_persisted
        )
        yield counter("dstream_dead_letters", "Lines set aside in the dead-letter file", now.dead_letters)
        yield counter("dstream_provider_restarts", "Restarts of the pipeline by the restart policy", now.restarts)
        yield gauge("dstream_in_flight_envelopes", "Input envelopes not yet acknowledged (lag)", now.in_flight)
        age = -1.0 if now.last_checkpoint_age is None else now.last_checkpoint_age
        yield gauge("dstream_checkpoint_age_seconds", "Seconds since the last persisted checkpoint (-1: none)", age)
        stalled = 0.0 if now.store_stalled is None else now.store_stalled
        yield gauge(
            "dstream_checkpoint_store_stalled_seconds",
            "Seconds the current checkpoint write has waited on the store (0: it answers)",
            stalled,
        )
        yield gauge(
            "dstream_waiting_for_output",
            "1 while the input is paused because the output is behind",
            now.waiting_for_output,
        )
        stages = CounterMetricFamily(
            "dstream_stage_envelopes", "Data lines out of each stage but the output", labels=["task", "stage"]
        )
        for role, count in now.stage_envelopes.items():
            stages.add_metric([now.task, role], count)
        yield stages
        state = GaugeMetricFamily("dstream_state", "1 for the run's current state", labels=["task", "state"])
        for name in STATES:
            state.add_metric([now.task, name], int(now.state == name))
        yield state
        yield from _provider_gauges(now)


def _provider_gauges(progress: Progress) -> Iterable[GaugeMetricFamily]:
    by_name: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for (role, name, pairs), value in progress.gauges.items():
        by_name.setdefault(_name(name), []).append((role, {_name(k): v for k, v in pairs}, value))
    for name, samples in sorted(by_name.items()):
        keys = sorted({k for _, found, _ in samples for k in found} - {"task", "stage"})
        family = GaugeMetricFamily(
            f"dstream_provider_{name}", f"Reported by the providers ({name})", labels=["task", "stage", *keys]
        )
        for role, found, value in samples:
            family.add_metric([progress.task, role, *(found.get(k, "") for k in keys)], value)
        yield family


MAX_CONNECTIONS = 16  # scrapers served at once; more are closed at once, not queued on a thread
REQUEST_TIMEOUT = 5.0  # seconds a connection may sit silent before it is dropped


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, but a bounded number of them: idle or slow clients cannot
    use up the orchestrator's threads or file descriptors."""

    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: nothing to report (the default prints a traceback)."""
        return


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        return None


class MetricsServer:
    def __init__(self, run: Source, port: int, host: str = "127.0.0.1") -> None:
        registry = CollectorRegistry()
        registry.register(_RunCollector(run))
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path.startswith("/healthz"):
                healthy = run.state in HEALTHY_STATES
                start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if healthy else run.state.encode() + b"\n"]
            if path in ("/", "/metrics"):
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /healthz\n"]

        server_class = _Server6 if ":" in host else _Server
        self.server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="metrics")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
