"""Finding models in a repository on disk (the layout is in ``contract``): names, versions, the one to serve.

Which versions serve is the model's ``version_policy`` in its ``config.pbtxt``, as Triton reads it:
``latest: { num_versions: N }`` (the N highest), ``all: {}``, or ``specific: { versions: [...] }``; with no
policy (or no ``config.pbtxt``), Triton's default, the latest one.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .contract import CONFIG_FILE, METADATA_FILE, MODEL_FILE
from .errors import ModelLoadError

MAX_CONFIG_BYTES = 1024 * 1024  # a config.pbtxt is a few kilobytes; a huge one would hold a load up for long


def on_disk(root: Path, name: str) -> list[int]:
    """Every version of a model in the repository, ascending: numeric folders that hold a model file."""
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if _version_name(p.name) and (p / MODEL_FILE).is_file())


def _version_name(name: str) -> bool:
    """A version folder's name: a number written plainly (``2``; not ``02``, not ``²``), as Triton reads them."""
    return name.isascii() and name.isdigit() and name == str(int(name))


def version_policy(root: Path, name: str) -> model_config_pb2.ModelVersionPolicy:
    """The model's version policy from its ``config.pbtxt`` (Triton's message, parsed by protobuf)."""
    return config(root / name / CONFIG_FILE).version_policy


def config(path: Path) -> model_config_pb2.ModelConfig:
    """A ``config.pbtxt`` as Triton's message (empty where there is no file; ``ModelLoadError`` if unreadable)."""
    parsed = model_config_pb2.ModelConfig()
    if path.is_file():
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"{path} is over {MAX_CONFIG_BYTES} bytes: not a model configuration")
        try:
            text_format.Parse(path.read_text(), parsed)
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path} is not a Triton model configuration: {e}") from None
    return parsed


def versions(root: Path, name: str) -> list[int]:
    """The versions of a model that serve, ascending: those on disk that its version policy names."""
    found = on_disk(root, name)
    policy = version_policy(root, name)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return found
    if choice == "specific":
        return [v for v in found if v in set(policy.specific.versions)]
    newest = policy.latest.num_versions if choice == "latest" else 1
    return found[-newest:] if newest > 0 else []


Stamp = tuple[tuple[int, int, int] | None, ...]  # (mtime_ns, size, inode) of files, None where missing


def _stamp(*paths: Path) -> Stamp:
    def one(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    return tuple(one(p) for p in paths)


def version_stamp(folder: Path) -> Stamp:
    """What a version's files are now: a version whose stamp is unchanged need not be loaded again."""
    return _stamp(folder / MODEL_FILE, folder / METADATA_FILE)


def model_stamp(root: Path, name: str) -> tuple[Stamp, tuple[tuple[int, Stamp], ...]]:
    """What a model's configuration and versions are now: the poll loads a model again when this changes."""
    folder = root / name
    return _stamp(folder / CONFIG_FILE), tuple((v, version_stamp(folder / str(v))) for v in on_disk(root, name))


def model_names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and on_disk(root, p.name))


def resolve(root: Path, name: str | None, version: int | None) -> Path:
    """The folder of the model to serve; the only model when no name is given, the latest version when none is."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a directory")
    if name is None:
        names = [n for n in model_names(root) if _serves(root, n)]
        if not names:
            raise ModelLoadError(f"no model in the repository {root} (expected <name>/<version>/{MODEL_FILE})")
        if len(names) != 1:
            found = ", ".join(names) or "none"
            raise ModelLoadError(f"set LSTM_MODEL_NAME: the repository {root} holds {len(names)} models ({found})")
        name = names[0]
    serving = versions(root, name)
    if not serving:
        if on_disk(root, name):
            raise ModelLoadError(
                f"model {name!r}: its version_policy in {root / name / CONFIG_FILE} names no version on disk"
            )
        raise ModelLoadError(f"no model {name!r} in {root} (expected {root}/{name}/<version>/{MODEL_FILE})")
    if version is None:
        version = serving[-1]
    elif version not in serving:
        why = "its version_policy leaves it out" if version in on_disk(root, name) else "it is not in the repository"
        raise ModelLoadError(f"model {name!r} has no version {version} to serve: {why} (serving: {serving})")
    return root / name / str(version)


def _serves(root: Path, name: str) -> bool:
    """Whether a model has a version to serve (a configuration that cannot be read gives it none)."""
    try:
        return bool(versions(root, name))
    except ModelLoadError:
        return False
