"""deploy/kubernetes: every manifest renders and validates against the schemas of a named Kubernetes version
(and KServe's SDK models), and what the manifests say about the service (probe paths, port, drain time,
settings, the autoscaling metric) is read from the service itself, so the two cannot drift apart."""

import copy
import importlib
import json
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from prometheus_client import Gauge

from deploy.kubernetes.render import render  # kubectl kustomize without kubectl
from service import metrics
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"  # the schemas the manifests are checked against (kubectl here is a 1.32 client)
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu"]  # our own Deployment
RENDERED = [*KUSTOMIZATIONS, "kserve"]  # and KServe's custom predictor, with the same settings and Valkey
WORKLOADS = ("Deployment", "StatefulSet")

Doc = dict[str, Any]


def rendered(folder: str) -> list[Doc]:
    """The kustomization as kubectl renders it, or deploy/kubernetes/render.py where kubectl is absent."""
    if shutil.which("kubectl") is None:
        return render(ROOT / folder)
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / folder)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[Doc], kind: str, name: str = "lstm-service") -> Doc:
    (doc,) = (d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc


def pod(doc: Doc) -> Doc:
    return dict(doc["spec"]["template"]["spec"])


def served_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


def environment(docs: list[Doc]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap", "lstm-settings")["data"])


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a pod gets: every key must be a setting, every value must parse."""
    fields = {f"LSTM_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"not settings: {sorted(set(env) - fields)}"
    return Settings(**{key.removeprefix("LSTM_").lower(): value for key, value in env.items()})


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: nothing to compare with")
@pytest.mark.parametrize("folder", RENDERED)
def test_the_python_renderer_renders_what_kubectl_does(folder: str) -> None:
    def key(d: Doc) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    assert sorted(render(ROOT / folder), key=key) == sorted(rendered(folder), key=key)


@pytest.mark.parametrize("folder", RENDERED)
def test_every_manifest_validates_against_the_kubernetes_schemas(folder: str) -> None:
    docs = rendered(folder)
    kinds = {"ConfigMap", "Service", "StatefulSet"}  # the settings and Valkey, everywhere
    kinds |= (
        {"InferenceService"} if folder == "kserve" else {"Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    )
    assert {d["kind"] for d in docs} == kinds
    for doc in docs:
        if doc["kind"] != "InferenceService":  # KServe's own kind: checked against its SDK below
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number: ``500m``, ``2``, ``768Mi``, ``4Gi``."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    unit = next((u for u in sorted(units, key=len, reverse=True) if text.endswith(u)), "")
    return float(text.removesuffix(unit)) * units.get(unit, 1)


def consistency_errors(docs: list[Doc]) -> list[str]:
    """What the schemas let through and a cluster would not run: selectors that select nothing, a mount of
    no volume, a ConfigMap that is not there, requests above limits, a budget no replica count can meet."""
    errors: list[str] = []
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    specs = [(d["metadata"]["name"], pod(d), d["spec"]["template"]["metadata"]["labels"]) for d in workloads]
    specs += [(d["metadata"]["name"], d["spec"]["predictor"], None) for d in docs if d["kind"] == "InferenceService"]
    for name, spec, labels in specs:
        volumes = {v["name"] for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for d in workloads for c in d["spec"].get("volumeClaimTemplates", [])}
        for c in spec["containers"]:
            errors += [
                f"{name}: mounts no volume {m['name']}"
                for m in c.get("volumeMounts", [])
                if m["name"] not in volumes | claims
            ]
            errors += [
                f"{name}: no ConfigMap {e['configMapRef']['name']}"
                for e in c.get("envFrom", [])
                if e["configMapRef"]["name"] not in config_maps
            ]
            res = c.get("resources", {})
            for k, limit in res.get("limits", {}).items():
                if k in res.get("requests", {}) and quantity(res["requests"][k]) > quantity(limit):
                    errors.append(f"{name}: {k} requested above its limit")
        if labels is not None:
            (workload,) = (d for d in workloads if d["metadata"]["name"] == name)
            if not workload["spec"]["selector"]["matchLabels"].items() <= labels.items():
                errors.append(f"{name}: its selector does not select its own pods")
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [
            spec for _, spec, labels in specs if labels and service["spec"]["selector"].items() <= labels.items()
        ]
        if not selected:
            errors.append(f"Service {service['metadata']['name']} selects no pods")
        ports = {p.get("name") for spec in selected for c in spec["containers"] for p in c.get("ports", [])}
        ports |= {p["containerPort"] for spec in selected for c in spec["containers"] for p in c.get("ports", [])}
        errors += [
            f"Service {service['metadata']['name']}: no port {p['targetPort']}"
            for p in service["spec"]["ports"]
            if p["targetPort"] not in ports
        ]
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        hpa = one(docs, "HorizontalPodAutoscaler")
        if pdb["spec"].get("minAvailable", 0) >= hpa["spec"]["minReplicas"] or pdb["spec"].get("maxUnavailable", 1) < 1:
            errors.append("the PodDisruptionBudget lets no pod be evicted at the fewest replicas")
    return errors


@pytest.mark.parametrize("folder", RENDERED)
def test_the_manifests_hang_together(folder: str) -> None:
    assert consistency_errors(rendered(folder)) == []


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        (lambda d: one(d, "Deployment")["spec"]["selector"]["matchLabels"].update(app="x"), "does not select"),
        (lambda d: pod(one(d, "Deployment"))["containers"][0]["resources"]["requests"].update(cpu="3"), "above"),
        (lambda d: pod(one(d, "Deployment"))["containers"][0]["volumeMounts"][0].update(name="temp"), "no volume"),
        (
            lambda d: pod(one(d, "Deployment"))["containers"][0]["envFrom"][0]["configMapRef"].update(name="x"),
            "ConfigMap",
        ),
        (lambda d: one(d, "Service", "lstm-valkey")["spec"]["selector"].update(app="x"), "selects no pods"),
        (lambda d: one(d, "Service", "lstm-valkey")["spec"]["ports"][0].update(targetPort="redis"), "no port"),
        (lambda d: one(d, "PodDisruptionBudget")["spec"].update(maxUnavailable=0), "no pod be evicted"),
    ],
)
def test_the_consistency_check_fails_where_the_manifests_do_not_hang_together(change: Any, fault: str) -> None:
    docs = copy.deepcopy(rendered("overlays/cpu"))
    change(docs)
    assert any(fault in e for e in consistency_errors(docs)), consistency_errors(docs)


def test_the_validation_fails_where_a_manifest_is_wrong() -> None:
    deployment = one(rendered("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def serving(docs: list[Doc]) -> tuple[Doc, Doc, Settings]:
    """The pod spec that serves (our Deployment's, or KServe's predictor), its container, and the settings
    it runs with: the ConfigMap's, then the container's own variables over them."""
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    spec = pod(deployments[0]) if deployments else one(docs, "InferenceService", "seattle-weather")["spec"]["predictor"]
    (container,) = spec["containers"]
    env = {**environment(docs), **{e["name"]: e["value"] for e in container.get("env", [])}}
    return spec, container, settings_from({k: v for k, v in env.items() if k.startswith("LSTM_")})


@pytest.mark.parametrize("folder", RENDERED)
def test_probes_port_and_drain_come_from_the_service(folder: str) -> None:
    docs = rendered(folder)
    spec, container, settings = serving(docs)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port and port["protocol"] == "TCP"
    assert settings.host == "0.0.0.0"  # reachable from outside the pod
    paths = served_paths()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container or probe != "startupProbe":
            check = container[probe]["httpGet"]
            assert check["path"] in paths and check["port"] in (port.get("name"), settings.port), (probe, check)
    assert container["readinessProbe"]["httpGet"]["path"].endswith("/health/ready")
    # preStop, then the service's own drain on SIGTERM (as long as a request may take), then time to exit
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + settings.request_timeout_s + 1
    valkey = one(docs, "Service", "lstm-valkey")["spec"]["ports"][0]
    assert settings.state_url == f"redis://lstm-valkey:{valkey['port']}/0"  # the Valkey these manifests run
    if folder != "kserve":
        annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] in paths and int(annotations["prometheus.io/port"]) == settings.port
        service = one(docs, "Service")
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]
        assert service["spec"]["selector"].items() <= pod_labels(docs).items()


def pod_labels(docs: list[Doc]) -> dict[str, str]:
    return dict(one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("folder", RENDERED)
def test_every_container_runs_unprivileged_within_its_resources(folder: str) -> None:
    docs = rendered(folder)
    specs = [pod(d) for d in docs if d["kind"] in WORKLOADS]
    specs += [d["spec"]["predictor"] for d in docs if d["kind"] == "InferenceService"]
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_the_autoscaler_scales_on_a_gauge_the_service_exports(folder: str) -> None:
    docs = rendered(folder)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lstm-service"}
    (custom,) = (m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    exported = {m._name: m for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    assert custom == metrics.QUEUE_DEPTH._name and isinstance(exported[custom], Gauge)  # a gauge, not a counter
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    (rule,) = yaml.safe_load((ROOT / "prometheus-adapter.yaml").read_text())["rules"]["custom"]
    assert rule["seriesQuery"].startswith(custom + "{") and rule["name"]["as"] == custom
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"] and "<<.Series>>" in rule["metricsQuery"]  # per pod
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(docs).items()


def test_the_overlays_choose_the_image_workers_and_gpu() -> None:
    cpu, gpu = rendered("overlays/cpu"), rendered("overlays/gpu")
    assert pod(one(cpu, "Deployment"))["containers"][0]["image"] == "lstm-service:cpu"
    assert settings_from(environment(cpu)).provider == "cpu"
    (container,) = pod(one(gpu, "Deployment"))["containers"]
    assert container["image"] == "lstm-service:gpu" and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    settings = settings_from(environment(gpu))
    assert settings.workers == 1 and settings.provider == "cuda"
    assert "nvidia.com/gpu" not in str(one(cpu, "Deployment"))


# ---- KServe ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kserve_models() -> Iterator[types.ModuleType]:
    """KServe's SDK models (the InferenceService's types), from the SDK installed without its dependencies
    in the virtual environment's kserve-sdk folder (make test does it): its package's own import would start
    a model server's worth of imports, so its models are loaded on their own."""
    folder = Path(sys.prefix) / "kserve-sdk" / "kserve"
    assert folder.is_dir(), f"no KServe SDK at {folder}: run make test (it installs it)"
    package = types.ModuleType("kserve")
    package.__path__ = [str(folder)]
    saved = {k: v for k, v in sys.modules.items() if k == "kserve" or k.startswith("kserve.")}
    sys.modules["kserve"] = package
    try:
        yield importlib.import_module("kserve.models")
    finally:
        for name in [k for k in sys.modules if k == "kserve" or k.startswith("kserve.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def kubernetes_schema(name: str) -> jsonschema.protocols.Validator:
    """The validator of one Kubernetes type (``V1Container``) in the named version's strict schemas."""
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    stem = name.removeprefix("V1").lower()
    for group in ("v1", "meta-v1"):
        path = base / f"{stem}-{group}.json"
        if path.exists():
            definitions = referencing.Resource.from_contents(json.loads((base / "_definitions.json").read_text()))
            schema = json.loads(path.read_text())
            registry = definitions @ (referencing.Resource.from_contents(schema) @ referencing.Registry())
            return jsonschema.Draft202012Validator(schema, registry=registry)
    raise AssertionError(f"no schema for {name} in Kubernetes {K8S_VERSION}")


def check(models: types.ModuleType, value: Any, kind: str, where: str) -> None:
    """``value`` (YAML as loaded) is a valid ``kind``, as KServe's SDK declares it: no unknown fields, the
    right types, required fields present; Kubernetes' own types checked against their schemas."""
    if kind.startswith("list["):
        assert isinstance(value, list), f"{where}: a list"
        for i, item in enumerate(value):
            check(models, item, kind[5:-1], f"{where}[{i}]")
    elif kind.startswith("dict("):
        assert isinstance(value, dict), f"{where}: a mapping"
        for k, item in value.items():
            check(models, item, kind[5:-1].split(", ", 1)[1], f"{where}.{k}")
    elif kind in ("str", "bool", "int", "float", "object", "ResourceQuantity"):
        allowed = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float), "object": (object,)}
        assert isinstance(value, allowed.get(kind, (str, int))), f"{where}: a {kind}"
        assert kind in ("bool", "object") or not isinstance(value, bool), f"{where}: a {kind}"
    elif hasattr(models, kind):
        model = getattr(models, kind)
        assert isinstance(value, dict), f"{where}: an object ({kind})"
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        unknown = set(value) - set(fields)
        assert not unknown, f"{where}: {sorted(unknown)} are not fields of {kind}"
        try:
            model(**{fields[k]: v for k, v in value.items()})  # the SDK refuses a missing required field
        except ValueError as e:
            raise AssertionError(f"{where}: {e}") from None
        for k, item in value.items():
            check(models, item, model.openapi_types[fields[k]], f"{where}.{k}")
    else:
        errors = list(kubernetes_schema(kind).iter_errors(value))
        assert not errors, f"{where}: {errors[0].message}"


TRITON = ROOT / "kserve" / "triton" / "inferenceservice.yaml"


def inference_services() -> list[Doc]:
    return [d for d in rendered("kserve") if d["kind"] == "InferenceService"] + [yaml.safe_load(TRITON.read_text())]


@pytest.mark.parametrize("doc", inference_services(), ids=lambda d: d["metadata"]["name"])
def test_the_inference_services_are_valid_kserve(kserve_models: types.ModuleType, doc: Doc) -> None:
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    check(kserve_models, doc, "V1beta1InferenceService", doc["metadata"]["name"])


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        (lambda d: d["spec"].update(predictr=d["spec"].pop("predictor")), "not fields of V1beta1InferenceServiceSpec"),
        (lambda d: d["spec"]["predictor"].update(minReplicas="2"), "a int"),
        (lambda d: d["spec"]["predictor"]["containers"][0].update(imag="x"), "imag"),
        (lambda d: d["spec"].clear(), "predictor"),
    ],
)
def test_the_kserve_check_fails_where_a_manifest_is_wrong(
    kserve_models: types.ModuleType, change: Any, fault: str
) -> None:
    doc = yaml.safe_load((ROOT / "kserve" / "inferenceservice-custom.yaml").read_text())
    change(doc)
    with pytest.raises(AssertionError, match=fault):
        check(kserve_models, doc, "V1beta1InferenceService", "doc")


def test_the_custom_predictor_runs_as_the_base_does() -> None:
    """What KServe cannot take from the base (its pods are its own) is the base's, written again: checked."""
    (isvc,) = (d for d in rendered("kserve") if d["kind"] == "InferenceService")
    # no Knative (its activator does not pass WebSockets): KServe's Deployment-and-Service mode, by either name
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Standard")
    _, custom, _ = serving(rendered("kserve"))
    _, base, _ = serving(rendered("overlays/cpu"))
    for field in ("image", "resources", "securityContext", "lifecycle", "volumeMounts", "envFrom"):
        assert custom[field] == base[field], field
    cpu = environment(rendered("overlays/cpu"))
    given = {e["name"]: e["value"] for e in custom["env"]}
    assert given == {
        **{k: cpu[k] for k in ("LSTM_WORKERS", "LSTM_PROVIDER")},
        **{e["name"]: e["value"] for e in base["env"]},
    }


def test_the_triton_runtime_serves_the_same_repository() -> None:
    """The repository Triton is pointed at is the service's own (its folder name), and every model in it
    is described as Triton reads it."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model = yaml.safe_load(TRITON.read_text())["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"  # the ServingRuntime KServe installs for Triton
    assert model["storageUri"].split("://")[0] in ("pvc", "gs", "s3", "hdfs", "https", "oci")  # KServe's schemes
    repository = ROOT.parents[1] / Settings().model_repository
    assert model["storageUri"].rstrip("/").endswith("/" + repository.name)
    configs = sorted(repository.glob("*/config.pbtxt"))
    assert configs
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name and config.backend == "onnxruntime"
