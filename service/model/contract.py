"""The one definition of what a served model is on disk and in its graph, used by training and serving.

A model repository is Triton's layout::

    <repository>/<name>/config.pbtxt               Triton's configuration (written by export)
    <repository>/<name>/<version>/model.onnx       the graph
    <repository>/<name>/<version>/metadata.json    sizes, names, statistics and figures

The graph's signature is ``(x, h0, c0, lengths) -> (y, hn, cn)``: data batch first,
states ``[layers, batch, hidden]`` (batch second, as ONNX's LSTM node keeps them).
This module imports nothing heavy: training, export and the service all read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .horizons import Horizons

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.pbtxt"
MODEL_CARD_FILE = "model_card.md"  # for people: what the model is, how well it does (the service ignores it)

INPUTS = ("x", "h0", "c0", "lengths")
OUTPUTS = ("y", "hn", "cn")
FINAL_STATES = ("hn", "cn")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # the Open Inference Protocol's name: FP32, INT32
    dims: tuple[int, ...]  # -1: any size (batch, steps)
    meaning: str


def tensors(input_size: int, output_size: int, hidden_size: int, num_layers: int) -> dict[str, TensorSpec]:
    """Every input and output of the graph, by name, in signature order (inputs, then outputs).
    Takes sizes rather than a ModelSpec: export calls it before any metadata exists."""
    state = (num_layers, -1, hidden_size)
    specs = [
        TensorSpec("x", "FP32", (-1, -1, input_size), "batch, steps, features"),
        TensorSpec("h0", "FP32", state, "layers, batch, hidden"),
        TensorSpec("c0", "FP32", state, "layers, batch, hidden"),
        TensorSpec("lengths", "INT32", (-1,), "batch"),
        TensorSpec("y", "FP32", (-1, -1, output_size), "batch, steps, outputs"),
        TensorSpec("hn", "FP32", state, "layers, batch, hidden"),
        TensorSpec("cn", "FP32", state, "layers, batch, hidden"),
    ]
    return {t.name: t for t in specs}


@dataclass(frozen=True)
class ModelSpec:
    """What the served model is: read from its metadata and checked against the ONNX graph."""

    name: str
    version: str
    input_size: int  # F
    output_size: int  # O
    hidden_size: int  # H
    num_layers: int  # L
    feature_names: list[str]
    target_names: list[str]
    metadata: dict[str, Any] = field(repr=False)
    # The model file's content (a digest): a version rewritten in place is another revision, whose server-held
    # sequences are not the old one's. The same file has the same revision on every replica.
    revision: str = ""

    @functools.cached_property
    def horizons(self) -> Horizons:
        """How far ahead it forecasts, and its intervals (checked when the model loads)."""
        return Horizons.read(self.metadata, self.output_size, self.target_names)

    @property
    def exact(self) -> bool:
        """Whether its answers are the same however its calls are made. An int8 version's are not: its activations
        are quantized with a scale made per ONNX Runtime call, and its threads split the work differently."""
        return self.metadata.get("precision") != "int8"

    def reads(self) -> tuple[int, int, int]:
        """What a request is read and checked against: values per step, and the states' layers and units. Two
        versions that read the same may run each other's requests (their outputs may differ)."""
        return self.input_size, self.num_layers, self.hidden_size

    @functools.cached_property
    def graph(self) -> dict[str, TensorSpec]:
        """The graph's tensors by name (once per version: every /v2 request reads it; read only)."""
        return tensors(self.input_size, self.output_size, self.hidden_size, self.num_layers)

    def zero_states(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Initial h and c of ``batch`` sequences: zeros [L, B, H] float32, two separate arrays."""
        shape = (self.num_layers, batch, self.hidden_size)
        return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
