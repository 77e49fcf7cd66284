"""Pydantic models of the HTTP contract, for the OpenAPI docs and the small JSON routes.

``/predict`` is parsed by its codec (``protocols.rest``, with ``pipeline.jsondata``: far faster than
pydantic on nested float lists); ``PredictRequest`` documents exactly what that codec accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..pipeline.forecast import MAX_QUANTILES
from ..pipeline.sequences import MAX_CHUNK, MAX_ID, MAX_ID_CHARS

Tensor2 = list[list[float]]
Tensor3 = list[list[list[float]]]


class SequenceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[int, Field(ge=1, le=MAX_ID)] | Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)] = Field(
        description="The sequence: an unsigned integer or a string, the client's own."
    )
    start: bool = Field(default=False, description="This chunk starts (or restarts) it, from `h0`/`c0` or zeros.")
    end: bool = Field(default=False, description="This chunk ends it: no chunk goes on from its states.")
    chunk: Annotated[int, Field(ge=0, le=MAX_CHUNK)] | None = Field(
        default=None,
        description="The chunk's number (0 for the start, then 1, 2, ...): a chunk sent again with the number of "
        "the last one run is answered again and not applied twice; any other but the next is a 409.",
    )


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
    explain: bool = Field(
        default=False,
        description="Also return per-step gates and states (`explanation`); limited by `explain_max_values`.",
    )
    sequence: SequenceSpec | None = Field(
        default=None,
        description="A server-held sequence this chunk belongs to (one sequence per request): the server keeps its "
        "states between chunks, on any worker or replica. `h0`/`c0` only with `start`.",
    )
    forecast: ForecastAsk | None = Field(
        default=None,
        description="Also return each sequence's forecast ahead of its last step (`forecast`), with quantiles from "
        "the model's calibrated intervals.",
    )


class ForecastAsk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    horizon: int = Field(ge=1, description="Steps ahead of each sequence's last step: at most the model's horizons.")
    quantiles: list[float] | None = Field(
        default=None,
        max_length=MAX_QUANTILES,
        description="Quantile forecasts to add, each within the model's intervals (0.005 to 0.995 for the default).",
    )


class Forecast(BaseModel):
    mean: Tensor2 = Field(description="[horizon][target]: the forecast of each step ahead.")
    quantiles: dict[str, Tensor2] = Field(description='Quantile ("0.1") -> [horizon][target].')


class ModelRef(BaseModel):
    name: str
    version: str


class Explanation(BaseModel):
    """One sequence's LSTM internals, each [layer][step][unit]."""

    forget: Tensor3 = Field(description="Forget gate f(t) in (0, 1): how much of c(t-1) is kept.")
    input: Tensor3 = Field(description="Input gate i(t) in (0, 1): how much of the candidate is written.")
    output: Tensor3 = Field(description="Output gate o(t) in (0, 1): how much of tanh(c(t)) becomes h(t).")
    candidate: Tensor3 = Field(description="Candidate values g(t) in (-1, 1).")
    cell: Tensor3 = Field(description="Cell state c(t), the long-term memory.")
    hidden: Tensor3 = Field(description="Hidden state h(t), the short-term memory and the layer's output.")


class PredictResponse(BaseModel):
    outputs: Tensor3 = Field(description="[batch][step][output]: exactly each sequence's own steps, no padding.")
    hn: Tensor3 = Field(description="Hidden state after each sequence's last step [batch][layer][unit].")
    cn: Tensor3 = Field(description="Cell state after each sequence's last step [batch][layer][unit].")
    model: ModelRef
    explanation: list[Explanation] | None = Field(default=None, description='One per sequence, with "explain": true.')
    forecast: list[Forecast] | None = Field(default=None, description="One per sequence, with `forecast` asked.")


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
    explain_max_values: int = Field(description="With explain: steps (all sequences) x layers x hidden units.")


class HorizonsInfo(BaseModel):
    steps: int = Field(description="How far ahead the model forecasts: output k-1 of a step is k steps ahead.")
    targets: list[str] = Field(description="What it forecasts at each horizon.")
    quantiles: list[float] | None = Field(description="The lowest and highest quantile its intervals give; null: none.")


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
    horizons: HorizonsInfo
    metrics: dict[str, Any] = Field(description="Training figures from the model's metadata.")


class ModelVersions(BaseModel):
    name: str
    versions: list[str]
    serving_version: str = Field(description="The version `/v1/models/{name}/predict` uses.")


class ModelList(BaseModel):
    models: list[ModelVersions]
    default: ModelRef = Field(description="The model and version of `/predict` and `/model`.")


class Health(BaseModel):
    status: str


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place, to embed in the OpenAPI document (where a
    ``#/$defs/...`` reference would point at the document's root, not at the schema)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


# ---- KServe's time series forecast API (service/protocols/timeseries.py)
class TimeSeriesInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["univariate_time_series", "multivariate_time_series"]
    name: str = Field(min_length=1, max_length=256, description="Unique in the request.")
    series: list[float] | list[list[float]] = Field(
        min_length=1, description="[step][feature] (the model's features, in order); [step] for a one-feature model."
    )
    frequency: str = Field(description="S, T, H, D, W, M, Q or Y (or SECOND ... YEAR).")
    start_timestamp: str | None = Field(default=None, description="ISO 8601: when the series' first step is.")


class TimeSeriesOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    horizon: int = Field(ge=1, description="Steps ahead of each series' last step: at most the model's horizons.")
    quantiles: list[float] | None = Field(default=None, max_length=MAX_QUANTILES, description="Quantiles to add.")


class TimeSeriesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A model this server serves (its default version).")
    inputs: list[TimeSeriesInput] = Field(min_length=1)
    options: TimeSeriesOptions
    metadata: dict[str, Any] | None = None


class TimeSeriesForecast(BaseModel):
    type: Literal["univariate_time_series", "multivariate_time_series"]
    name: str
    mean_forecast: list[float] | list[list[float]] = Field(description="[horizon], or [horizon][target].")
    frequency: str
    start_timestamp: str | None = Field(description="One period after the series' last step; null without a start.")
    quantiles: dict[str, list[float] | list[list[float]]]
    targets: list[str] = Field(description="What is forecast (this service's addition).")


class TimeSeriesOutput(BaseModel):
    type: Literal["time_series_forecast"]
    id: str
    status: str
    content: list[TimeSeriesForecast]


class TimeSeriesResponse(BaseModel):
    id: str
    created_at: int
    status: str
    error: None = None
    model: str
    model_version: str = Field(description="The version that forecast (this service's addition).")
    outputs: list[TimeSeriesOutput]


class TimeSeriesErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = Field(description="The field at fault: inputs.0.series.3.1.")
    type: str


class TimeSeriesError(BaseModel):
    error: TimeSeriesErrorDetail
