"""The naive baseline: what a user writes first. FastAPI, pydantic, PyTorch eager, plain JSON.

Same contract as the service's /predict (inputs, h0, c0 -> outputs, hn, cn), same model weights
(the default model's checkpoint). Run: LSTM_CHECKPOINT=... uvicorn bench.naive_server:app
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from training.export import load_checkpoint

torch.set_num_threads(int(os.environ.get("NAIVE_THREADS", "1")))
model, _ = load_checkpoint(os.environ.get("LSTM_CHECKPOINT", "artifacts/seattle-weather/checkpoint.pt"))
app = FastAPI()


class Request(BaseModel):
    inputs: list[list[list[float]]]
    h0: list[list[list[float]]] | None = None
    c0: list[list[list[float]]] | None = None


@app.get("/health/ready")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
def predict(req: Request) -> dict[str, object]:
    outputs, hn, cn = [], [], []
    with torch.no_grad():
        for i, seq in enumerate(req.inputs):
            x = torch.tensor([seq])
            if req.h0 is not None and req.c0 is not None:
                h0 = torch.tensor(req.h0[i]).unsqueeze(1)
                c0 = torch.tensor(req.c0[i]).unsqueeze(1)
            else:
                h0, c0 = model.zero_state(1)
            y, h, c = model(x, h0, c0, torch.tensor([len(seq)]))
            outputs.append(y[0].tolist())
            hn.append(h[:, 0].tolist())
            cn.append(c[:, 0].tolist())
    return {"outputs": outputs, "hn": hn, "cn": cn}
