"""The client on its own: what it sends again and when, what it raises. A scripted server (httpx's MockTransport)
stands in for the service, so these run where only the client is installed."""

import asyncio
import itertools
import json
import pickle
import time
from concurrent import futures
from typing import Any

import grpc
import httpx
import lstm_client
import numpy as np
import pytest
from lstm_client import AsyncClient, Client, ServiceError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc


def test_it_is_a_package_of_its_own() -> None:
    from importlib.metadata import version
    from importlib.resources import files

    assert lstm_client.__version__ == version("lstm-client")  # the package's version is the module's
    assert files("lstm_client").joinpath("py.typed").is_file()  # typed, for the user's mypy


@pytest.mark.parametrize(
    ("answers", "status", "sent"),
    [
        ([503, 502, 200], 200, 3),  # unavailable for a moment, then answered
        ([409, 200], 200, 2),  # busy, with Retry-After: sent again
        ([503] * 5, 503, 3),  # retries=2: the third answer is final
        ([422, 200], 422, 1),  # the request's own fault: never sent again
        ([429, 200], 429, 1),
    ],
)
def test_what_is_sent_again(answers: list[int], status: int, sent: int) -> None:
    calls: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        code = answers[len(calls)]
        calls.append(code)
        headers = {"Retry-After": "0"} if code in (409, 503) else {}
        body = {"outputs": [[[0.5]]], "hn": [[[0.0]]], "cn": [[[0.0]]], "model": {"name": "m", "version": "1"}}
        return httpx.Response(code, json=body if code == 200 else {"detail": "no"}, headers=headers)

    client = Client("http://lstm.invalid", retries=2, transport=httpx.MockTransport(server))
    if status == 200:
        assert client.predict([[[1.0]]]).outputs[0].tolist() == [[0.5]]
    else:
        with pytest.raises(ServiceError) as failed:
            client.predict([[[1.0]]])
        assert failed.value.status == status
    assert len(calls) == sent
    client.close()


def test_a_409_without_retry_after_is_final_and_no_answer_at_all_raises() -> None:
    def out_of_order(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"detail": [{"loc": ["body", "sequence", "chunk"]}]})

    client = Client("http://lstm.invalid", retries=2, transport=httpx.MockTransport(out_of_order))
    with pytest.raises(ServiceError) as refused:
        client.predict([[[1.0]]])
    assert refused.value.status == 409

    tries = 0

    def down(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        raise httpx.ConnectError("refused", request=request)

    client.close()
    client = Client("http://lstm.invalid", retries=2, transport=httpx.MockTransport(down))
    with pytest.raises(ServiceError) as unanswered:
        client.predict([[[1.0]]])
    assert tries == 3  # one error type: no status, the connection's error as its cause
    assert unanswered.value.status is None and isinstance(unanswered.value.__cause__, httpx.ConnectError)
    client.close()


def scripted(answers: list[Any]) -> tuple[httpx.MockTransport, list[float]]:
    """A server answering each attempt with the next of ``answers``: a status and its Retry-After, or an
    exception to raise; and when each attempt came."""
    when: list[float] = []

    def server(request: httpx.Request) -> httpx.Response:
        when.append(time.monotonic())
        answer = answers[len(when) - 1]
        if isinstance(answer, Exception):
            raise answer
        status, retry_after = answer
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"outputs": [[[0.5]]], "hn": [[[0.0]]], "cn": [[[0.0]]], "model": {"name": "m", "version": "1"}}
        return httpx.Response(status, json=body if status == 200 else {"detail": "no"}, headers=headers)

    return httpx.MockTransport(server), when


def test_the_async_client_retries_as_the_sync_one_does() -> None:
    drop = httpx.ReadError("reset")
    transport, when = scripted([drop, (503, "0"), (409, "0.2"), (200, None)])

    async def run() -> float:
        async with AsyncClient("http://lstm.invalid", retries=3, transport=transport) as client:
            return float((await client.predict([[[1.0]]])).outputs[0][0, 0])

    assert asyncio.run(run()) == 0.5 and len(when) == 4
    assert when[3] - when[2] >= 0.2  # the 409's Retry-After was honoured


def test_retry_after_is_honoured_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lstm_client, "MAX_PAUSE_S", 0.3)
    transport, when = scripted([(503, "100"), (503, "-1"), (503, "nan"), (503, "soon"), (200, None)])
    client = Client("http://lstm.invalid", retries=4, transport=transport)
    assert client.predict([[[1.0]]]).outputs[0].tolist() == [[0.5]]
    gaps = [b - a for a, b in itertools.pairwise(when)]
    assert 0.3 <= gaps[0] < 0.5  # 100 s asked, capped
    assert all(g < 0.45 for g in gaps[1:])  # nonsense asked: backed off as without it (capped too), no crash
    client.close()


def test_a_request_this_client_cannot_make_is_not_retried() -> None:
    transport, when = scripted([httpx.UnsupportedProtocol("ftp"), (200, None)])
    client = Client("http://lstm.invalid", retries=3, transport=transport)
    with pytest.raises(httpx.UnsupportedProtocol):
        client.predict([[[1.0]]])
    assert len(when) == 1
    client.close()


def test_every_failure_is_one_error_type_with_status_and_detail() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(401, json={"detail": "Missing or invalid API key"})
        return httpx.Response(422, json={"detail": [{"loc": ["body", "inputs", 0], "msg": "bad"}]})

    with Client("http://lstm.invalid", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ServiceError) as models:
            client.default_model()
        assert models.value.status == 401 and "API key" in models.value.detail
        with pytest.raises(ServiceError) as bad:
            client.predict([np.zeros((2, 4))])
        assert bad.value.status == 422 and "inputs" in bad.value.detail


def test_the_key_and_the_model_go_with_each_request() -> None:
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"outputs": [[[0.5]]], "hn": [[[0.0]]], "cn": [[[0.0]]], "model": {"name": "m", "version": "2"}}
        return httpx.Response(200, json=body)

    with Client(
        "http://lstm.invalid/", model="m", version="2", api_key="k", transport=httpx.MockTransport(server)
    ) as c:
        assert c.predict([[[1.0]]]).model == {"name": "m", "version": "2"}
    assert seen[0].url.path == "/v1/models/m/versions/2/predict"
    assert seen[0].headers["authorization"] == "Bearer k"


def test_the_error_pickles_and_a_version_needs_its_model() -> None:
    import pickle

    again = pickle.loads(pickle.dumps(ServiceError(409, "busy")))
    assert (again.status, again.detail, str(again)) == (409, "busy", "409: busy")
    assert str(ServiceError(None, "no answer: ConnectError")) == "no answer: ConnectError"
    with pytest.raises(ValueError, match="name the model too"):
        Client("http://lstm.invalid", version="2")


# ---------------------------------------------------------------- gRPC, against a scripted server
class Scripted(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """A gRPC server answering each call with the next of ``answers``: None for outputs (0.5 at every step,
    zero states), or a code and its retry-after; it keeps each request and its metadata."""

    def __init__(self, answers: list[tuple[Any, str | None] | None]) -> None:
        self.answers, self.seen = answers, []

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        self.seen.append((request, dict(context.invocation_metadata())))
        answer = self.answers[len(self.seen) - 1]
        context.set_trailing_metadata(
            [("x-request-id", "r"), *([("retry-after", answer[1])] if answer and answer[1] else [])]
        )
        if answer is not None:
            context.abort(answer[0], "no")
        b, t = request.inputs[0].shape[0], request.inputs[0].shape[1]
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="3")
        for name, shape in (("y", [b, t, 1]), ("hn", [1, b, 2]), ("cn", [1, b, 2])):
            response.outputs.add(name=name, datatype="FP32", shape=shape)
            fill = 0.5 if name == "y" else float(name == "cn")
            response.raw_output_contents.append(np.full(shape, fill, dtype="<f4").tobytes())
        return response


@pytest.fixture()
def grpc_server() -> Any:
    servers = []

    def start(answers: list[tuple[Any, str | None] | None]) -> tuple[str, Scripted]:
        server = grpc.server(futures.ThreadPoolExecutor(2))
        scripted = Scripted(answers)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(scripted, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"grpc://127.0.0.1:{port}", scripted

    yield start
    for server in servers:
        server.stop(None)


def test_grpc_sends_one_tensor_per_input_with_the_key_and_the_model(grpc_server: Any) -> None:
    url, server = grpc_server([None])
    with Client(url, model="m", version="3", api_key="k") as client:
        answer = client.predict([np.ones((3, 4)), np.ones((1, 4))], h0=np.zeros((2, 1, 2)), c0=np.ones((2, 1, 2)))
    request, metadata = server.seen[0]
    assert metadata["authorization"] == "Bearer k"
    assert (request.model_name, request.model_version) == ("m", "3")
    shapes = {t.name: list(t.shape) for t in request.inputs}
    assert shapes == {
        "x": [2, 3, 4],
        "lengths": [2],
        "h0": [1, 2, 2],
        "c0": [1, 2, 2],
    }  # states as [layers, batch, hidden]
    lengths = np.frombuffer(request.raw_input_contents[1], dtype=np.int32)
    assert lengths.tolist() == [3, 1]
    assert [o.shape for o in answer.outputs] == [(3, 1), (1, 1)]  # each cut to its own length
    assert answer.hn.shape == (2, 1, 2) and answer.cn.tolist() == [[[1.0, 1.0]], [[1.0, 1.0]]]
    assert answer.model == {"name": "m", "version": "3"}


@pytest.mark.parametrize(
    ("answers", "status", "sent"),
    [
        ([(grpc.StatusCode.UNAVAILABLE, None), (grpc.StatusCode.DEADLINE_EXCEEDED, None), None], 200, 3),
        ([(grpc.StatusCode.ABORTED, "0"), None], 200, 2),  # a conflict that says when: sent again
        ([(grpc.StatusCode.ABORTED, None), None], 409, 1),  # a chunk out of order: final
        ([(grpc.StatusCode.UNAVAILABLE, "0")] * 4, 503, 3),  # retries=2: the third answer is final
        ([(grpc.StatusCode.INVALID_ARGUMENT, None), None], 400, 1),
        ([(grpc.StatusCode.RESOURCE_EXHAUSTED, None), None], 413, 1),  # too large: never sent again
    ],
)
def test_what_grpc_sends_again(grpc_server: Any, answers: list[Any], status: int, sent: int) -> None:
    url, server = grpc_server(answers)
    with Client(url, model="m", retries=2) as client:
        if status == 200:
            assert client.predict([[[1.0]]]).outputs[0].tolist() == [[0.5]]
        else:
            with pytest.raises(ServiceError) as failed:
                client.predict([[[1.0]]])
            assert failed.value.status == status and failed.value.detail == "no"
            assert failed.value.code == answers[0][0].name
    assert len(server.seen) == sent


def test_grpc_async_and_a_held_sequence_number_their_chunks(grpc_server: Any) -> None:
    url, server = grpc_server([(grpc.StatusCode.UNAVAILABLE, "0"), None, None])

    async def run() -> None:
        async with AsyncClient(url, model="m", retries=2) as client:
            seq = client.sequence("dev-7")
            await seq.send([[1.0]])
            await seq.send([[2.0]], end=True)

    asyncio.run(run())
    params = [
        {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in r.parameters.items()} for r, _ in server.seen
    ]
    assert (
        params[0]
        == params[1]
        == {"sequence_id": "dev-7", "sequence_start": True, "sequence_end": False, "sequence_chunk": 0}
    )
    assert params[2] == {"sequence_id": "dev-7", "sequence_start": False, "sequence_end": True, "sequence_chunk": 1}


def test_grpc_without_a_server_or_a_model() -> None:
    with pytest.raises(ValueError, match="needs the model"):
        Client("grpc://127.0.0.1:1")
    with Client("grpc://127.0.0.1:1", model="m", retries=1, timeout=2) as client:
        with pytest.raises(ServiceError) as unanswered:
            client.predict([[[1.0]]])
        assert unanswered.value.status is None and unanswered.value.code == "UNAVAILABLE"
        with pytest.raises(ValueError, match="WebSocket"):
            client.stream("websocket")
        with pytest.raises(ValueError, match=r"inputs\[1\]"):
            client.predict([np.ones((2, 4)), np.ones((2, 3))])
    again = pickle.loads(pickle.dumps(ServiceError(400, "x: bad", "INVALID_ARGUMENT")))
    assert (again.status, again.detail, again.code) == (400, "x: bad", "INVALID_ARGUMENT")


def test_a_grpc_call_this_client_cannot_make_fails_before_it_is_sent(grpc_server: Any) -> None:
    url, server = grpc_server([None, None])
    for bad in ("grpc://127.0.0.1", "grpc://127.0.0.1:80/v2", "grpc://"):
        with pytest.raises(ValueError, match="host and port"):
            Client(bad, model="m")
    with pytest.raises(ValueError, match="api_key"):
        Client(url, model="m", api_key="k\nX")
    with Client(url.upper(), model="m", version=3) as client:  # the scheme in capitals, the version a number
        for inputs in ([], [[]], [np.ones((2, 4)), np.ones((2, 3))]):
            with pytest.raises(ValueError, match="inputs"):
                client.predict(inputs)
        with pytest.raises(ValueError, match="both or neither"):
            client.predict([[[1.0]]], h0=np.zeros((1, 1, 2)))
        client.predict([[[1.0]]])
    assert len(server.seen) == 1 and server.seen[0][0].model_version == "3"
    with pytest.raises(RuntimeError, match="closed"):
        client.predict([[[1.0]]])

    async def closed() -> None:
        client = AsyncClient(url, model="m")
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.predict([[[1.0]]])

    asyncio.run(closed())


def test_a_forecast_ahead_is_asked_for_and_read_back() -> None:
    seen: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        forecast = [{"mean": [[5.0], [6.0]], "quantiles": {"0.1": [[4.0], [4.5]], "0.9": [[6.0], [7.5]]}}]
        body = {"outputs": [[[5.0]]], "hn": [[[0.0]]], "cn": [[[0.0]]], "model": {"name": "m", "version": "3"}}
        return httpx.Response(200, json={**body, "forecast": forecast})

    with Client("http://lstm.invalid", transport=httpx.MockTransport(server)) as client:
        answer = client.predict([[[1.0]]], horizon=2, quantiles=[0.1, 0.9])
        assert seen[0]["forecast"] == {"horizon": 2, "quantiles": [0.1, 0.9]}
        assert answer.forecast is not None and answer.forecast[0].mean.tolist() == [[5.0], [6.0]]
        assert answer.forecast[0].quantiles["0.9"].tolist() == [[6.0], [7.5]]
        client.predict([[[1.0]]])
        assert "forecast" not in seen[1]
        with pytest.raises(ValueError, match="give a horizon"):
            client.predict([[[1.0]]], quantiles=[0.5])
    with Client("grpc://127.0.0.1:1", model="m") as rpc, pytest.raises(ValueError, match="over HTTP"):
        rpc.predict([[[1.0]]], horizon=2)
