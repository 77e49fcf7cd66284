"""Which versions of a model serve (service/model/repository.py): its version_policy, as Triton reads it."""

import shutil
from pathlib import Path

import pytest

from service.model import repository
from service.model.errors import ModelLoadError
from service.settings import Settings

from .conftest import app_client


@pytest.fixture()
def five(repo: Path, tmp_path: Path) -> Path:
    """tiny with versions 1, 2, 3, 5 and 8 on disk."""
    root = tmp_path / "models"
    for v in (1, 2, 3, 5, 8):
        shutil.copytree(repo / "tiny" / "1", root / "tiny" / str(v))
    shutil.copy(repo / "tiny" / "config.pbtxt", root / "tiny" / "config.pbtxt")
    return root


def policy(root: Path, text: str) -> None:
    """Replace the version_policy of tiny's config.pbtxt (the rest as export wrote it)."""
    path = root / "tiny" / "config.pbtxt"
    lines = [line for line in path.read_text().splitlines() if not line.startswith("version_policy")]
    path.write_text("\n".join([*lines, text] if text else lines) + "\n")


@pytest.mark.parametrize(
    ("text", "serving"),
    [
        ("version_policy: { all: {} }", [1, 2, 3, 5, 8]),
        ("version_policy: { latest: { num_versions: 2 } }", [5, 8]),
        ("version_policy: { latest: { num_versions: 9 } }", [1, 2, 3, 5, 8]),
        ("version_policy: { specific: { versions: [2, 5, 7] } }", [2, 5]),  # 7 is not on disk
        ("", [8]),  # none given: Triton's default, the latest
    ],
)
def test_the_version_policy_decides_which_versions_serve(five: Path, text: str, serving: list[int]) -> None:
    policy(five, text)
    assert repository.versions(five, "tiny") == serving
    assert repository.resolve(five, "tiny", None) == five / "tiny" / str(serving[-1])  # the default follows it


def test_a_version_the_policy_leaves_out_is_not_served_and_says_why(five: Path) -> None:
    policy(five, "version_policy: { specific: { versions: [3] } }")
    with pytest.raises(ModelLoadError, match="no version 5 to serve: its version_policy leaves it out"):
        repository.resolve(five, "tiny", 5)
    policy(five, "version_policy: { specific: { versions: [4] } }")
    with pytest.raises(ModelLoadError, match="names no version on disk"):
        repository.resolve(five, "tiny", None)


def test_a_configuration_triton_could_not_read_is_refused_naming_it(five: Path) -> None:
    (five / "tiny" / "config.pbtxt").write_text("version_policy: { newest: {} }")
    with pytest.raises(ModelLoadError, match=r"config.pbtxt is not a Triton model configuration"):
        repository.versions(five, "tiny")


def test_the_server_serves_what_the_policy_names(settings: Settings, five: Path) -> None:
    policy(five, "version_policy: { specific: { versions: [2, 5] } }")
    with app_client(settings, model_repository=five, model_name="tiny") as c:
        assert c.get("/model").json()["version"] == "5"  # the default follows the policy
        assert c.get("/v2/models/tiny").json()["versions"] == ["2", "5"]
        body = {"inputs": [[[0.0, 10.0, 5.0, 3.0]]]}
        assert c.post("/v1/models/tiny/versions/2/predict", json=body).status_code == 200
        for left_out in (1, 3, 8):
            r = c.post(f"/v1/models/tiny/versions/{left_out}/predict", json=body)
            assert r.status_code == 404, r.text


def test_the_repository_index_lists_what_serves_and_why_the_rest_does_not(settings: Settings, five: Path) -> None:
    policy(five, "version_policy: { latest: { num_versions: 2 } }")
    with app_client(settings, model_repository=five, model_name="tiny") as c:
        left_out = {"state": "UNAVAILABLE", "reason": "not named by the model's version_policy"}
        every = [{"name": "tiny", "version": str(v), **left_out} for v in (1, 2, 3)]
        every += [{"name": "tiny", "version": str(v), "state": "READY"} for v in (5, 8)]
        assert c.post("/v2/repository/index").json() == every
        assert c.get("/v2/repository/index").json() == every
        assert c.post("/v2/repository/index", json={"ready": True}).json() == every[3:]
        r = c.post("/v2/repository/index", json={"ready": "yes"})
        assert r.status_code == 400 and r.json()["error"].startswith("ready:"), r.text
        r = c.post("/v2/repository/index", json={"readi": True})
        assert r.status_code == 400 and "readi" in r.json()["error"]
        r = c.post("/v2/repository/index", content=b"[" * 5000)
        assert r.status_code == 413, r.text


def test_another_models_broken_configuration_leaves_the_rest_serving(settings: Settings, five: Path) -> None:
    """As Triton does: the model whose config.pbtxt cannot be read does not serve, and the index says why."""
    shutil.copytree(five / "tiny", five / "broken")
    (five / "broken" / "config.pbtxt").write_text("garbage ###")
    with app_client(settings, model_repository=five, model_name="tiny") as c:
        index = {(e["name"], e["version"]): e for e in c.get("/v2/repository/index").json()}
        assert index[("tiny", "8")]["state"] == "READY"
        assert index[("broken", "8")]["state"] == "UNAVAILABLE"
        assert "is not a Triton model configuration" in index[("broken", "8")]["reason"]
        assert c.post("/v1/models/broken/predict", json={"inputs": [[[0.0, 10.0, 5.0, 3.0]]]}).status_code == 404


def test_only_a_model_that_serves_can_be_the_only_model(five: Path) -> None:
    shutil.copytree(five / "tiny", five / "idle")
    policy(five, "")  # tiny: the latest
    (five / "idle" / "config.pbtxt").write_text("version_policy: { specific: { versions: [9] } }")
    assert repository.resolve(five, None, None) == five / "tiny" / "8"  # idle serves nothing: not a candidate


def test_version_folders_are_plain_numbers(five: Path) -> None:
    shutil.copytree(five / "tiny" / "8", five / "tiny" / "08")  # not version 8 again
    shutil.copytree(five / "tiny" / "8", five / "tiny" / "²")
    policy(five, "version_policy: { latest: { num_versions: 2 } }")
    assert repository.on_disk(five, "tiny") == [1, 2, 3, 5, 8]
    assert repository.versions(five, "tiny") == [5, 8]


def test_a_huge_configuration_is_refused_before_it_is_parsed(five: Path) -> None:
    (five / "tiny" / "config.pbtxt").write_text('name: "tiny"\n' + "# padding\n" * 200_000)
    with pytest.raises(ModelLoadError, match="over 1048576 bytes"):
        repository.version_policy(five, "tiny")
