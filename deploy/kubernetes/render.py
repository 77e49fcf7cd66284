"""``kubectl kustomize`` for machines without kubectl: renders these manifests' kustomizations to the same
objects, for the kustomize features they use (resources, labels, a ConfigMap generator without name hashes,
images, JSON patches), and refuses any other. ``tests/test_kubernetes.py`` checks it against kubectl's own
output wherever kubectl is installed.

    python deploy/kubernetes/render.py deploy/kubernetes/overlays/cpu
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KNOWN = {"apiVersion", "kind", "resources", "labels", "configMapGenerator", "generatorOptions", "images", "patches"}
Doc = dict[str, Any]


def render(folder: Path) -> list[Doc]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{folder}: {sorted(unknown)} not supported here: use kubectl kustomize")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    generators = spec.get("configMapGenerator", [])
    if generators and not spec.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise ValueError(f"{folder}: generated names with hashes are not supported here: use kubectl kustomize")
    for generator in generators:
        _generate(docs, generator)
    for image in spec.get("images", []):
        for container in (c for d in docs for c in _containers(d)):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target, ops = patch["target"], yaml.safe_load(patch["patch"])
        for i, doc in enumerate(docs):
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                docs[i] = jsonpatch.apply_patch(doc, ops)
    for label in spec.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise ValueError(f"{folder}: labels in selectors or templates are not supported here")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    return docs


def _generate(docs: list[Doc], generator: Doc) -> None:
    if set(generator) - {"name", "literals", "behavior"}:
        raise ValueError(f"configMapGenerator {generator['name']}: only literals are supported here")
    data = dict(line.split("=", 1) for line in generator.get("literals", []))
    if generator.get("behavior", "create") == "merge":
        (existing,) = (d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"])
        existing["data"].update(data)
    else:
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})


def _containers(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


if __name__ == "__main__":
    yaml.safe_dump_all(render(Path(sys.argv[1])), sys.stdout, sort_keys=True)
