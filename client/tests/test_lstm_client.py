"""The client on its own: what it sends again and when, what it raises. A scripted server (httpx's MockTransport)
stands in for the service, so these run where only the client is installed."""

import asyncio
import itertools
import time
from typing import Any

import httpx
import lstm_client
import numpy as np
import pytest
from lstm_client import AsyncClient, Client, ServiceError


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
