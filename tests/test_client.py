"""lstm_client against the real server: predict, and streams over HTTP, the WebSocket and gRPC, sync and async."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from lstm_client import AsyncClient, Client, ServiceError

from .conftest import free_port, running_server


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    with running_server(repo, {"LSTM_WORKERS": "1", "LSTM_GRPC_PORT": str(port)}) as (address, proc):
        yield address, f"grpc://127.0.0.1:{port}"
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def url(served: tuple[str, str]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def grpc_url(served: tuple[str, str]) -> str:
    return served[1]


def test_predict_equals_the_raw_api(url: str, weather: np.ndarray) -> None:
    seqs = [weather[:9], weather[50:53]]
    raw = httpx.post(f"{url}/predict", json={"inputs": [s.tolist() for s in seqs]}).json()
    with Client(url) as client:
        answer = client.predict(seqs)
        again = client.predict([seqs[1]], answer.hn[1:], answer.cn[1:])  # states pass back as they come
    assert [o.shape for o in answer.outputs] == [(9, 1), (3, 1)]
    np.testing.assert_allclose(answer.outputs[1], raw["outputs"][1], atol=1e-6)
    np.testing.assert_allclose(answer.hn, raw["hn"], atol=1e-6)
    assert answer.model == {"name": "tiny", "version": "1"}
    assert not np.allclose(again.outputs[0], answer.outputs[1])


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_sync_stream_equals_one_call(url: str, weather: np.ndarray, transport: str) -> None:
    seq = weather[400:520]
    with Client(url) as client:
        whole = client.predict([seq]).outputs[0]
        with client.stream(transport) as stream:
            parts = [stream.send(seq[i : i + 25]) for i in range(0, 120, 25)]
            stream.reset()
            restarted = stream.send(seq[:25])
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(restarted, whole[:25], rtol=0, atol=1e-5)


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_async_stream_equals_one_call(url: str, weather: np.ndarray, transport: str) -> None:
    seq = weather[600:700]

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(url) as client:
            whole = (await client.predict([seq])).outputs[0]
            async with await client.stream(transport) as stream:
                parts = [await stream.send(seq[i : i + 30]) for i in range(0, 100, 30)]
        return whole, np.concatenate(parts)

    whole, streamed = asyncio.run(scenario())
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)


def test_errors_and_model_selection(url: str) -> None:
    with Client(url, model="tiny", version="1") as client:
        assert client.predict([[[0.0, 10.0, 5.0, 3.0]]]).model == {"name": "tiny", "version": "1"}
        with pytest.raises(ServiceError) as bad:
            client.predict([[[1.0, 2.0]]])
        assert bad.value.status == 422 and "inputs" in bad.value.detail
    with Client(url, model="nope") as client, pytest.raises(ServiceError) as missing:
        client.predict([[[0.0, 10.0, 5.0, 3.0]]])
    assert missing.value.status == 404


class LosingTransport(httpx.HTTPTransport):
    """Sends each request to the server, but loses the answers of the chosen ones on the way back: the server
    ran them, the client never hears."""

    def __init__(self, lose: set[int]) -> None:
        super().__init__()
        self.lose, self.sent = lose, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = super().handle_request(request)
        self.sent += 1
        if self.sent in self.lose:
            answer.read()
            raise httpx.ReadError("connection reset by peer", request=request)
        return answer


def test_a_server_held_sequence_survives_lost_answers(url: str, weather: np.ndarray) -> None:
    """Chunks numbered by the client: a chunk whose answer was lost is sent again, answered again, and applied
    once, so the stream still equals one call."""
    seq = weather[100:220]
    with Client(url) as client:
        whole = client.predict([seq]).outputs[0]
        client.http.close()
        client.http = httpx.Client(base_url=url, transport=LosingTransport({1, 3, 4, 7}))
        held = client.sequence()
        parts = [held.send(seq[i : i + 20], end=i == 100) for i in range(0, 120, 20)]
        assert client.http._transport.sent == 10  # type: ignore[attr-defined]  (6 chunks, 4 sent again)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-5)


def test_an_async_server_held_sequence_equals_one_call(url: str, weather: np.ndarray) -> None:
    seq = weather[300:390]

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(url) as client:
            whole = (await client.predict([seq])).outputs[0]
            held = client.sequence("async-held")
            parts = [await held.send(seq[i : i + 30], end=i == 60) for i in range(0, 90, 30)]
            with pytest.raises(ServiceError) as ended:
                await held.send(seq[:3])
            assert ended.value.status == 422 and "ended" in ended.value.detail
        return whole, np.concatenate(parts)

    whole, streamed = asyncio.run(scenario())
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)


def test_a_held_sequence_keeps_its_chunk_number_until_a_chunk_is_answered(url: str, weather: np.ndarray) -> None:
    """A chunk that failed after every retry leaves its number in doubt: sent again it is a replay or runs;
    a different chunk in its place is refused, never answered as a replay of another."""
    with Client(url, retries=0) as client:
        client.http.close()
        client.http = httpx.Client(base_url=url, transport=LosingTransport({2}))
        held = client.sequence()
        held.send(weather[:5])
        with pytest.raises(ServiceError) as lost:
            held.send(weather[5:10])  # run by the server, its answer lost, not retried
        assert lost.value.status is None and isinstance(lost.value.__cause__, httpx.ReadError)
        with pytest.raises(ServiceError) as refused:
            held.send(weather[20:25])  # another chunk with the same number
        assert refused.value.status == 409 and "other inputs" in refused.value.detail
        again = held.send(weather[5:10])  # the chunk in doubt, sent again: its replay
        whole = client.predict([weather[:10]]).outputs[0]
        np.testing.assert_allclose(again, whole[5:], rtol=0, atol=1e-5)


def test_grpc_answers_as_http_does(url: str, grpc_url: str, weather: np.ndarray) -> None:
    seqs = [weather[:9], weather[50:53]]
    with Client(url) as http, Client(grpc_url, model="tiny") as rpc:
        want = http.predict(seqs)
        got = rpc.predict(seqs)  # ragged: padded, with lengths
        assert [o.shape for o in got.outputs] == [(9, 1), (3, 1)] and got.model == {"name": "tiny", "version": "1"}
        for a, b in zip(got.outputs, want.outputs, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.hn, want.hn, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.cn, want.cn, rtol=0, atol=1e-6)
        on = rpc.predict([seqs[1]], got.hn[1:], got.cn[1:])  # states pass back as they come
        np.testing.assert_allclose(
            on.outputs[0], http.predict([seqs[1]], want.hn[1:], want.cn[1:]).outputs[0], atol=1e-6
        )
        with rpc.stream() as stream:  # states carried by the client, each chunk a gRPC call
            parts = [stream.send(weather[400:520][i : i + 25]) for i in range(0, 120, 25)]
        np.testing.assert_allclose(np.concatenate(parts), http.predict([weather[400:520]]).outputs[0], atol=1e-5)
        held = rpc.sequence()  # states kept by the server
        parts = [held.send(weather[200:260][i : i + 20], end=i == 40) for i in range(0, 60, 20)]
        np.testing.assert_allclose(np.concatenate(parts), http.predict([weather[200:260]]).outputs[0], atol=1e-5)
        with pytest.raises(ServiceError) as bad:
            rpc.predict([[[1.0, 2.0]]])
        assert (bad.value.status, bad.value.code) == (400, "INVALID_ARGUMENT") and "x" in bad.value.detail
    with Client(grpc_url, model="nope") as rpc, pytest.raises(ServiceError) as missing:
        rpc.predict([[[0.0, 10.0, 5.0, 3.0]]])
    assert (missing.value.status, missing.value.code) == (404, "NOT_FOUND")


def test_grpc_async_stream_equals_one_call(grpc_url: str, weather: np.ndarray) -> None:
    seq = weather[600:700]

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(grpc_url, model="tiny") as client:
            whole = (await client.predict([seq])).outputs[0]
            async with await client.stream() as stream:
                parts = [await stream.send(seq[i : i + 30]) for i in range(0, 100, 30)]
        return whole, np.concatenate(parts)

    whole, streamed = asyncio.run(scenario())
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)


def test_a_forecast_ahead_through_the_client(url: str, weather: np.ndarray) -> None:
    with Client(url) as client:
        answer = client.predict([weather[:12]], horizon=1)
        assert answer.forecast is not None and answer.forecast[0].quantiles == {}
        np.testing.assert_allclose(answer.forecast[0].mean[0], answer.outputs[0][-1], rtol=0, atol=1e-6)
        with pytest.raises(ServiceError) as refused:
            client.predict([weather[:12]], horizon=1, quantiles=[0.5])  # the tiny model has no intervals
        assert refused.value.status == 422 and "no intervals" in refused.value.detail
