"""Pydantic models of the HTTP contract, for the OpenAPI docs and the small JSON routes.

``/predict`` is parsed by ``payload`` (orjson and numpy, far faster than pydantic on
nested float lists); ``PredictRequest`` documents exactly what that parser accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Tensor3 = list[list[list[float]]]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: Tensor3 = Field(
        min_length=1,
        description="Sequences [batch][step][feature], raw units. "
        "Sequences may differ in length; each has at least one step.",
    )
    h0: Tensor3 | None = Field(
        default=None,
        description="Initial hidden state [batch][layer][unit]: a previous answer's `hn`. "
        "With `c0`, or neither (zeros).",
    )
    c0: Tensor3 | None = Field(
        default=None,
        description="Initial cell state [batch][layer][unit]: a previous answer's `cn`. With `h0`, or neither (zeros).",
    )


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    outputs: Tensor3 = Field(description="[batch][step][output]: exactly each sequence's own steps, no padding.")
    hn: Tensor3 = Field(description="Hidden state after each sequence's last step [batch][layer][unit].")
    cn: Tensor3 = Field(description="Cell state after each sequence's last step [batch][layer][unit].")
    model: ModelRef


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    ctx: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]


class LimitsInfo(BaseModel):
    max_batch_size: int = Field(description="Sequences per request.")
    max_steps: int = Field(description="Steps per sequence.")
    max_body_bytes: int = Field(description="Request body size; 413 beyond.")


class ModelInfo(BaseModel):
    name: str
    version: str
    task: str | None
    input_size: int
    output_size: int
    hidden_size: int
    num_layers: int
    feature_names: list[str]
    target_names: list[str]
    provider: str = Field(description="The ONNX Runtime execution provider actually running the model.")
    providers: list[str] = Field(description="All providers of the session, in priority order.")
    device: str = Field(description="cuda or cpu.")
    limits: LimitsInfo
    metrics: dict[str, Any] = Field(description="Training figures from the model's metadata.")


class Health(BaseModel):
    status: str
