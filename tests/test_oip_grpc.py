"""The Open Inference Protocol over gRPC, through the real tritonclient[grpc] client against the real server
(two workers sharing the port), and the protocol's own stubs where tritonclient does not reach (typed contents)."""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import ROOT, free_port, running_server, windows
from .test_observability import sample

KEY = "grpc-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {"LSTM_WORKERS": "2", "LSTM_GRPC_PORT": str(port), "LSTM_API_KEYS": KEY}
    with running_server(repo, env) as (url, proc):
        yield url, port
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def client(served: tuple[str, int]) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{served[1]}")
    yield c
    c.close()


def inputs(x: np.ndarray, states: tuple[np.ndarray, np.ndarray] | None = None) -> list[triton.InferInput]:
    named = [("x", x), *([("h0", states[0]), ("c0", states[1])] if states else [])]
    out = []
    for name, array in named:
        t = triton.InferInput(name, list(array.shape), "FP32")
        t.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        out.append(t)
    return out


def rest(url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/predict", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_health_metadata_and_keys(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # open to probes, as over HTTP
    with pytest.raises(InferenceServerException, match="Not authenticated") as refused:
        client.get_server_metadata()
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    meta = client.get_server_metadata(headers=AUTH)
    assert {"binary_tensor_data", "sequence", "model_repository"} <= set(meta.extensions)
    model = client.get_model_metadata("tiny", headers=AUTH)
    assert list(model.versions) == ["1"] and model.platform == "onnxruntime_onnx"
    assert {t.name: list(t.shape) for t in model.inputs} == {
        "x": [-1, -1, 4],
        "h0": [2, -1, 8],
        "c0": [2, -1, 8],
        "lengths": [-1],
    }
    assert client.is_model_ready("tiny", headers=AUTH) and not client.is_model_ready("nope", headers=AUTH)


@pytest.mark.parametrize("with_states", [False, True])
def test_infer_equals_predict(
    served: tuple[str, int], client: triton.InferenceServerClient, weather: np.ndarray, with_states: bool
) -> None:
    rng = np.random.default_rng(3)
    x = np.stack(windows(weather, [12, 12, 12], rng)).astype(np.float32)
    states = tuple((rng.standard_normal((2, 3, 8)) * 0.5).astype(np.float32) for _ in range(2))
    result = client.infer("tiny", inputs(x, states if with_states else None), headers=AUTH)  # type: ignore[arg-type]
    body: dict[str, Any] = {"inputs": x.tolist()}
    if with_states:
        body |= {"h0": states[0].transpose(1, 0, 2).tolist(), "c0": states[1].transpose(1, 0, 2).tolist()}
    want = rest(served[0], body)
    np.testing.assert_allclose(result.as_numpy("y"), np.asarray(want["outputs"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("hn"), np.asarray(want["hn"]).transpose(1, 0, 2), rtol=0, atol=1e-6)
    assert result.get_response().model_name == "tiny" and result.get_response().model_version == "1"


def test_typed_contents_and_lengths_through_the_protocols_own_stub(
    served: tuple[str, int], weather: np.ndarray
) -> None:
    """Tensors as typed contents (fp32_contents, int_contents), not raw bytes: the other half of the protocol."""
    x = np.stack(windows(weather, [6, 6], np.random.default_rng(4))).astype(np.float32)
    request = pb.ModelInferRequest(model_name="tiny", id="r-1")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 6, 4]).contents.fp32_contents.extend(x.ravel().tolist())
    request.inputs.add(name="lengths", datatype="INT32", shape=[2]).contents.int_contents.extend([6, 2])
    request.outputs.add(name="y")
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=tuple(AUTH.items()))
    assert (
        answer.id == "r-1" and [o.name for o in answer.outputs] == ["y"] and list(answer.outputs[0].shape) == [2, 6, 1]
    )
    y = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 6, 1)
    want = rest(served[0], {"inputs": [x[0].tolist(), x[1, :2].tolist()]})["outputs"]
    np.testing.assert_allclose(y[0], want[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(y[1, :2], want[1], rtol=0, atol=1e-6)
    assert not y[1, 2:].any()  # past its length: zeros, never padding's outputs


@pytest.mark.parametrize(
    "build, code, why",
    [
        (
            lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1, 2, 3]).contents.fp32_contents.extend([0.0] * 6),
            "INVALID_ARGUMENT",
            "x: Should have shape [-1, -1, 4]",
        ),
        (
            lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1, 2, 4]).contents.fp32_contents.extend([0.0] * 7),
            "INVALID_ARGUMENT",
            "inputs.0.contents.fp32_contents: 7 values do not fill shape [1, 2, 4]",
        ),
        (lambda r: r.inputs.add(name="z", datatype="FP32", shape=[1]), "INVALID_ARGUMENT", "inputs.0.name"),
        (lambda r: r.inputs.add(name="x", datatype="BYTES", shape=[1]), "INVALID_ARGUMENT", "inputs.0.datatype"),
        (
            lambda r: (
                r.inputs.add(name="x", datatype="FP32", shape=[1, 1, 4]),
                r.raw_input_contents.append(b"\0" * 3),
            ),
            "INVALID_ARGUMENT",
            "raw_input_contents.0: 3 bytes do not hold shape [1, 1, 4]",
        ),
        (
            lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1, 1, 4]).contents.fp32_contents.extend(
                [1e39] * 4
            ),
            "INVALID_ARGUMENT",
            "x",
        ),
        (
            lambda r: r.parameters["sequence_start"].CopyFrom(pb.InferParameter(bool_param=True)),
            "INVALID_ARGUMENT",
            "Input 'x' is required",
        ),
        (
            lambda r: r.inputs.add(name="x", datatype="FP32", shape=[2**62, 4, 4]),
            "INVALID_ARGUMENT",
            "inputs.0.contents.fp32_contents: 0 values do not fill shape [4611686018427387904, 4, 4]",
        ),
        (
            lambda r: r.inputs.add(name="x", datatype="FP32", shape=[2**32, 2**32, 4]).contents.fp32_contents.extend(
                [0.0]
            ),
            "INVALID_ARGUMENT",
            "do not fill shape",
        ),
    ],
    ids=["shape", "count", "name", "datatype", "raw-size", "not-finite", "no-inputs", "overflow", "overflow-2"],
)
def test_bad_requests_get_the_right_code_and_name_the_field(
    served: tuple[str, int], build, code: str, why: str
) -> None:  # type: ignore[no-untyped-def]
    request = pb.ModelInferRequest(model_name="tiny")
    build(request)
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel, pytest.raises(grpc.RpcError) as failed:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=tuple(AUTH.items()))
    assert failed.value.code().name == code and why in failed.value.details(), failed.value.details()


def test_unknown_model_and_version(client: triton.InferenceServerClient) -> None:
    x = np.zeros((1, 2, 4), np.float32)
    for model, version in (("nope", ""), ("tiny", "9")):
        with pytest.raises(InferenceServerException) as missing:
            client.infer(model, inputs(x), model_version=version, headers=AUTH)
        assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_a_sequence_over_model_stream_infer_equals_one_call(
    client: triton.InferenceServerClient, weather: np.ndarray
) -> None:
    """ModelStreamInfer with Triton's sequence parameters, the states held by the server; an error in the stream
    is answered in it, and the stream goes on."""
    x = np.ascontiguousarray(windows(weather, [30], np.random.default_rng(6))[0][None].astype(np.float32))
    whole = client.infer("tiny", inputs(x), headers=AUTH)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=AUTH)
    try:
        ends = [7, 8, 20, 30]
        for k, (a, b) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            client.async_stream_infer(
                "tiny", inputs(x[:, a:b]), sequence_id="grpc-seq", sequence_start=k == 0, sequence_end=b == 30
            )
        client.async_stream_infer("tiny", inputs(np.zeros((1, 2, 3), np.float32)))  # wrong shape: its own error
        client.async_stream_infer("tiny", inputs(x[:, :3]))  # and the stream goes on
        got = [answers.get(timeout=30) for _ in range(6)]
    finally:
        client.stop_stream()
    assert all(err is None for _, err in got[:4]) and got[4][1] is not None and got[5][1] is None
    assert "x: Should have shape" in str(got[4][1])
    pieces = np.concatenate([result.as_numpy("y") for result, _ in got[:4]], axis=1)
    np.testing.assert_allclose(pieces, whole.as_numpy("y"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[3][0].as_numpy("hn"), whole.as_numpy("hn"), rtol=0, atol=1e-5)


def test_grpc_calls_are_counted(served: tuple[str, int], client: triton.InferenceServerClient) -> None:
    before = httpx.get(f"{served[0]}/metrics").text
    client.infer("tiny", inputs(np.zeros((1, 2, 4), np.float32)), headers=AUTH)
    with pytest.raises(InferenceServerException):
        client.infer("tiny", inputs(np.zeros((1, 2, 3), np.float32)), headers=AUTH)
    after = httpx.get(f"{served[0]}/metrics").text
    for status in ("200", "400"):
        grew = sample(after, "lstm_requests_total", route="grpc/ModelInfer", status=status)
        assert grew - sample(before, "lstm_requests_total", route="grpc/ModelInfer", status=status) == 1


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ServerMetadata"])
def test_a_malformed_message_is_a_clean_invalid_argument(served: tuple[str, int], method: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel, pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(b"\xff\xfe\xfd", metadata=tuple(AUTH.items()))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Not a " in failed.value.details()
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(b"\xff\xfe\xfd")  # no key: refused first
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_long_name_is_cut_in_the_error(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as missing:
        client.infer("m" * 100_000, inputs(np.zeros((1, 2, 4), np.float32)), headers=AUTH)
    assert missing.value.status() == "StatusCode.NOT_FOUND" and len(missing.value.message()) < 300


def test_streams_are_bounded_per_worker_and_end_when_idle(repo: Path) -> None:
    """One worker holding at most one stream, idle for at most half a second: a second stream is refused
    (RESOURCE_EXHAUSTED), an idle one ends, and then another may open."""
    port = free_port()
    env = {
        "LSTM_WORKERS": "1",
        "LSTM_GRPC_PORT": str(port),
        "LSTM_STREAM_MAX_CONNECTIONS": "1",
        "LSTM_STREAM_IDLE_S": "0.5",
    }
    with running_server(repo, env) as _, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        idle: queue.Queue[bytes] = queue.Queue()

        def requests() -> Iterator[bytes]:
            while (body := idle.get()) != b"":
                yield body

        first = stream(requests())
        time.sleep(0.2)  # the first stream is open, and idle
        with pytest.raises(grpc.RpcError) as refused:
            list(stream(iter([b""])))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert list(first) == []  # idle past 0.5 s: the server ended it
        idle.put(b"")
        request = pb.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 1, 4]).contents.fp32_contents.extend([0.0] * 4)
        answers = list(stream(iter([request.SerializeToString()])))  # a new stream, now that one may open
        assert len(answers) == 1 and pb.ModelStreamInferResponse.FromString(answers[0]).infer_response.outputs


def test_a_grpc_port_already_taken_stops_start_up(repo: Path, tmp_path: Path) -> None:
    """SO_REUSEPORT would share a port with another server of the same user: a taken port is refused at start."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            **os.environ,
            "LSTM_MODEL_REPOSITORY": str(repo),
            "LSTM_PROVIDER": "cpu",
            "LSTM_GRPC_PORT": str(port),
            "LSTM_PORT": str(free_port()),
        }
        done = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode == 2
    assert f"LSTM_GRPC_PORT {port}" in done.stderr.decode()


def test_every_worker_serves_grpc(served: tuple[str, int]) -> None:
    """The workers share the port: fresh channels (one connection each) reach both, told apart by the request
    id's per-process prefix in the trailing metadata. 20 channels all on one worker: about 1 in 500,000."""
    workers = set()
    for _ in range(20):
        with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            _, call = stub.ServerLive.with_call(pb.ServerLiveRequest())
            request_id = dict(call.trailing_metadata())["x-request-id"]
            workers.add(request_id[:20])
    assert len(workers) == 2


def test_a_chunk_out_of_order_is_aborted_without_retry_after(
    served: tuple[str, int], client: triton.InferenceServerClient
) -> None:
    """A chunk out of order (409 over HTTP, no Retry-After: trying again will not help) is ABORTED, naming it."""
    x = np.zeros((1, 2, 4), np.float32)
    client.infer("tiny", inputs(x), sequence_id="busy-1", sequence_start=True, headers=AUTH)
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2, 4]).contents.fp32_contents.extend([0.0] * 8)
    request.parameters["sequence_id"].string_param = "busy-1"
    request.parameters["sequence_chunk"].int64_param = 5  # out of order: a 409 without Retry-After
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel, pytest.raises(grpc.RpcError) as refused:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=tuple(AUTH.items()))
    assert refused.value.code() == grpc.StatusCode.ABORTED and "sequence_chunk" in refused.value.details()
    assert "retry-after" not in dict(refused.value.trailing_metadata())


def test_an_error_that_says_when_to_retry_says_it_over_grpc_too() -> None:
    """Overloaded (503 with Retry-After over HTTP): UNAVAILABLE, with retry-after in the trailing metadata."""
    from service.pipeline.errors import Overloaded
    from service.protocols.oip_grpc import InferenceService

    class Context:
        trailer: tuple[tuple[str, str], ...] = ()
        aborted: tuple[grpc.StatusCode, str] | None = None

        def invocation_metadata(self) -> tuple[()]:
            return ()

        def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
            self.trailer = metadata

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.aborted = (code, details)
            raise RuntimeError("aborted")  # grpc.aio raises too: the call ends here

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

    async def full(body: bytes) -> None:
        raise Overloaded("256 requests are in progress")

    service = InferenceService(object(), None, [], "0", 1, 1.0)  # type: ignore[arg-type]
    context = Context()
    with pytest.raises(RuntimeError, match="aborted"):
        asyncio.run(service._call("ModelInfer", full, None, False)(b"", context))  # type: ignore[arg-type]
    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "256 requests are in progress")
    assert dict(context.trailer)["retry-after"] == "1"
