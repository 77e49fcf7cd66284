"""Explanations: the numpy reference against ONNX Runtime's states and PyTorch's own gates."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from service.model.explain import FIELDS, Explainer, ExplainUnavailable
from training.export import load_checkpoint

from .conftest import windows


def explain(client: TestClient, seqs: list, h0: object = None, c0: object = None) -> dict:
    body: dict = {"inputs": [np.asarray(s).tolist() for s in seqs], "explain": True}
    if h0 is not None:
        body["h0"], body["c0"] = h0, c0
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_last_step_equals_onnx_runtime_states_in_a_mixed_batch(
    client: TestClient, weather: np.ndarray, rng: np.random.Generator
) -> None:
    lengths = [1, 40, 9, 23]
    h0 = (rng.standard_normal((4, 2, 8)) * 0.5).tolist()
    c0 = (rng.standard_normal((4, 2, 8)) * 0.5).tolist()
    out = explain(client, windows(weather, lengths, rng), h0, c0)
    assert len(out["explanation"]) == 4
    for i, n in enumerate(lengths):
        ex = {k: np.asarray(v) for k, v in out["explanation"][i].items()}
        assert set(ex) == set(FIELDS)
        assert all(a.shape == (2, n, 8) for a in ex.values())  # [layer][step][unit], its own steps only
        for layer in range(2):
            np.testing.assert_allclose(ex["cell"][layer, -1], out["cn"][i][layer], rtol=0, atol=1e-5)
            np.testing.assert_allclose(ex["hidden"][layer, -1], out["hn"][i][layer], rtol=0, atol=1e-5)
        for gate in ("forget", "input", "output"):
            assert ((ex[gate] > 0) & (ex[gate] < 1)).all()
        assert (np.abs(ex["candidate"]) < 1).all()
        np.testing.assert_allclose(ex["hidden"], np.asarray(ex["output"]) * np.tanh(ex["cell"]), atol=1e-6)


def test_chunked_stream_explains_like_one_call(client: TestClient, weather: np.ndarray) -> None:
    seq = weather[500:600]
    whole = explain(client, [seq])
    parts: list[dict] = []
    h0 = c0 = None
    for start in range(0, 100, 7):
        out = explain(client, [seq[start : start + 7]], h0, c0)
        ex = out["explanation"][0]
        for layer in range(2):
            np.testing.assert_allclose(ex["cell"][layer][-1], out["cn"][0][layer], rtol=0, atol=1e-5)
            np.testing.assert_allclose(ex["hidden"][layer][-1], out["hn"][0][layer], rtol=0, atol=1e-5)
        parts.append(ex)
        h0, c0 = out["hn"], out["cn"]
    for name in FIELDS:
        joined = np.concatenate([np.asarray(p[name]) for p in parts], axis=1)
        np.testing.assert_allclose(joined, whole["explanation"][0][name], rtol=0, atol=1e-5)


def test_reference_matches_pytorch_gate_by_gate(tiny_run: Path, repo: Path, weather: np.ndarray) -> None:
    """PyTorch orders its gate rows i, f, g, o and ONNX i, o, f, c: recompute each gate from PyTorch's weights."""
    model, _ = load_checkpoint(tiny_run / "checkpoint.pt")
    ex = Explainer.from_onnx((repo / "tiny" / "1" / "model.onnx").read_bytes())
    x = weather[:30]
    zeros = np.zeros((2, 8), dtype=np.float32)
    got = ex.explain(x, zeros, zeros)
    with torch.no_grad():
        z = (torch.from_numpy(x) - model.x_mean) / model.x_std
        layer_in = z
        for layer in range(2):
            w_ih, w_hh = getattr(model.lstm, f"weight_ih_l{layer}"), getattr(model.lstm, f"weight_hh_l{layer}")
            b = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
            h_prev = torch.cat([torch.zeros(1, 8), torch.from_numpy(got["hidden"][layer][:-1])])
            pre = layer_in @ w_ih.T + h_prev @ w_hh.T + b
            i, f, g, o = pre.chunk(4, dim=1)
            want = {"input": i.sigmoid(), "forget": f.sigmoid(), "candidate": g.tanh(), "output": o.sigmoid()}
            for name in want:
                np.testing.assert_allclose(got[name][layer], want[name].numpy(), rtol=0, atol=1e-5, err_msg=name)
            layer_in = torch.from_numpy(got["hidden"][layer])
        y, _ = model.lstm(z[None])
    np.testing.assert_allclose(got["hidden"][1], y[0].numpy(), rtol=0, atol=1e-5)


def test_plain_request_has_no_explanation(client: TestClient) -> None:
    assert "explanation" not in client.post("/predict", json={"inputs": [[[0, 10, 5, 3]]]}).json()


def test_explanation_limit_is_enforced_and_lower_than_predict(client: TestClient) -> None:
    limit = client.get("/model").json()["limits"]["explain_max_values"]
    steps = limit // (2 * 8) + 1
    assert steps <= client.get("/model").json()["limits"]["max_steps"]
    body = {"inputs": [[[0, 10, 5, 3]] * steps]}
    assert client.post("/predict", json=body).status_code == 200
    r = client.post("/predict", json={**body, "explain": True})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "explain"] and str(limit) in err["msg"]


def test_a_graph_it_cannot_read_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    with pytest.raises(ExplainUnavailable):
        Explainer.from_onnx((tmp_path / "m.onnx").read_bytes())


@pytest.mark.parametrize("model", ["tiny/1", "shipped 3"])
def test_cli_draws_the_gates_of_a_model(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """A one-step model, and the shipped one of seven horizons (whose outputs, temp_max+1 ..., are no columns)."""
    from training.__main__ import main

    from .conftest import DATA, ROOT

    folder = repo / "tiny" / "1" if model == "tiny/1" else ROOT / "models" / "seattle-weather" / "3"
    out = tmp_path / "gates.png"
    args = ["explain", "--model", str(folder), "--data", str(DATA), "--steps", "60", "--out", str(out)]
    assert main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert '"layer": 1' in printed and f'"units": {8 if model == "tiny/1" else 64}' in printed
