"""The Open Inference Protocol, through the real tritonclient[http] client against the real server."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import running_server, windows


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[str, triton.InferenceServerClient]]:
    with running_server(repo, {"LSTM_WORKERS": "1"}) as (url, proc):
        client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        yield url, client
        client.close()
        proc.terminate()
        proc.wait(20)


def tensors(binary: bool, x: np.ndarray, states: tuple | None = None, lengths: np.ndarray | None = None) -> list:
    named = [("x", x)]
    if states is not None:
        named += [("h0", states[0]), ("c0", states[1])]
    if lengths is not None:
        named.append(("lengths", lengths))
    out = []
    for name, array in named:
        t = triton.InferInput(name, list(array.shape), "INT32" if name == "lengths" else "FP32")
        t.set_data_from_numpy(array, binary_data=binary)
        out.append(t)
    return out


def infer(client: triton.InferenceServerClient, binary: bool, *args: object) -> dict[str, np.ndarray]:
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("y", "hn", "cn")]
    result = client.infer("tiny", tensors(binary, *args), outputs=outputs)  # type: ignore[arg-type]
    return {n: result.as_numpy(n) for n in ("y", "hn", "cn")}


def test_health_and_metadata(served: tuple) -> None:
    _, client = served
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("tiny")
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {
        "x": [-1, -1, 4],
        "h0": [2, -1, 8],
        "c0": [2, -1, 8],
        "lengths": [-1],
    }
    assert [t["name"] for t in meta["outputs"]] == ["y", "hn", "cn"]
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope")


def test_tritonclient_reads_the_repository_index(served: tuple) -> None:
    _, client = served
    assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY"}]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_equals_predict_with_and_without_states(
    served: tuple, binary: bool, weather: np.ndarray, rng: np.random.Generator
) -> None:
    url, client = served
    lengths = [12, 3, 7]
    seqs = windows(weather, lengths, rng)
    x = np.zeros((3, 12, 4), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    h0 = (rng.standard_normal((2, 3, 8)) * 0.4).astype(np.float32)
    c0 = (rng.standard_normal((2, 3, 8)) * 0.4).astype(np.float32)
    for states in (None, (h0, c0)):
        got = infer(client, binary, x, states, np.array(lengths, dtype=np.int32))
        body: dict = {"inputs": [s.tolist() for s in seqs]}
        if states is not None:
            body["h0"], body["c0"] = h0.transpose(1, 0, 2).tolist(), c0.transpose(1, 0, 2).tolist()
        want = httpx.post(f"{url}/predict", json=body).json()
        for i, n in enumerate(lengths):
            np.testing.assert_allclose(got["y"][i, :n], want["outputs"][i], rtol=0, atol=1e-5)
            assert not got["y"][i, n:].any()  # zero past each sequence's end, never the head's bias
        np.testing.assert_allclose(got["hn"].transpose(1, 0, 2), want["hn"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["cn"].transpose(1, 0, 2), want["cn"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_stream_in_chunks_passing_states_back_equals_one_call(served: tuple, binary: bool, weather: np.ndarray) -> None:
    _, client = served
    seq = weather[None, 200:300].astype(np.float32)
    whole = infer(client, binary, seq)
    ys, states = [], None
    for start in range(0, 100, 30):
        part = infer(client, binary, seq[:, start : start + 30], states)
        ys.append(part["y"])
        states = (part["hn"], part["cn"])
    np.testing.assert_allclose(np.concatenate(ys, axis=1), whole["y"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(states[0], whole["hn"], rtol=0, atol=1e-5)  # type: ignore[index]
    np.testing.assert_allclose(states[1], whole["cn"], rtol=0, atol=1e-5)  # type: ignore[index]


def test_errors_name_what_is_wrong(served: tuple) -> None:
    url, client = served
    zeros = np.zeros((1, 3, 4), np.float32)
    twice = tensors(False, zeros)[:1] + tensors(False, np.zeros((2, 1, 8), np.float32))[:1]  # two called "x"
    cases = [
        (tensors(False, np.zeros((1, 3, 5), np.float32)), "x: Should have shape [-1, -1, 4]"),
        (tensors(True, np.full((1, 2, 4), np.inf, np.float32)), "x.0.0.0: Input should be a finite number"),
        (tensors(False, zeros, None, np.array([4], np.int32)), "lengths.0: 4 is outside 1..3"),
        (twice, "given twice"),
    ]
    for inputs, says in cases:
        with pytest.raises(InferenceServerException, match=says.replace("[", r"\[").replace("]", r"\]")):
            client.infer("tiny", inputs)
    with pytest.raises(InferenceServerException, match="No model 'nope'"):
        client.infer("nope", tensors(False, np.zeros((1, 1, 4), np.float32)))
    only_h0 = {
        "inputs": [
            {"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "h0", "shape": [2, 1, 8], "datatype": "FP32", "data": [0] * 16},
        ]
    }
    r = httpx.post(f"{url}/v2/models/tiny/infer", json=only_h0)
    assert r.status_code == 400 and "both or neither" in r.json()["error"]
    for data in (["1", "2", "3", "4"], [True, False, True, 1.0], [None, 1, 2, 3], [[1, 2], [3, "x"]]):
        bad = {"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": data}]}
        r = httpx.post(f"{url}/v2/models/tiny/infer", json=bad)
        error = r.json()["error"]
        assert r.status_code == 400 and error.startswith("inputs.0.data"), data
    assert httpx.get(f"{url}/v2/models/tiny/versions/7").status_code == 404


def test_tritonclient_streams_a_sequence_the_server_holds(
    served: tuple[str, triton.InferenceServerClient], weather: np.ndarray
) -> None:
    """Triton's sequence extension: the same sequence_id on every chunk, no states sent; equal to one call."""
    _, client = served
    x = np.ascontiguousarray(windows(weather, [37], np.random.default_rng(5))[0][None].astype(np.float32))
    whole = infer(client, True, x)
    pieces, ends = [], [5, 17, 18, 30, 37]
    for k, (a, b) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        binary = k % 2 == 0  # JSON and binary chunks of one sequence
        last = client.infer(
            "tiny",
            tensors(binary, np.ascontiguousarray(x[:, a:b])),
            outputs=[triton.InferRequestedOutput(n, binary_data=binary) for n in ("y", "hn", "cn")],
            sequence_id=4242,
            sequence_start=k == 0,
            sequence_end=b == 37,
        )
        pieces.append(last.as_numpy("y"))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole["y"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(last.as_numpy("hn"), whole["hn"], rtol=0, atol=1e-5)
    with pytest.raises(InferenceServerException, match="4242"):  # ended: forgotten
        client.infer("tiny", tensors(True, x[:, :3]), sequence_id=4242)
    assert "sequence" in client.get_server_metadata()["extensions"]
