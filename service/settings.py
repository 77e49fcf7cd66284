"""Configuration from the environment (prefix ``LSTM_``), read once through ``get_settings()``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LSTM_", protected_namespaces=("settings_",))

    # Where the models are: <model_repository>/<name>/<version>/{model.onnx,metadata.json}.
    model_repository: Path = Path("models")
    # The model to serve; None: the repository's only model.
    model_name: str | None = None
    # Its version; None: the highest.
    model_version: int | None = Field(default=None, ge=1)
    # auto: CUDA where ONNX Runtime can use a GPU, else the CPU. cuda: fail at start-up without one.
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    # ONNX Runtime threads inside one operator (0: ONNX Runtime's choice, one per core).
    intra_op_threads: int = Field(default=0, ge=0)
    # ONNX Runtime threads across independent operators.
    inter_op_threads: int = Field(default=1, ge=0)
    # Limits of one /predict request.
    max_batch_size: int = Field(default=256, ge=1)  # sequences
    max_steps: int = Field(default=10_000, ge=1)  # steps in each sequence
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # 413 beyond
    # With "explain": true, steps (over all sequences) x layers x hidden units; each value is six numbers back.
    explain_max_values: int = Field(default=131_072, ge=1)
    # Where `python -m service` listens.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Serve the interactive API docs at /docs and /redoc.
    docs: bool = True


@lru_cache
def get_settings() -> Settings:
    return Settings()
