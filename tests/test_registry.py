"""Every model and version of the repository is served; /predict uses the configured default."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.settings import Settings
from training.export import export

from .conftest import app_client

ROW = [0.0, 10.0, 5.0, 3.0]
BODY = {"inputs": [[ROW, [1.0, 12.0, 6.0, 2.0]]]}


@pytest.fixture(scope="module")
def multi(repo: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny v1 and v2 (v2's head shifted by +1, so its answers differ), and other v3."""
    root = tmp_path_factory.mktemp("multi")
    shutil.copytree(repo / "tiny", root / "tiny")
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    ckpt["model"]["head.bias"] += 1.0 / ckpt["stats"]["y_std"][0]  # the head works in normalised units
    shifted = root.parent / "shifted.pt"
    torch.save(ckpt, shifted)
    export(shifted, root, "tiny", 2)
    shutil.copytree(repo / "tiny" / "1", root / "other" / "3")
    return root


def outputs(c: TestClient, path: str) -> np.ndarray:
    r = c.post(path, json=BODY)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"])


def test_default_pinned_and_named_versions(settings: Settings, multi: Path) -> None:
    with app_client(settings, model_repository=multi, model_name="tiny", model_version=1) as c:
        assert c.get("/model").json()["version"] == "1"
        listed = c.get("/v1/models").json()
        assert listed["default"] == {"name": "tiny", "version": "1"}
        assert {m["name"]: (m["versions"], m["serving_version"]) for m in listed["models"]} == {
            "other": (["3"], "3"),
            "tiny": (["1", "2"], "1"),  # the pinned default keeps its version
        }
        v1 = outputs(c, "/predict")
        np.testing.assert_array_equal(outputs(c, "/v1/models/tiny/predict"), v1)
        np.testing.assert_array_equal(outputs(c, "/v1/models/tiny/versions/1/predict"), v1)
        np.testing.assert_allclose(outputs(c, "/v1/models/tiny/versions/2/predict"), v1 + 1.0, atol=1e-4)
        np.testing.assert_array_equal(outputs(c, "/v1/models/other/predict"), v1)  # the same weights
        assert c.post("/v1/models/other/predict", json=BODY).json()["model"] == {"name": "other", "version": "3"}
        assert c.get("/v1/models/tiny/versions/2").json()["version"] == "2"


def test_latest_version_by_default(settings: Settings, multi: Path) -> None:
    with app_client(settings, model_repository=multi, model_name="tiny") as c:
        assert c.get("/model").json()["version"] == "2"
        assert c.post("/predict", json=BODY).json()["model"] == {"name": "tiny", "version": "2"}


def test_unknown_model_or_version_is_404(settings: Settings, multi: Path) -> None:
    with app_client(settings, model_repository=multi, model_name="tiny") as c:
        for path in ("/v1/models/nope/predict", "/v1/models/tiny/versions/9/predict"):
            r = c.post(path, json=BODY)
            assert r.status_code == 404 and "tiny" in r.json()["detail"]
        assert c.get("/v1/models/nope").status_code == 404
        # validation still applies on the named routes
        r = c.post("/v1/models/other/predict", json={"inputs": [[[1, 2]]]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs", 0, 0]


def test_unversioned_routes_serve_the_highest_exact_version_and_int8_when_named(
    settings: Settings, repo: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """tiny/1 float32 and tiny/2 int8: /predict and the unversioned routes keep to version 1 (an int8 version's
    answers move with what its call holds, so a stream in chunks would not be one whole call); version 2 serves
    when named, or when pinned; a model whose versions are all int8 serves its highest."""
    root = tmp_path / "models"
    shutil.copytree(repo / "tiny", root / "tiny")
    export(tiny_run / "checkpoint.pt", root, "tiny", 2, quantize="int8")
    shutil.copytree(root / "tiny" / "2", root / "small" / "5")
    with app_client(settings, model_repository=root, model_name="tiny") as c:
        assert c.get("/model").json()["version"] == "1"
        assert c.post("/predict", json=BODY).json()["model"]["version"] == "1"
        assert c.post("/v1/models/tiny/predict", json=BODY).json()["model"]["version"] == "1"
        assert c.post("/v1/models/tiny/versions/2/predict", json=BODY).json()["model"]["version"] == "2"
        assert c.post("/v1/models/small/predict", json=BODY).json()["model"]["version"] == "5"
        listed = {m["name"]: m["serving_version"] for m in c.get("/v1/models").json()["models"]}
        assert listed == {"tiny": "1", "small": "5"}
        assert not np.allclose(outputs(c, "/v1/models/tiny/versions/2/predict"), outputs(c, "/predict"), atol=1e-5)
    with app_client(settings, model_repository=root, model_name="tiny", model_version=2) as c:
        assert c.post("/predict", json=BODY).json()["model"]["version"] == "2"
