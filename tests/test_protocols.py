"""Every rule on every protocol: /predict, /v2 (JSON and binary) and the WebSocket stream refuse the same
defects, each in its own shape, name the place at fault, and give the same numbers."""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.pipeline.errors import where
from service.settings import Settings

from .conftest import app_client

ROW = [0.5, 11.1, 4.4, 2.8]
INFER = "/v2/models/tiny/infer"
STREAM = "/v1/models/tiny/stream"


@pytest.fixture(scope="module")
def c(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings) as client:
        yield client


def rest(c: TestClient, seqs: list[Any], states: tuple[Any, Any] | None = None) -> tuple[bool, str]:
    body: dict[str, Any] = {"inputs": seqs}
    if states is not None:
        body["h0"], body["c0"] = states
    r = c.post("/predict", content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text
    return r.status_code == 200, "" if r.status_code == 200 else "; ".join(
        f"{where(d['loc'])}: {d['msg']}" for d in r.json()["detail"]
    )


def oip(c: TestClient, seqs: list[Any], states: tuple[Any, Any] | None = None) -> tuple[bool, str]:
    """x as JSON data [batch, steps, 4] (shape from the outer lists), states as [layers, batch, hidden]."""
    steps = max((len(s) if isinstance(s, list) else 1 for s in seqs), default=0)
    inputs = [{"name": "x", "datatype": "FP32", "shape": [len(seqs), steps, 4], "data": seqs}]
    lengths = [len(s) for s in seqs]
    if len(set(lengths)) > 1 and all(isinstance(step, list) and len(step) == 4 for s in seqs for step in s):
        padded = [s + [[0.0] * 4] * (steps - len(s)) for s in seqs]  # the protocol's way: padding and lengths
        inputs = [
            {"name": "x", "datatype": "FP32", "shape": [len(seqs), steps, 4], "data": padded},
            {"name": "lengths", "datatype": "INT32", "shape": [len(seqs)], "data": lengths},
        ]
    if states is not None:
        for name, s in zip(("h0", "c0"), states, strict=True):
            if s is not None:
                data = np.asarray(s, dtype=object).transpose(1, 0, 2).tolist() if _rect(s) else s
                inputs.append({"name": name, "datatype": "FP32", "shape": [2, len(seqs), 8], "data": data})
    r = c.post(INFER, content=orjson.dumps({"inputs": inputs}))
    assert r.status_code in (200, 400), r.text
    return r.status_code == 200, "" if r.status_code == 200 else r.json()["error"]


def _rect(s: Any) -> bool:
    try:
        return np.asarray(s, dtype=object).ndim == 3
    except ValueError:
        return False


def ws(c: TestClient, seqs: list[Any], states: tuple[Any, Any] | None = None) -> tuple[bool, str]:
    """Each sequence as a message of its own stream (the WebSocket takes one sequence a message)."""
    with c.websocket_connect(STREAM) as conn:
        for i, seq in enumerate(seqs):
            msg: dict[str, Any] = {"stream": str(i), "inputs": seq}
            if states is not None:
                msg["h0"], msg["c0"] = (None if s is None else s[i] for s in states)
            conn.send_text(orjson.dumps(msg).decode())
            try:
                conn.receive_json()
            except WebSocketDisconnect as closed:
                assert closed.code == 1007, (closed.code, closed.reason)
                return False, closed.reason
    return True, ""


PROTOCOLS: dict[str, Callable[..., tuple[bool, str]]] = {"rest": rest, "oip": oip, "websocket": ws}
GOOD = [[ROW, ROW], [ROW, ROW]]
STATE = [[[0.1] * 8] * 2] * 2  # [batch][layer][unit]


def _with(value: Any) -> list[Any]:
    return [[ROW, [ROW[0], value, *ROW[2:]]], [ROW, ROW]]


# (sequences, states, the place each protocol names: /predict's loc, /v2's field and index, the
# WebSocket's field and index; a message there holds one sequence)
DEFECTS: dict[str, tuple[list[Any], Any, tuple[str, str, str]]] = {
    "boolean true": (_with(True), None, ("inputs.0.1.1", "inputs.0.data.0.1.1", "inputs.1.1")),
    "boolean false": (_with(False), None, ("inputs.0.1.1", "inputs.0.data.0.1.1", "inputs.1.1")),
    "string": (_with("1.5"), None, ("inputs.0.1.1", "inputs.0.data.0.1.1", "inputs.1.1")),
    "null": (_with(None), None, ("inputs.0.1.1", "inputs.0.data.0.1.1", "inputs.1.1")),
    "beyond float32": (_with(1e39), None, ("inputs.0.1.1", "inputs.0.data.5", "inputs.1.1")),
    "nested list": (_with([1.0]), None, ("inputs.0.1.1", "inputs.0.data.0.1.1", "inputs.1.1")),
    "nested empty lists that add up": (
        [[[*ROW[:3], []], [*ROW[:3], [1.0, 2.0]]]],
        None,
        ("inputs.0.0.3", "inputs.0.data.0.0.3", "inputs.0.3"),
    ),
    "too few values": ([[ROW, ROW[:3]]], None, ("inputs.0.1", "inputs.0.data.0.1", "inputs.1")),
    "too many values": ([[ROW, [*ROW, 1.0]]], None, ("inputs.0.1", "inputs.0.data.0.1", "inputs.1")),
    "a step that is a number": ([[ROW, 5]], None, ("inputs.0.1", "inputs.0.data.0.1", "inputs.1")),
    "states holding booleans": (GOOD, ([[[True] * 8] * 2] * 2, STATE), ("h0.0.0.0", "inputs.1.data.0.0.0", "h0.0.0")),
    "h0 without c0": (GOOD, (STATE, None), ("c0", "c0", "c0")),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("defect", DEFECTS)
def test_every_protocol_refuses_every_defect_and_names_it(c: TestClient, protocol: str, defect: str) -> None:
    seqs, states, places = DEFECTS[defect]
    ok, says = PROTOCOLS[protocol](c, seqs, states)
    assert not ok, f"{protocol} took {defect}"
    where = places[list(PROTOCOLS).index(protocol)]
    assert says.startswith(where + ":") or f"; {where}:" in says, (protocol, where, says)
    assert c.get("/health/ready").status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_takes_the_good_request(c: TestClient, protocol: str) -> None:
    assert PROTOCOLS[protocol](c, GOOD, (STATE, STATE))[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_limits_hold_on_every_protocol(settings: Settings, protocol: str) -> None:
    with app_client(settings, max_steps=5, max_batch_size=2, max_total_values=32) as client:
        call = PROTOCOLS[protocol]
        assert call(client, [[ROW] * 5])[0]
        assert call(client, [[ROW] * 5, [ROW] * 3])[0]  # 32 values in all
        ok, says = call(client, [[ROW] * 6])
        assert not ok and "Should have at most 5 steps, not 6" in says, says
        if protocol != "websocket":  # a message there holds one sequence
            ok, says = call(client, [[ROW]] * 3)
            assert not ok and "Should have at most 2 sequences, not 3" in says, says
            ok, says = call(client, [[ROW] * 5, [ROW] * 4])
            assert not ok and "Should have at most 32 values in all, not 36" in says, says


def test_a_stream_gives_the_same_numbers_on_every_protocol(c: TestClient, weather: np.ndarray) -> None:
    seq = weather[200:260].astype(np.float32)
    whole = c.post("/predict", json={"inputs": [seq.tolist()]}).json()
    chunks = [seq[i : i + 13] for i in range(0, len(seq), 13)]
    got: dict[str, list[Any]] = {"rest": [], "oip-json": [], "oip-binary": [], "websocket": []}
    h = cc = None
    for chunk in chunks:
        body: dict[str, Any] = {"inputs": [chunk.tolist()]}
        if h is not None:
            body["h0"], body["c0"] = h, cc
        answer = c.post("/predict", json=body).json()
        got["rest"] += answer["outputs"][0]
        h, cc = answer["hn"], answer["cn"]
    for kind in ("oip-json", "oip-binary"):
        states: tuple[np.ndarray, np.ndarray] | None = None
        for chunk in chunks:
            arrays = {"x": chunk[None]}
            if states is not None:
                arrays["h0"], arrays["c0"] = states
            y, hn, cn = _infer(c, arrays, binary=kind == "oip-binary")
            got[kind] += y[0].tolist()
            states = (hn, cn)
    with c.websocket_connect(STREAM) as conn:
        for chunk in chunks:
            conn.send_json({"stream": "s", "inputs": chunk.tolist()})
            got["websocket"] += conn.receive_json()["outputs"]
    for kind, outputs in got.items():
        np.testing.assert_allclose(outputs, whole["outputs"][0], rtol=0, atol=1e-5, err_msg=kind)


def _infer(c: TestClient, arrays: dict[str, np.ndarray], binary: bool) -> tuple[np.ndarray, ...]:
    inputs, blobs = [], []
    for name, a in arrays.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(a.shape)}
        if binary:
            blob = np.ascontiguousarray(a, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = a.ravel().tolist()
        inputs.append(entry)
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary}})
    headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
    r = c.post(INFER, content=header + b"".join(blobs), headers=headers)
    assert r.status_code == 200, r.text
    if not binary:
        return tuple(np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"])
    n = int(r.headers["inference-header-content-length"])
    outs, offset = [], n
    for o in orjson.loads(r.content[:n])["outputs"]:
        size = o["parameters"]["binary_data_size"]
        outs.append(np.frombuffer(r.content[offset : offset + size], "<f4").reshape(o["shape"]))
        offset += size
    return tuple(outs)


# ---- /v2: every wrong JSON type in every field of a request
KINDS: dict[str, Any] = {"string": "s", "int": 3, "float": 1.5, "bool": True, "null": None, "array": [1], "object": {}}
V2_FIELDS: dict[tuple[str | int, ...], set[str]] = {
    ("id",): {"string", "null"},
    ("parameters",): {"object", "null"},
    ("parameters", "binary_data_output"): {"bool", "null"},
    ("inputs",): {"array"},
    ("inputs", 0): {"object"},
    ("inputs", 0, "name"): {"string"},
    ("inputs", 0, "shape"): {"array"},
    ("inputs", 0, "shape", 0): {"int"},
    ("inputs", 0, "datatype"): {"string"},
    ("inputs", 0, "parameters"): {"object", "null"},
    ("inputs", 0, "data"): {"array"},
    ("inputs", 0, "data", 0): {"int", "float"},
    ("inputs", 1, "data", 0): {"int"},
    ("outputs",): {"array", "null"},
    ("outputs", 0): {"object"},
    ("outputs", 0, "name"): {"string"},
    ("outputs", 0, "parameters"): {"object", "null"},
    ("outputs", 0, "parameters", "binary_data"): {"bool", "null"},
}


def v2_request() -> dict[str, Any]:
    return {
        "id": "r1",
        "parameters": {"binary_data_output": False},
        "inputs": [
            {"name": "x", "shape": [1, 2, 4], "datatype": "FP32", "data": ROW * 2, "parameters": {}},
            {"name": "lengths", "shape": [1], "datatype": "INT32", "data": [2]},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }


WRONG = [(path, kind) for path, allowed in V2_FIELDS.items() for kind in KINDS if kind not in allowed]


@pytest.mark.parametrize(("path", "kind"), WRONG, ids=[f"{'.'.join(map(str, p))}={k}" for p, k in WRONG])
def test_every_wrong_json_type_in_every_v2_field_is_a_400_naming_it(
    c: TestClient, path: tuple[str | int, ...], kind: str
) -> None:
    assert c.post(INFER, json=v2_request()).status_code == 200
    doc = v2_request()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = KINDS[kind]
    r = c.post(INFER, json=doc)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    named = ".".join(map(str, path))
    parent = ".".join(map(str, path[:-1]))
    assert named in error or (parent and error.startswith(parent)), error


@pytest.mark.parametrize(
    ("tensor", "says"),
    [
        ({"name": "lengths", "shape": [1], "datatype": "INT32", "data": [2**31]}, "outside INT32's range"),
        ({"name": "lengths", "shape": [1], "datatype": "INT32", "data": [-(2**31) - 1]}, "outside INT32's range"),
        ({"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2**63]}, "outside INT64's range"),
        ({"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2**64 + 2]}, "INT64"),
        ({"name": "lengths", "shape": [1], "datatype": "INT32", "data": [2.0]}, "integer of INT32"),
        ({"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2**40]}, "outside 1..2"),
        ({"name": "lengths", "shape": [1], "datatype": "INT32", "data": [0]}, "outside 1..2"),
    ],
)
def test_integers_must_fit_their_type_never_wrap(c: TestClient, tensor: dict[str, Any], says: str) -> None:
    doc = v2_request()
    doc["inputs"][1] = tensor
    r = c.post(INFER, json=doc)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert says in error and ("inputs.1.data.0" in error or "lengths.0" in error), error


@pytest.mark.parametrize("flag", ["sequence_start", "sequence_end"])
def test_sequence_flags_without_an_id_are_refused_not_ignored(c: TestClient, flag: str) -> None:
    doc = v2_request()
    doc["parameters"] = {flag: True}
    r = c.post(INFER, json=doc)
    assert r.status_code == 400 and f"parameters.{flag}" in r.json()["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("inputs", "x"), ("inputs", {}), ("h0", "x"), ("c0", 5), ("explain", "yes"), ("explain", 1), ("other", 1)],
)
def test_every_wrong_json_type_in_a_predict_field_is_a_422_naming_it(c: TestClient, field: str, value: Any) -> None:
    body: dict[str, Any] = {"inputs": [[ROW]], field: value}
    if field in ("h0", "c0"):
        body["h0"] = body["c0"] = value
    r = c.post("/predict", json=body)
    assert r.status_code == 422 and ["body", field] in [d["loc"][:2] for d in r.json()["detail"]], r.text


@pytest.mark.parametrize(
    ("field", "value"), [("stream", 5), ("stream", ""), ("inputs", "x"), ("reset", 1), ("state", "yes"), ("other", 1)]
)
def test_every_wrong_json_type_in_a_stream_message_closes_1007_naming_it(c: TestClient, field: str, value: Any) -> None:
    with c.websocket_connect(STREAM) as conn:
        conn.send_text(orjson.dumps({"stream": "s", "inputs": [ROW], field: value}).decode())
        with pytest.raises(WebSocketDisconnect) as closed:
            conn.receive_json()
    assert closed.value.code == 1007 and closed.value.reason.startswith(field), closed.value.reason


def test_given_state_streams_count_against_the_connection_limit(settings: Settings) -> None:
    state = [[0.1] * 8] * 2
    with app_client(settings, stream_max_streams=2) as client, client.websocket_connect(STREAM) as conn:
        for name in ("a", "b"):
            conn.send_json({"stream": name, "inputs": [ROW], "h0": state, "c0": state})
            assert conn.receive_json()["steps"] == 1
        conn.send_json({"stream": "a", "inputs": [ROW], "h0": state, "c0": state})  # restarting one is fine
        assert conn.receive_json()["steps"] == 1
        conn.send_json({"stream": "c", "inputs": [ROW], "h0": state, "c0": state})
        with pytest.raises(WebSocketDisconnect) as closed:
            conn.receive_json()
    assert closed.value.code == 1008 and "at most 2 streams" in closed.value.reason


def test_a_full_worker_closes_the_websocket_with_1013_not_403(settings: Settings) -> None:
    with app_client(settings, stream_max_connections=1) as client, client.websocket_connect(STREAM) as first:
        first.send_json({"stream": "a", "inputs": [ROW]})
        first.receive_json()
        with client.websocket_connect(STREAM) as second, pytest.raises(WebSocketDisconnect) as closed:
            second.receive_json()
        assert closed.value.code == 1013 and "stream connections" in closed.value.reason
        first.send_json({"stream": "a", "inputs": [ROW]})  # the first is unaffected
        assert first.receive_json()["steps"] == 2


def test_v2_health_stays_open_to_probes_with_api_keys(settings: Settings) -> None:
    with app_client(settings, api_keys=["k1"]) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").status_code == 401
        assert client.post(INFER, json=v2_request()).status_code == 401
        assert client.post(INFER, json=v2_request(), headers={"authorization": "Bearer k1"}).status_code == 200


def test_padding_costs_nothing_on_every_protocol(c: TestClient) -> None:
    """One 600-step sequence beside 15 one-step ones runs about 615 steps, not 16 x 600."""
    engine = c.app.state.registry.default_plane.engine  # type: ignore[attr-defined]
    long, short = [ROW] * 600, [ROW]
    before = engine.steps_run
    assert rest(c, [long, *[short] * 15])[0]
    assert engine.steps_run - before <= 615 * 1.25 + 64
    x = np.zeros((16, 600, 4), np.float32)
    x[:] = ROW
    lengths = np.array([600] + [1] * 15, np.int32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [16, 600, 4], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
                {"name": "lengths", "shape": [16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
            ]
        }
    )
    before = engine.steps_run
    r = c.post(
        INFER, content=header + x.tobytes() + lengths, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert r.status_code == 200, r.text
    assert engine.steps_run - before <= 615 * 1.25 + 64


# ---- what hostile clients sent: each class refused, never a 500
@pytest.mark.parametrize(
    ("protocol", "raw", "says"),
    [
        ("rest", b'{"inputs": [[[1, 2, 3, 4]]], "inputs": null}', "inputs"),
        ("rest", b'{"inputs": [[[1, 2, 3, 4]]], "explain": false, "explain": true}', "explain"),
        ("oip", b'{"inputs": [X], "parameters": {}, "parameters": {"sequence_id": 1}}', "parameters"),
        ("oip", b'{"inputs": [X], "parameters": {"sequence_id": 1, "sequence_id": 2}}', "sequence_id"),
        (
            "oip",
            b'{"inputs": [{"name": "x", "name": "bogus", "shape": [1, 1, 4], "datatype": "FP32", '
            b'"data": [1, 2, 3, 4]}]}',
            "name",
        ),
        ("websocket", b'{"stream": "a", "inputs": [[1, 2, 3, 4]], "stream": 5}', "stream"),
    ],
)
def test_a_key_given_twice_is_refused_on_every_protocol(c: TestClient, protocol: str, raw: bytes, says: str) -> None:
    raw = raw.replace(b"X", b'{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}')
    for body in (raw, raw.replace(b"[1, 2, 3, 4]", b"[1, 2, 3, 100000000000000000000000]")):  # fast, exact reader
        if protocol == "websocket":
            with c.websocket_connect(STREAM) as conn:
                conn.send_text(body.decode())
                with pytest.raises(WebSocketDisconnect) as closed:
                    conn.receive_json()
            assert closed.value.code == 1007 and says in closed.value.reason and "once" in closed.value.reason
            continue
        r = c.post("/predict" if protocol == "rest" else INFER, content=body)
        assert r.status_code in (400, 422), r.text
        assert "once" in r.text and says in r.text, r.text


@pytest.mark.parametrize(
    ("tensor", "says"),
    [
        ({"name": "x", "shape": [2**40, 0, 4], "datatype": "FP32", "data": []}, "x: Should have at most"),
        ({"name": "x", "shape": [3, 0, 4], "datatype": "FP32", "data": []}, "x: Should have at least 1 step"),
        ({"name": "x", "shape": [2**32, 2**32], "datatype": "FP32", "data": []}, "inputs.0.data"),
        ({"name": "x", "shape": [1] * 65, "datatype": "FP32", "data": [1.0]}, "inputs.0.shape"),
    ],
)
def test_shapes_that_cost_nothing_to_send_are_refused_before_any_work(
    c: TestClient, tensor: dict[str, Any], says: str
) -> None:
    r = c.post(INFER, json={"inputs": [tensor]})
    assert r.status_code == 400 and says in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("outputs", "says"), [([{"name": "y"}] * 3, "asked for twice"), ([], "outputs")], ids=["repeated", "none"]
)
def test_outputs_are_each_asked_for_once(c: TestClient, outputs: list[Any], says: str) -> None:
    doc = v2_request()
    doc["outputs"] = outputs
    r = c.post(INFER, json=doc)
    assert r.status_code == 400 and says in r.json()["error"], r.text


def test_many_keys_go_to_the_exact_reader_and_are_refused(c: TestClient) -> None:
    doc = v2_request()
    doc.update({f"k{i}": 0 for i in range(5000)})
    r = c.post(INFER, json=doc)
    assert r.status_code == 400 and r.json()["error"].count("Extra inputs") <= 20


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b3", "-1", "abc"])
def test_a_header_length_that_is_no_byte_count_is_a_400(c: TestClient, value: str) -> None:
    r = c.post(INFER, json=v2_request(), headers={"Inference-Header-Content-Length": value.encode("latin-1")})
    assert r.status_code == 400 and "inference-header-content-length" in r.json()["error"], r.text


def _raw(c: TestClient, protocol: str, body: bytes) -> tuple[int | None, str]:
    """A raw body (or message) on one protocol: the status (the close code on the WebSocket) and the error."""
    if protocol == "websocket":
        with c.websocket_connect(STREAM) as conn:
            conn.send_text(body.decode("utf-8", "surrogatepass"))
            try:
                conn.receive_json()
            except WebSocketDisconnect as closed:
                return closed.code, closed.reason
        return None, ""
    r = c.post("/predict" if protocol == "rest" else INFER, content=body)
    text = (
        r.json()["error"]
        if protocol == "oip"
        else "; ".join(f"{where(d['loc'])}: {d['msg']}" for d in r.json()["detail"])
    )
    return r.status_code, text


REFUSED = {"rest": 422, "oip": 400, "websocket": 1007}
ENVELOPE = {
    "rest": b'{"inputs": [[[0, 1, 2, 3]]]',
    "oip": b'{"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}]',
    "websocket": b'{"stream": "a", "inputs": [[0, 1, 2, 3]]',
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_given_twice_that_utf8_cannot_carry_is_named_escaped(c: TestClient, protocol: str) -> None:
    status, says = _raw(c, protocol, ENVELOPE[protocol] + b', "\\ud800": 1, "\\ud800": 2}')
    assert status == REFUSED[protocol] and "\\ud800" in says


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("depth", [900, 1100, 5000])
def test_json_nested_too_deep_is_refused_not_a_crash(c: TestClient, protocol: str, depth: int) -> None:
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    status, _ = _raw(c, protocol, ENVELOPE[protocol] + b', "x": ' + nested + b"}")
    assert status == REFUSED[protocol]
