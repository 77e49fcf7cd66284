"""The edge's fast path: which routes it answers, and that it answers them exactly as FastAPI's routes do."""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import create_app
from service.protocols.fastpath import route
from service.protocols.rest_routes import get_registry
from service.settings import Settings


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/predict", ("rest", None, None)),
        ("/v1/models/tiny/predict", ("rest", "tiny", None)),
        ("/v1/models/tiny/versions/1/predict", ("rest", "tiny", "1")),
        ("/v2/models/tiny/infer", ("oip", "tiny", None)),
        ("/v2/models/tiny/versions/1/infer", ("oip", "tiny", "1")),
        ("/v2/models//infer", None),
        ("/v2/models/tiny/versions//infer", None),
        ("/v2/models/tiny/infer/", None),
        ("/v2/models/tiny/ready", None),
        ("/v1/models/tiny/infer", None),
        ("/v2/models/tiny/predict", None),
        ("/v2/models/tiny/version/1/infer", None),
        ("/v3/models/tiny/infer", None),
        ("/predict/", None),
    ],
)
def test_the_inference_routes_and_only_them(path: str, found: tuple | None) -> None:
    assert route(path) == found


class Seen:
    """App middleware (inside FastAPI's stack): records the paths FastAPI itself handled."""

    paths: ClassVar[list[str]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Seen.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture(scope="module", params=[True, False], ids=["edge", "fastapi"])
def both(settings: Settings, request: pytest.FixtureRequest) -> Iterator[tuple[bool, TestClient]]:
    app = create_app(settings.model_copy(update={"fast_path": request.param}))
    app.add_middleware(Seen)
    with TestClient(app) as c:
        yield request.param, c


X = [[[0.5, 11.1, 4.4, 2.8], [1.0, 9.0, 3.0, 2.0]]]
STATES = np.full((1, 2, 8), 0.25).tolist()
BINARY_X = np.asarray(X, dtype=np.float32)
BINARY_HEADER = orjson.dumps(
    {
        "inputs": [{"name": "x", "shape": [1, 2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
        "outputs": [{"name": "hn", "parameters": {"binary_data": True}}],
    }
)
CASES = [
    ("/predict", {"json": {"inputs": X, "h0": STATES, "c0": STATES}}),
    ("/predict", {"json": {"inputs": [[[1, 2, 3]]]}}),
    ("/predict", {"content": b"{"}),
    ("/v1/models/tiny/predict", {"json": {"inputs": X}}),
    ("/v1/models/tiny/versions/1/predict", {"json": {"inputs": X}}),
    ("/v1/models/nope/predict", {"json": {"inputs": X}}),
    ("/v1/models/tiny/versions/9/predict", {"json": {"inputs": X}}),
    ("/v2/models/tiny/infer", {"json": {"inputs": [{"name": "x", "shape": [1, 2, 4], "datatype": "FP32", "data": X}]}}),
    ("/v2/models/tiny/versions/1/infer", {"json": {"inputs": [{"name": "x", "shape": [1, 2, 4], "datatype": "FP32"}]}}),
    ("/v2/models/nope/infer", {"json": {"inputs": []}}),
    (
        "/v2/models/tiny/infer",
        {"content": BINARY_HEADER + BINARY_X.tobytes(), "headers": {"Inference-Header-Content-Length": "197"}},
    ),
    ("/v2/models/tiny/infer", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "x1"}}),
]

STATUSES = [200, 422, 422, 200, 200, 404, 404, 200, 400, 404, 200, 400]


@pytest.fixture(scope="module")
def answers(settings: Settings) -> dict[int, tuple[int, bytes, str, str | None]]:
    """Each case as FastAPI's own routes answer it."""
    with TestClient(create_app(settings.model_copy(update={"fast_path": False}))) as c:
        found = {i: _answer(c, path, kw) for i, (path, kw) in enumerate(CASES)}
    assert [a[0] for a in found.values()] == STATUSES
    return found


def _answer(c: TestClient, path: str, kw: dict) -> tuple[int, bytes, str, str | None]:
    if "headers" in kw and kw["headers"].get("Inference-Header-Content-Length") == "197":
        kw = {**kw, "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}}
    r = c.post(path, **kw)
    return r.status_code, r.content, r.headers["content-type"], r.headers.get("inference-header-content-length")


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{p} {i}" for i, (p, _) in enumerate(CASES)])
def test_the_edge_answers_as_fastapi_does_without_entering_it(
    both: tuple[bool, TestClient], answers: dict, case: int
) -> None:
    fast, c = both
    path, kw = CASES[case]
    Seen.paths.clear()
    assert _answer(c, path, kw) == answers[case]
    assert Seen.paths == ([] if fast else [path])
    assert c.get("/v2/models/tiny").status_code == 200 and Seen.paths[-1] == "/v2/models/tiny"  # the rest: FastAPI


def test_the_edge_knows_every_inference_route_fastapi_declares(settings: Settings) -> None:
    """Every inference route of the app (a POST under a model) is one the edge answers, parsed to the same
    protocol; the others (the model repository extension) are FastAPI's alone."""
    paths = create_app(settings).openapi()["paths"].items()
    declared = [p for p, ops in paths if "post" in ops and not p.startswith("/v2/repository/")]
    assert len(declared) == 6
    assert route("/v2/repository/index") is None
    for p in declared:
        path = p.replace("{name}", "some-model").replace("{version}", "7")
        protocol = "oip" if p.startswith("/v2") else "timeseries" if "timeseries" in p else "rest"
        name = "some-model" if "{name}" in p else None
        assert route(path) == (protocol, name, "7" if "{version}" in p else None), p


def test_overridden_dependencies_send_the_inference_routes_through_fastapi(settings: Settings) -> None:
    app = create_app(settings)
    app.add_middleware(Seen)
    with TestClient(app) as c:
        registry = app.state.registry
        app.dependency_overrides[get_registry] = lambda: registry
        Seen.paths.clear()
        assert c.post("/predict", json={"inputs": X}).status_code == 200
        assert Seen.paths == ["/predict"]
