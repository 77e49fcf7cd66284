"""Finding models in a repository on disk (the layout is in ``contract``): names, versions, the one to serve."""

from __future__ import annotations

from pathlib import Path

from .contract import MODEL_FILE
from .errors import ModelLoadError


def versions(root: Path, name: str) -> list[int]:
    """The versions of a model, ascending: numeric folders that hold a model file."""
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MODEL_FILE).is_file())


def model_names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and versions(root, p.name))


def resolve(root: Path, name: str | None, version: int | None) -> Path:
    """The folder of the model to serve; the only model when no name is given, the latest version when none is."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a directory")
    if name is None:
        names = model_names(root)
        if not names:
            raise ModelLoadError(f"no model in the repository {root} (expected <name>/<version>/{MODEL_FILE})")
        if len(names) != 1:
            found = ", ".join(names) or "none"
            raise ModelLoadError(f"set LSTM_MODEL_NAME: the repository {root} holds {len(names)} models ({found})")
        name = names[0]
    found_versions = versions(root, name)
    if not found_versions:
        raise ModelLoadError(f"no model {name!r} in {root} (expected {root}/{name}/<version>/{MODEL_FILE})")
    if version is None:
        version = found_versions[-1]
    elif version not in found_versions:
        raise ModelLoadError(f"model {name!r} has no version {version} in {root} (versions: {found_versions})")
    return root / name / str(version)
