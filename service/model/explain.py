"""Per-step gates and states of the served LSTM, from the ONNX file's own weights.

A reference implementation of the LSTM equations in numpy (float64), kept apart
from the fast path: the engine builds it on the first request that asks for an
explanation, and a normal request never touches it.

    i(t) = sigmoid(W_i x(t) + R_i h(t-1) + b_i)        input gate
    f(t) = sigmoid(W_f x(t) + R_f h(t-1) + b_f)        forget gate
    g(t) = tanh(W_c x(t) + R_c h(t-1) + b_c)           candidate values
    o(t) = sigmoid(W_o x(t) + R_o h(t-1) + b_o)        output gate
    c(t) = f(t) * c(t-1) + i(t) * g(t)                 cell state (long-term memory)
    h(t) = o(t) * tanh(c(t))                           hidden state (short-term memory)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ExplainUnavailable

# What an explanation holds per layer, step and unit, in answer order.
FIELDS = ("forget", "input", "output", "candidate", "cell", "hidden")


@dataclass(frozen=True)
class LayerWeights:
    w: np.ndarray  # [4H, input]: rows in ONNX's gate order i, o, f, c
    r: np.ndarray  # [4H, H]
    b: np.ndarray  # [4H]: input and recurrence biases summed


def _dequantized(values: dict[str, np.ndarray], name: str, scale_and_zero: Any) -> np.ndarray:
    """A ``DynamicQuantizeLSTM`` weight [1, input, 4H] of int8 as the float [4H, input] an ``LSTM`` holds: scales
    and zero points per tensor ([1]) or per gate row ([1, 4H])."""
    scale_name, zero_name = scale_and_zero
    if name not in values or scale_name not in values or zero_name not in values:
        raise ExplainUnavailable(f"quantized weight {name!r} without its constant scale and zero point")
    scale, zero = (values[n].reshape(1, 1, -1).astype(np.float64) for n in (scale_name, zero_name))
    out: np.ndarray = ((values[name].astype(np.float64) - zero) * scale)[0].T
    return out


def _sigmoid(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * v))  # overflow-free
    return out


@dataclass(frozen=True)
class Explainer:
    x_mean: np.ndarray  # [F]: the graph's own input normalisation
    x_std: np.ndarray  # [F]
    layers: list[LayerWeights]

    @property
    def hidden_size(self) -> int:
        return int(self.layers[0].r.shape[1])

    @classmethod
    def from_onnx(cls, graph_bytes: bytes) -> Explainer:
        """Read the normalisation and the LSTM nodes' W, R, B from the ONNX graph."""
        import onnx
        from onnx import numpy_helper

        graph = onnx.load_from_string(graph_bytes).graph
        values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

        def producer_of(op: str, first_input: str) -> Any:
            found = [n for n in graph.node if n.op_type == op and n.input and n.input[0] == first_input]
            if len(found) != 1 or found[0].input[1] not in values:
                raise ExplainUnavailable(f"no {op} of {first_input!r} by a constant: not the exported normalisation")
            return found[0]

        sub = producer_of("Sub", "x")
        div = producer_of("Div", sub.output[0])
        layers = []
        for node in (n for n in graph.node if n.op_type in ("LSTM", "DynamicQuantizeLSTM")):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            extra = set(attrs) - {"hidden_size"} - ({"direction"} if attrs.get("direction") == b"forward" else set())
            if extra or not all(name in values for name in node.input[1:3]):
                raise ExplainUnavailable(f"LSTM node {node.name!r} is not a plain forward LSTM with constant weights")
            hidden = int(attrs["hidden_size"])
            bias = values[node.input[3]][0] if len(node.input) > 3 and node.input[3] else np.zeros(8 * hidden)
            if node.op_type == "LSTM":
                w, r = values[node.input[1]][0], values[node.input[2]][0]
            elif len(node.input) < 12:
                raise ExplainUnavailable(f"quantized LSTM node {node.name!r} without its weights' scales")
            else:  # int8 weights: the values they stand for (the activations' own rounding is not modelled)
                # inputs: X, W, R, B, lengths, h0, c0, P, then W's scale and zero point, then R's
                w, r = (_dequantized(values, node.input[k], node.input[s : s + 2]) for k, s in ((1, 8), (2, 10)))
            layers.append(
                LayerWeights(
                    w=w.astype(np.float64),
                    r=r.astype(np.float64),
                    b=(bias[: 4 * hidden] + bias[4 * hidden :]).astype(np.float64),
                )
            )
        if not layers:
            raise ExplainUnavailable("the graph has no LSTM node")
        return cls(values[sub.input[1]].astype(np.float64), values[div.input[1]].astype(np.float64), layers)

    def explain(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> dict[str, np.ndarray]:
        """One sequence: x [T, F] raw units, h0 and c0 [L, H]. Each field comes back as [L, T, H] float32."""
        steps, hidden = len(x), self.hidden_size
        out = {name: np.empty((len(self.layers), steps, hidden)) for name in FIELDS}
        seq = (x.astype(np.float64) - self.x_mean) / self.x_std
        for layer, wts in enumerate(self.layers):
            projected = seq @ wts.w.T + wts.b  # the input's share of every step's gates, at once
            h, c = h0[layer].astype(np.float64), c0[layer].astype(np.float64)
            for t in range(steps):
                gates = projected[t] + wts.r @ h
                i = _sigmoid(gates[:hidden])
                o = _sigmoid(gates[hidden : 2 * hidden])
                f = _sigmoid(gates[2 * hidden : 3 * hidden])
                g = np.tanh(gates[3 * hidden :])
                c = f * c + i * g
                h = o * np.tanh(c)
                for name, value in zip(FIELDS, (f, i, o, g, c, h), strict=True):
                    out[name][layer, t] = value
            seq = out["hidden"][layer]  # the next layer reads this layer's hidden states
        return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in out.items()}
