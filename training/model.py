"""The LSTM forecaster: normalisation, a stacked LSTM and a per-step linear head.

The module takes and returns raw units: the feature and target statistics of the
training split are buffers, so they travel inside the checkpoint and the ONNX
graph. Its forward is the exported signature: ``(x, h0, c0, lengths) -> (y, hn, cn)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass
class ModelConfig:
    n_features: int = 4  # F: values per step the model reads
    n_outputs: int = 1  # O: values per step the head writes
    hidden_size: int = 64  # H: size of h(t) and c(t) in each layer
    num_layers: int = 2  # L: stacked LSTM layers
    dropout: float = 0.1  # between LSTM layers while training (needs num_layers > 1)


class LSTMForecaster(nn.Module):
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("x_mean", torch.zeros(cfg.n_features))
        self.register_buffer("x_std", torch.ones(cfg.n_features))
        self.register_buffer("y_mean", torch.zeros(cfg.n_outputs))
        self.register_buffer("y_std", torch.ones(cfg.n_outputs))
        self.lstm = nn.LSTM(
            input_size=cfg.n_features,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_size, cfg.n_outputs)

    def set_stats(self, stats: dict[str, list[float]]) -> None:
        """Copy the training split's mean and std into the buffers."""
        for key in ("x_mean", "x_std", "y_mean", "y_std"):
            getattr(self, key).copy_(torch.tensor(stats[key], dtype=torch.float32))

    def zero_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.cfg.num_layers, batch, self.cfg.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)

    def normalise_target(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean) / self.y_std

    def forward(
        self,
        x: torch.Tensor,  # [B, T, F] raw units, padded past each sequence's length
        h0: torch.Tensor,  # [L, B, H]
        c0: torch.Tensor,  # [L, B, H]
        lengths: torch.Tensor,  # [B] int, each in 1..T
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = (x - self.x_mean) / self.x_std
        # Packing makes the exported ONNX LSTM node take `sequence_lens`, so the
        # final states of a padded sequence come from its own last step.
        packed = pack_padded_sequence(z, lengths.to(torch.int64), batch_first=True, enforce_sorted=False)
        out, (hn, cn) = self.lstm(packed, (h0, c0))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        y = self.head(out) * self.y_std + self.y_mean
        return y, hn, cn
