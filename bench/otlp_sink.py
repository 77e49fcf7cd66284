"""An OTLP/HTTP trace receiver on 127.0.0.1, standing in for a collector: ``make bench`` sends the traced
server's spans to it, and the tests read what a real server exported from the ``OTEL_*`` variables alone."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

ANSWER = ExportTraceServiceResponse().SerializeToString()


class OtlpSink:
    """``with OtlpSink() as sink``: ``sink.endpoint`` takes exports; ``sink.count`` is the spans received, and
    ``sink.received`` (with ``keep``, the default) their ``ResourceSpans``."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.received: list[ResourceSpans] = []
        self.count = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":  # OTLP/HTTP's path for traces; anything else is not taken
                    sink.add(list(ExportTraceServiceRequest.FromString(body).resource_spans))
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(ANSWER)))
                self.end_headers()
                self.wfile.write(ANSWER)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)

    def add(self, resource_spans: list[ResourceSpans]) -> None:
        with self.lock:
            self.count += sum(len(scope.spans) for r in resource_spans for scope in r.scope_spans)
            if self.keep:
                self.received.extend(resource_spans)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
