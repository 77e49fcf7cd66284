"""OpenTelemetry traces: which variables turn them on, the spans of each protocol's requests (the SDK's in-memory
exporter), the batch's links, nothing while off, and a real server exporting over OTLP from the variables alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from lstm_client import Client
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bench.otlp_sink import OtlpSink
from service import tracing
from service.server.middleware import CLIENT_LEFT, final_status
from service.settings import Settings

from .conftest import ROOT, app_client, free_port, running_server

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp"]),
    ],
)
def test_the_standard_variables_turn_traces_on(env: dict[str, str], names: list[str]) -> None:
    assert tracing.wanted(env) == names


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin' is not one of none, otlp, console"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not one of"),
    ],
)
def test_an_exporter_this_server_lacks_is_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        tracing.wanted(env)


@pytest.fixture()
def provider() -> Iterator[TracerProvider]:
    made = TracerProvider()
    yield made
    made.shutdown()


@pytest.fixture()
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    """Traces on in this process, into memory, for one test."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider)
    try:
        yield exporter
    finally:
        tracing.stop()


def hexid(value: int, digits: int = 16) -> str:
    return f"{value:0{digits}x}"


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == parent.context.span_id}


def body(weather: np.ndarray, steps: int = 12) -> dict[str, Any]:
    return {"inputs": [weather[:steps].tolist()]}


def test_a_request_continues_the_clients_trace(settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray):
    with app_client(settings) as c:
        r = c.post("/predict", json=body(weather), headers={"traceparent": TRACEPARENT, "x-request-id": "req-1"})
        assert r.status_code == 200
    (top,) = named(spans, "POST /predict")
    assert top.kind is SpanKind.SERVER
    assert hexid(top.context.trace_id, 32) == TRACE_ID and top.parent is not None
    assert hexid(top.parent.span_id) == PARENT_ID and top.parent.is_remote
    attrs = dict(top.attributes or {})
    assert attrs["lstm.model.name"] == "tiny" and attrs["lstm.model.version"] == "1"
    assert attrs["lstm.sequences"] == 1 and attrs["lstm.steps"] == 12
    assert attrs["lstm.request_id"] == "req-1" and attrs["http.response.status_code"] == 200
    assert top.status.status_code is StatusCode.UNSET
    inner = children(spans, top)
    assert set(inner) == {"decode", "infer", "encode"}
    assert (
        inner["decode"].end_time <= inner["infer"].start_time <= inner["infer"].end_time <= inner["encode"].start_time
    )
    assert all(s.context.trace_id == top.context.trace_id for s in inner.values())


def test_no_traceparent_starts_a_trace_and_health_is_not_traced(
    settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray
) -> None:
    with app_client(settings) as c:
        assert c.get("/health/ready").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.post("/predict", json=body(weather)).status_code == 200
        assert c.post("/predict", json=body(weather), headers={"traceparent": "00-garbage"}).status_code == 200
    tops = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in tops] == ["POST /predict", "POST /predict"]
    assert all(s.parent is None for s in tops)
    assert tops[0].context.trace_id != tops[1].context.trace_id


def test_the_batch_is_linked_to_every_request_it_ran(
    settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray
) -> None:
    # Never inline, and the batcher waits 200 ms for company: concurrent requests share one batch.
    with app_client(settings, inline_max_steps=0, batch_max_delay_ms=200) as c:
        parents = [f"00-{TRACE_ID[:-2]}{k:02x}-{PARENT_ID}-01" for k in range(4)]

        def post(traceparent: str) -> int:
            return c.post("/predict", json=body(weather, 10), headers={"traceparent": traceparent}).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(post, parents)) == [200] * 4
    infers = named(spans, "infer")
    assert len(infers) == 4 and {dict(s.attributes or {})["lstm.run"] for s in infers} == {"batched"}
    assert {hexid(s.context.trace_id, 32) for s in infers} == {p.split("-")[1] for p in parents}
    for infer in infers:  # each request's wait in the queue, within its infer span
        (waiting,) = [s for s in named(spans, "queue") if s.parent and s.parent.span_id == infer.context.span_id]
        assert infer.start_time <= waiting.start_time <= waiting.end_time <= infer.end_time
    batches = named(spans, "batch")
    assert sum(dict(b.attributes or {})["lstm.batch.requests"] for b in batches) == 4
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(s.context.span_id for s in infers)
    big = max(batches, key=lambda b: len(b.links))
    assert len(big.links) >= 2, "no two requests shared a batch"
    attrs = dict(big.attributes or {})
    assert big.parent is None and attrs["lstm.model.name"] == "tiny" and attrs["lstm.model.version"] == "1"
    assert attrs["lstm.sequences"] == len(big.links) and attrs["lstm.steps"] == 10 * len(big.links)
    for link in big.links:  # each batch ran after its requests' waits ended
        (infer,) = [s for s in infers if s.context.span_id == link.context.span_id]
        (waiting,) = [s for s in named(spans, "queue") if s.parent and s.parent.span_id == infer.context.span_id]
        assert waiting.end_time <= big.start_time


def test_a_clients_error_is_not_the_servers(settings: Settings, spans: InMemorySpanExporter) -> None:
    bad = {"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    with app_client(settings) as c:
        r = c.post("/v2/models/tiny/infer", json=bad, headers={"traceparent": TRACEPARENT})
        assert r.status_code == 400
    (top,) = named(spans, "POST /v2/infer")
    attrs = dict(top.attributes or {})
    assert attrs["lstm.status"] == 400 and top.status.status_code is StatusCode.UNSET
    assert hexid(top.context.trace_id, 32) == TRACE_ID
    (decode,) = named(spans, "decode")  # where the error was raised: no error, no stack either
    assert decode.parent is not None and decode.parent.span_id == top.context.span_id
    assert decode.status.status_code is StatusCode.UNSET and not decode.events


def test_a_servers_fault_marks_the_span(settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray):
    with app_client(settings, raise_server_exceptions=False) as c:
        plane = c.app.state.registry.default_plane  # type: ignore[attr-defined]

        def broken(*args: Any) -> None:
            raise RuntimeError("the engine broke")

        plane.engine.predict = broken
        assert c.post("/predict", json=body(weather)).status_code == 500
    (top,) = named(spans, "POST /predict")
    assert top.status.status_code is StatusCode.ERROR and dict(top.attributes or {})["lstm.status"] == 500


def test_websocket_messages_are_spans_of_the_handshakes_trace(
    settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray
) -> None:
    with (
        app_client(settings) as c,
        c.websocket_connect("/v1/models/tiny/stream", headers={"traceparent": TRACEPARENT}) as ws,
    ):
        for start in (0, 5):
            ws.send_json({"stream": "s", "inputs": weather[start : start + 5].tolist()})
            assert "outputs" in ws.receive_json()
        ws.send_json({"stream": "s", "inputs": [[1.0]]})
        assert ws.receive()["type"] == "websocket.close"
    messages = named(spans, "WS /v1/models/{name}/stream message")
    assert len(messages) == 3
    assert all(hexid(m.context.trace_id, 32) == TRACE_ID and hexid(m.parent.span_id) == PARENT_ID for m in messages)  # type: ignore[union-attr]
    assert [dict(m.attributes or {})["lstm.status"] for m in messages] == [200, 200, 422]
    assert set(children(spans, messages[0])) == {"decode", "infer", "encode"}


def test_grpc_calls_continue_the_trace_in_their_metadata(
    settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray
) -> None:
    port = free_port()
    x = np.ascontiguousarray(weather[None, :8], dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
    request = pb.ModelInferRequest(model_name="tiny", inputs=[tensor], raw_input_contents=[x.tobytes()], id="g1")
    with app_client(settings, grpc_port=port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # a probe: not traced
        stub.ModelInfer(request, metadata=(("traceparent", TRACEPARENT),))
        answers = list(stub.ModelStreamInfer(iter([request, request]), metadata=(("traceparent", TRACEPARENT),)))
        assert [a.error_message for a in answers] == ["", ""]
    unary = named(spans, "inference.GRPCInferenceService/ModelInfer")
    streamed = named(spans, "inference.GRPCInferenceService/ModelStreamInfer")
    assert len(unary) == 1 and len(streamed) == 2
    assert len([s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]) == 3
    for top in unary + streamed:
        assert top.kind is SpanKind.SERVER and hexid(top.context.trace_id, 32) == TRACE_ID
        attrs = dict(top.attributes or {})
        assert attrs["rpc.system"] == "grpc" and attrs["lstm.status"] == 200 and attrs["lstm.sequences"] == 1
        assert attrs["rpc.grpc.status_code"] == 0
        assert set(children(spans, top)) == {"decode", "infer", "encode"}


def edge_chain(app: Any) -> Iterator[Any]:
    """The app's pure-ASGI middleware, outermost first."""
    while app is not None:
        yield app
        app = getattr(app, "app", None)


def test_off_there_are_no_spans_and_no_middleware(settings: Settings, weather: np.ndarray) -> None:
    assert tracing.TRACER is None and not tracing.enabled()
    with app_client(settings) as c:
        assert not [m for m in edge_chain(c.app.edge) if isinstance(m, tracing.TraceRequests)]  # type: ignore[attr-defined]
        assert c.post("/predict", json=body(weather), headers={"traceparent": TRACEPARENT}).status_code == 200
        assert tracing.TRACER is None  # the lifespan built no tracer either
    assert tracing.span("decode") is tracing.OFF and tracing.server_span("x", {}) is tracing.OFF
    assert tracing.queued() is None and not tracing.current().is_recording()
    assert tracing.batch_span([], {}) is tracing.OFF


def sampled_spans(sampler: Any) -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


@pytest.mark.parametrize("flags", ["01", "00"])
def test_a_batch_is_kept_exactly_when_a_request_it_ran_is(
    settings: Settings, weather: np.ndarray, flags: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a sampler keeping 1 trace in 10**9 (and following a parent's choice), a sampled request's batch is
    still there, and an unsampled request's batch is not."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.000000001")
    exporter, provider = sampled_spans(tracing.sampler())
    tracing.start(provider)
    try:
        with app_client(settings, inline_max_steps=0) as c:
            r = c.post("/predict", json=body(weather), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"})
            assert r.status_code == 200
            assert c.post("/predict", json=body(weather)).status_code == 200  # a root: the ratio drops it
    finally:
        tracing.stop()
        provider.shutdown()
    names = sorted(s.name for s in exporter.get_finished_spans())
    if flags == "01":
        assert names == ["POST /predict", "batch", "decode", "encode", "infer", "queue"]
        (batch,) = named(exporter, "batch")
        (infer,) = named(exporter, "infer")
        assert [link.context.span_id for link in batch.links] == [infer.context.span_id]
    else:
        assert names == []


def test_a_real_server_exports_over_otlp_from_the_variables_alone(repo: Path, weather: np.ndarray) -> None:
    with OtlpSink() as sink:
        env = {
            "LSTM_WORKERS": "2",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            "OTEL_SERVICE_NAME": "forecasts",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with running_server(repo, env) as (url, proc):
            for _ in range(6):  # over both workers, most likely
                r = httpx.post(f"{url}/predict", json=body(weather), headers={"traceparent": TRACEPARENT})
                assert r.status_code == 200
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and sink.count < 6 * 4:
                time.sleep(0.1)
            proc.terminate()
            assert proc.wait(20) == 0
    names = {}
    for resource in sink.received:
        service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
        assert service == "forecasts"
        for scope in resource.scope_spans:
            for span in scope.spans:
                names.setdefault(span.name, []).append(span)
    tops = names["POST /predict"]
    assert len(tops) == 6 and all(s.trace_id.hex() == TRACE_ID and s.parent_span_id.hex() == PARENT_ID for s in tops)
    assert len(names["decode"]) == len(names["infer"]) == len(names["encode"]) == 6


def test_lstm_client_carries_the_callers_trace(
    settings: Settings, provider: TracerProvider, spans: InMemorySpanExporter, weather: np.ndarray
) -> None:
    """The client sends the current span as traceparent: over gRPC the service's span is its child; over HTTP
    (a scripted server) the header names it."""
    from opentelemetry import trace

    port, sent = free_port(), []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("traceparent"))
        doc = {"outputs": [[[0.5]]], "hn": [[[0.0]]], "cn": [[[0.0]]], "model": {"name": "m", "version": "1"}}
        return httpx.Response(200, json=doc)

    tracer = trace.get_tracer("test", tracer_provider=provider)
    with app_client(settings, grpc_port=port), tracer.start_as_current_span("caller") as caller:
        with Client(f"grpc://127.0.0.1:{port}", model="tiny") as rpc:
            rpc.predict([weather[:4]])
        with Client("http://lstm.invalid", transport=httpx.MockTransport(server)) as http:
            http.predict([[[1.0]]])
    ids = caller.get_span_context()
    (top,) = named(spans, "inference.GRPCInferenceService/ModelInfer")
    assert top.context.trace_id == ids.trace_id and top.parent is not None and top.parent.span_id == ids.span_id
    assert sent == [f"00-{hexid(ids.trace_id, 32)}-{hexid(ids.span_id)}-{ids.trace_flags:02x}"]
    with Client("http://lstm.invalid", transport=httpx.MockTransport(server)) as http:
        http.predict([[[1.0]]])  # outside any span: nothing to continue
    assert sent[-1] is None


def test_keys_come_before_traces_and_a_client_that_left_is_499(
    settings: Settings, spans: InMemorySpanExporter, weather: np.ndarray
) -> None:
    with app_client(settings, api_keys=["k"]) as c:
        chain = [type(m).__name__ for m in edge_chain(c.app.edge)]  # type: ignore[attr-defined]
        assert chain.index("ApiKeyAuth") < chain.index("TraceRequests")
        r = c.post("/predict", json=body(weather), headers={"traceparent": TRACEPARENT})
        assert r.status_code == 401  # no key: no span, whatever the client's trace says
    assert spans.get_finished_spans() == ()
    scope = {"state": {CLIENT_LEFT: lambda: True}}
    assert final_status(scope, 200) == 499 and final_status({"state": {}}, 200) == 200


def test_a_stop_waits_for_no_collector_that_is_down(repo: Path, weather: np.ndarray) -> None:
    down = free_port()  # nothing listens: every export fails, and would be retried for seconds
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{down}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_server(repo, env) as (url, proc):
        for _ in range(5):
            assert httpx.post(f"{url}/predict", json=body(weather)).status_code == 200
        time.sleep(0.5)  # the exporter is retrying by now
        start = time.monotonic()
        proc.terminate()
        assert proc.wait(30) == 0
        assert time.monotonic() - start < tracing.FLUSH_S + 5


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER: 'jaeger' is not one of none, otlp, console"),
        ({"OTEL_PROPAGATORS": "b3"}, "OTEL_PROPAGATORS: Propagator b3 not found"),  # traces off: FastAPI reads it
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "-5"}, "traces:"),
    ],
)
def test_a_server_refuses_trace_settings_it_cannot_use(repo: Path, env: dict[str, str], says: str) -> None:
    full = {**os.environ, "LSTM_MODEL_REPOSITORY": str(repo), "LSTM_PROVIDER": "cpu", **env}
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "cannot serve" in done.stderr and says in done.stderr
    assert "Traceback" not in done.stderr


def test_warnings_a_clients_trace_headers_cause_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry import propagate

    from service.server.logs import CLIENT_TRACE_WARNINGS, log_config

    caplog.set_level(logging.WARNING)
    tracestate = ",".join(f"k{i}=v" for i in range(40))
    propagate.extract({"traceparent": "00-" + "a" * 600})
    propagate.extract({"traceparent": TRACEPARENT, "tracestate": tracestate, "baggage": "k=v," * 200})
    warned = {record.name for record in caplog.records}
    assert warned == set(CLIENT_TRACE_WARNINGS)  # the loggers that warn are the ones silenced
    loggers = log_config("info", "json")["loggers"]
    assert all(loggers[name]["level"] == "ERROR" for name in CLIENT_TRACE_WARNINGS)
