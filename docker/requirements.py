"""Print the serving requirements from pyproject.toml for one image variant.

    python docker/requirements.py gpu         # onnxruntime-gpu with its CUDA and cuDNN wheels (pip extras)
    python docker/requirements.py cpu         # onnxruntime, no CUDA libraries
    python docker/requirements.py cpu train   # and the extra `train` (torch, onnx, ...)

pyproject.toml stays the one place that names the runtime dependencies; this
only swaps the ONNX Runtime build for the variant.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ORT = {"gpu": "onnxruntime-gpu[cuda,cudnn]", "cpu": "onnxruntime"}


def requirements(variant: str, extras: list[str], pyproject: Path = Path("pyproject.toml")) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    out: list[str] = []
    for dep in deps:
        name = re.split(r"[\s;<>=!~\[]", dep, maxsplit=1)[0].lower()
        if name in ("onnxruntime", "onnxruntime-gpu"):
            version = re.search(r"(?:>=|==|~=)[^;,\s]+", dep)
            line = ORT[variant] + (version.group(0) if version else "")
            if line not in out:
                out.append(line)
        else:
            out.append(dep)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ORT:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(ORT)}}} [EXTRA ...]")
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
