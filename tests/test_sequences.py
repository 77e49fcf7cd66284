"""Server-held sequences through the pipeline (service/pipeline/sequences.py), on /predict, /v1 and /v2:
chunks of one sequence equal one whole call, and every semantic the issue names holds."""

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.settings import Settings

from .conftest import app_client, windows

INFER = "/v2/models/tiny/infer"


@pytest.fixture(scope="module")
def c(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings) as client:
        yield client


def rest(c: TestClient, x: np.ndarray, sequence: dict[str, Any] | None, **extra: Any) -> Any:
    body: dict[str, Any] = {"inputs": [x.tolist()], **extra}
    if sequence is not None:
        body["sequence"] = sequence
    return c.post("/predict", json=body)


def oip(c: TestClient, x: np.ndarray, **parameters: Any) -> Any:
    doc = {
        "inputs": [{"name": "x", "shape": [1, *x.shape], "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": parameters,
    }
    return c.post(INFER, json=doc)


def chunks(x: np.ndarray, ends: list[int]) -> list[np.ndarray]:
    return [x[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


@pytest.mark.parametrize("seq_id", [7, "device-7", 2**64 - 1])
def test_chunks_of_a_server_held_sequence_equal_one_call(c: TestClient, weather: np.ndarray, seq_id: Any) -> None:
    x = windows(weather, [41], np.random.default_rng(3))[0]
    whole = rest(c, x, None).json()
    outputs = []
    parts = chunks(x, [1, 9, 10, 33, 41])
    for k, part in enumerate(parts):
        answer = rest(c, part, {"id": seq_id, "start": k == 0, "end": k == len(parts) - 1})
        assert answer.status_code == 200, answer.text
        outputs += answer.json()["outputs"][0]
    np.testing.assert_allclose(outputs, whole["outputs"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(answer.json()["hn"], whole["hn"], rtol=0, atol=1e-5)
    r = rest(c, x[:2], {"id": seq_id})  # ended, and said so
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sequence", "id"]
    assert r.json()["detail"][0]["msg"] == f"Sequence {seq_id!r} ended: start it again to use its id anew"


def test_a_retried_chunk_is_answered_again_and_applied_once(c: TestClient, weather: np.ndarray) -> None:
    """Numbered chunks: a client that lost an answer sends the chunk again and gets the same numbers, on any
    protocol, and the sequence goes on as if it had been sent once."""
    x = windows(weather, [40], np.random.default_rng(11))[0].astype(np.float32)
    whole = rest(c, x, None).json()["outputs"][0]
    parts = chunks(x, [10, 20, 30, 40])
    got: list[Any] = []
    first = rest(c, parts[0], {"id": "retry", "start": True, "chunk": 0}).json()["outputs"][0]
    again = rest(c, parts[0], {"id": "retry", "start": True, "chunk": 0}).json()["outputs"][0]  # a start restarts
    assert again == first
    got += first
    answer = rest(c, parts[1], {"id": "retry", "chunk": 1}).json()
    replay = rest(c, parts[1], {"id": "retry", "chunk": 1}).json()  # its answer was lost: sent again
    np.testing.assert_array_equal(replay["outputs"], answer["outputs"])
    np.testing.assert_array_equal(replay["hn"], answer["hn"])
    got += answer["outputs"][0]
    r = oip(c, parts[2], sequence_id="retry", sequence_chunk=2)
    y = next(o for o in r.json()["outputs"] if o["name"] == "y")["data"]
    r = oip(c, parts[2], sequence_id="retry", sequence_chunk=2)
    assert r.status_code == 200 and next(o for o in r.json()["outputs"] if o["name"] == "y")["data"] == y
    got += np.asarray(y).reshape(10, -1).tolist()
    with c.websocket_connect("/v1/models/tiny/stream") as ws:
        for _ in range(2):  # the end, sent twice
            ws.send_json(
                {"stream": "a", "inputs": parts[3].tolist(), "sequence": {"id": "retry", "end": True, "chunk": 3}}
            )
            end = ws.receive_json()
            assert end["chunk"] == 3
        got += end["outputs"]
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)  # each chunk applied once


def test_a_chunk_out_of_order_is_a_409_naming_its_number(c: TestClient) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    assert rest(c, x, {"id": "order", "start": True, "chunk": 0}).status_code == 200
    assert rest(c, x, {"id": "order", "chunk": 1}).status_code == 200
    r = rest(c, x, {"id": "order", "chunk": 3})
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == [
        {
            "loc": ["body", "sequence", "chunk"],
            "msg": "Chunk 3 skips ahead; 2 is next, in sequence 'order'",
            "type": "sequence_chunk_order",
            "ctx": {"expected": 2},
        }
    ]
    r = oip(c, x, sequence_id="order", sequence_chunk=0 + 5)
    assert r.status_code == 409 and r.json()["error"].startswith("parameters.sequence_chunk: ")
    with c.websocket_connect("/v1/models/tiny/stream") as ws:
        ws.send_json({"stream": "a", "inputs": x.tolist(), "sequence": {"id": "order", "chunk": 7}})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1007 and closed.value.reason.startswith("sequence.chunk: ")
    assert rest(c, x, {"id": "order", "chunk": 2}).status_code == 200  # refusals changed nothing
    r = rest(c, x, {"id": "order", "chunk": 1})
    assert r.status_code == 409 and r.json()["detail"][0]["msg"].startswith("Chunk 1 was already run; 3 is next")
    r = rest(c, x + 1, {"id": "order", "chunk": 2})  # the last chunk's number, other inputs: not a retry
    assert r.status_code == 409 and r.json()["detail"][0]["type"] == "sequence_chunk_reused", r.text
    assert r.json()["detail"][0]["msg"] == (
        "Chunk 2 was run with other inputs; 3 is next (a retry resends the same chunk)"
    )
    r = rest(c, x, {"id": "order", "chunk": 2, "end": True})  # nor is the same inputs ending it
    assert r.status_code == 409 and r.json()["detail"][0]["type"] == "sequence_chunk_reused"
    assert rest(c, x, {"id": "order", "chunk": 2}).status_code == 200  # the true retry is a replay
    assert rest(c, x, {"id": "order", "chunk": 3}).status_code == 200


def test_the_same_sequence_on_every_protocol(c: TestClient, weather: np.ndarray) -> None:
    """/predict, /v1 and /v2 share the store: a sequence started on one goes on on the others."""
    x = windows(weather, [30], np.random.default_rng(4))[0].astype(np.float32)
    whole = rest(c, x, None).json()["outputs"][0]
    got = rest(c, x[:10], {"id": "shared", "start": True}).json()["outputs"][0]
    r = c.post("/v1/models/tiny/predict", json={"inputs": [x[10:20].tolist()], "sequence": {"id": "shared"}})
    got += r.json()["outputs"][0]
    r = oip(c, x[20:], sequence_id="shared", sequence_end=True)
    assert r.status_code == 200, r.text
    y = next(o for o in r.json()["outputs"] if o["name"] == "y")
    got += np.asarray(y["data"]).reshape(10, -1).tolist()
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)


def test_a_start_may_give_initial_states_and_only_a_start(c: TestClient, weather: np.ndarray) -> None:
    x = windows(weather, [12], np.random.default_rng(6))[0]
    h0 = np.full((1, 2, 8), 0.3).tolist()
    given = rest(c, x, None, h0=h0, c0=h0).json()
    a = rest(c, x[:5], {"id": "given", "start": True}, h0=h0, c0=h0).json()
    b = rest(c, x[5:], {"id": "given"}).json()
    np.testing.assert_allclose(a["outputs"][0] + b["outputs"][0], given["outputs"][0], rtol=0, atol=1e-5)
    r = rest(c, x[:2], {"id": "given"}, h0=h0, c0=h0)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "h0"]
    r = oip(c, x[:2], sequence_id="given", sequence_start=False)
    assert r.status_code == 200  # the sequence was left as it was


@pytest.mark.parametrize(
    ("sequence", "loc"),
    [
        ({"id": 0}, ["body", "sequence", "id"]),
        ({"id": -1}, ["body", "sequence", "id"]),
        ({"id": 2**64}, ["body", "sequence", "id"]),
        ({"id": ""}, ["body", "sequence", "id"]),
        ({"id": "x" * 257}, ["body", "sequence", "id"]),
        ({"id": True}, ["body", "sequence", "id"]),
        ({"id": 1.5}, ["body", "sequence", "id"]),
        ({"id": [1]}, ["body", "sequence", "id"]),
        ({"start": True}, ["body", "sequence", "id"]),
        ({"id": 1, "start": "yes"}, ["body", "sequence", "start"]),
        ({"id": 1, "end": 1}, ["body", "sequence", "end"]),
        ({"id": 1, "other": 1}, ["body", "sequence", "other"]),
        ({"id": 1, "chunk": -1}, ["body", "sequence", "chunk"]),
        ({"id": 1, "chunk": 1.0}, ["body", "sequence", "chunk"]),
        ({"id": 1, "chunk": "1"}, ["body", "sequence", "chunk"]),
        ({"id": 1, "chunk": True}, ["body", "sequence", "chunk"]),
        ({"id": 1, "chunk": 2**63}, ["body", "sequence", "chunk"]),
        ({"id": 1, "chunk": 0}, ["body", "sequence", "chunk"]),
        ({"id": 1, "start": True, "chunk": 1}, ["body", "sequence", "chunk"]),
        ("seq-1", ["body", "sequence"]),
    ],
)
def test_a_bad_sequence_is_a_422_naming_it(c: TestClient, sequence: Any, loc: list) -> None:
    r = c.post("/predict", json={"inputs": [[[0.5, 11.1, 4.4, 2.8]]], "sequence": sequence})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text


def test_a_request_naming_a_sequence_holds_one(c: TestClient) -> None:
    r = c.post("/predict", json={"inputs": [[[0.5, 11.1, 4.4, 2.8]]] * 2, "sequence": {"id": 1, "start": True}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs"]
    doc = {
        "inputs": [{"name": "x", "shape": [2, 1, 4], "datatype": "FP32", "data": [0.5, 11.1, 4.4, 2.8] * 2}],
        "parameters": {"sequence_id": 1, "sequence_start": True},
    }
    r = c.post(INFER, json=doc)
    assert r.status_code == 400 and r.json()["error"].startswith("x:")


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"sequence_id": 0}, "sequence_id"),
        ({"sequence_id": -3}, "sequence_id"),
        ({"sequence_id": 1.5}, "sequence_id"),
        ({"sequence_id": True}, "sequence_id"),
        ({"sequence_id": ""}, "sequence_id"),
        ({"sequence_id": 1, "sequence_start": "true"}, "sequence_start"),
        ({"sequence_id": 1, "sequence_end": 0}, "sequence_end"),
        ({"sequence_id": "never-started"}, "sequence_id"),
        ({"sequence_chunk": 1}, "sequence_chunk"),
        ({"sequence_chunk": 0}, "sequence_chunk"),
        ({"sequence_chunk": False}, "sequence_chunk"),
        ({"sequence_chunk": 0.0}, "sequence_chunk"),
        ({"sequence_id": 1, "sequence_chunk": -1}, "sequence_chunk"),
        ({"sequence_id": 1, "sequence_chunk": "2"}, "sequence_chunk"),
        ({"sequence_id": 1, "sequence_start": True, "sequence_chunk": 3}, "sequence_chunk"),
    ],
)
def test_bad_sequence_parameters_are_a_400_naming_them(c: TestClient, parameters: dict, field: str) -> None:
    r = oip(c, np.zeros((1, 4), dtype=np.float32) + 1, **parameters)
    assert r.status_code == 400 and f"parameters.{field}" in r.json()["error"], r.text


def test_an_idle_sequence_expires_and_says_so(settings: Settings) -> None:
    with app_client(settings, sequence_idle_s=0.3) as c:
        x = np.ones((2, 4)) * 3
        assert rest(c, x, {"id": "idle", "start": True}).status_code == 200
        time.sleep(0.4)
        r = rest(c, x, {"id": "idle"})
        assert r.status_code == 422 and "expired after 0.3 s" in r.json()["detail"][0]["msg"]
        r = oip(c, x.astype(np.float32), sequence_id="idle")
        assert r.status_code == 400 and "expired" in r.json()["error"]
        assert rest(c, x, {"id": "idle", "start": True}).status_code == 200  # and it starts again


def test_at_most_so_many_live_sequences(settings: Settings) -> None:
    with app_client(settings, max_sequences=2) as c:
        x = np.ones((2, 4))
        for k in range(2):
            assert rest(c, x, {"id": k + 1, "start": True}).status_code == 200
        r = rest(c, x, {"id": 3, "start": True})
        assert r.status_code == 429 and "2 sequences are live" in r.json()["detail"]
        assert oip(c, x.astype(np.float32), sequence_id=3, sequence_start=True).status_code == 429
        assert rest(c, x, {"id": 1, "end": True}).status_code == 200  # one ends: room for another
        assert rest(c, x, {"id": 3, "start": True}).status_code == 200


def test_a_websocket_stream_resumes_its_sequence_on_a_new_connection(c: TestClient, weather: np.ndarray) -> None:
    x = windows(weather, [30], np.random.default_rng(8))[0]
    whole = rest(c, x, None).json()["outputs"][0]
    got: list[Any] = []
    parts = chunks(x, [4, 11, 23, 30])
    for k, part in enumerate(parts):  # a new connection for every chunk: a disconnect, a restart
        with c.websocket_connect("/v1/models/tiny/stream") as ws:
            seq = {"id": "ws-resume", "start": k == 0, "end": k == len(parts) - 1}
            ws.send_json({"stream": "a", "inputs": part.tolist(), "sequence": seq})
            answer = ws.receive_json()
            assert answer["sequence"] == "ws-resume" and answer["stream"] == "a"
            got += answer["outputs"]
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)
    with c.websocket_connect("/v1/models/tiny/stream") as ws:  # ended, said with close 1007
        ws.send_json({"stream": "a", "inputs": x[:2].tolist(), "sequence": {"id": "ws-resume"}})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1007 and closed.value.reason.startswith("sequence.id: Sequence 'ws-resume'")


def test_a_sequence_goes_on_only_on_the_model_version_it_started_on(settings: Settings, tmp_path: Any) -> None:
    """Another version's weights would silently carry the old states on: the sequence is not theirs."""
    import shutil

    repo = tmp_path / "models"
    shutil.copytree(settings.model_repository, repo)
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    with app_client(settings, model_repository=repo) as c:
        x = [[0.5, 11.1, 4.4, 2.8]] * 3
        start = {"inputs": [x], "sequence": {"id": "versioned", "start": True}}
        assert c.post("/v1/models/tiny/versions/1/predict", json=start).status_code == 200
        go_on = {"inputs": [x], "sequence": {"id": "versioned"}}
        assert c.post("/v1/models/tiny/versions/1/predict", json=go_on).status_code == 200
        r = c.post("/v1/models/tiny/versions/2/predict", json=go_on)
        assert r.status_code == 422 and "is not known" in r.json()["detail"][0]["msg"]


def test_no_model_name_or_id_spells_another_ones_key() -> None:
    from service.model.contract import ModelSpec
    from service.pipeline.sequences import SequenceRef

    def spec(name: str, version: str = "1") -> ModelSpec:
        return ModelSpec(name, version, 4, 1, 8, 2, ["a", "b", "c", "d"], ["y"], metadata={})

    keys = {
        SequenceRef("foo").key(spec("w:s")),
        SequenceRef("s:foo").key(spec("w")),
        SequenceRef(5).key(spec("w")),
        SequenceRef("5").key(spec("w")),
        SequenceRef(5).key(spec("w", "2")),
        SequenceRef('5"]').key(spec("w")),
    }
    assert len(keys) == 6


def test_a_chunk_running_past_the_lease_keeps_its_sequence(tmp_path: Any) -> None:
    """A claim lasts a short lease (so that a replica that died mid-chunk holds its sequence briefly), and is
    renewed while its chunk runs: a slow chunk is never overtaken, and the 409 says how long to wait."""
    import asyncio

    from service.model.batch import Batch, SequenceResult
    from service.model.contract import ModelSpec
    from service.pipeline.dataplane import Call, Outcome
    from service.pipeline.errors import SequenceBusy
    from service.pipeline.sequences import SequenceRef, Sequences
    from service.state.embedded import EmbeddedStore
    from service.state.store import Terms

    spec = ModelSpec("m", "1", 4, 1, 8, 2, ["a", "b", "c", "d"], ["y"], metadata={})
    lease = 0.3

    def chunk(ref: SequenceRef) -> Call[None]:
        zeros = np.zeros((2, 1, 8), dtype=np.float32)
        return Call(Batch([np.ones((3, 4), dtype=np.float32)], zeros, zeros), sequence=ref)

    async def infer(call: Call[Any], seconds: float) -> Outcome:
        await asyncio.sleep(seconds)
        h = call.batch.h0[:, 0] + 1  # each chunk adds one: the count of chunks applied
        return Outcome([SequenceResult(np.zeros((3, 1), dtype=np.float32), h, h)])

    async def run() -> None:
        sequences = Sequences(EmbeddedStore(tmp_path / "s.db", Terms(idle_s=60, max_sequences=10, lease_s=lease)))
        await sequences.run(chunk(SequenceRef("slow", start=True)), spec, lambda c: infer(c, 0))
        slow = asyncio.ensure_future(sequences.run(chunk(SequenceRef("slow")), spec, lambda c: infer(c, 4 * lease)))
        await asyncio.sleep(2 * lease)  # past the lease: renewed, still held
        with pytest.raises(SequenceBusy) as busy:
            await sequences.run(chunk(SequenceRef("slow")), spec, lambda c: infer(c, 0))
        assert busy.value.headers == {"Retry-After": "1"}  # what the claim has left, rounded up
        await slow
        last = await sequences.run(chunk(SequenceRef("slow", end=True)), spec, lambda c: infer(c, 0))
        assert last.results[0].hn[0, 0] == 3  # start, the slow chunk, this one: each applied once
        await sequences.store.close()

    asyncio.run(run())
