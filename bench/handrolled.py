"""The hand-rolled baseline: the server a user could write in an afternoon, and the bar they would set.

FastAPI, ONNX Runtime called inline on the event loop, orjson, one uvicorn worker, no logging,
no batching, no validation beyond what numpy does. Same contract as the service's /predict for
equal-length sequences (inputs, h0, c0 -> outputs, hn, cn), same ONNX file.
Run: uvicorn bench.handrolled:app --workers 1 --no-access-log
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request, Response

MODEL = os.environ.get("LSTM_ONNX", "models/seattle-weather/1/model.onnx")
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
layers, _, hidden = session.get_inputs()[1].shape
app = FastAPI()


@app.get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
async def predict(request: Request) -> Response:
    doc = orjson.loads(await request.body())
    x = np.asarray(doc["inputs"], dtype=np.float32)
    if doc.get("h0") is not None:
        h0 = np.ascontiguousarray(np.asarray(doc["h0"], dtype=np.float32).transpose(1, 0, 2))
        c0 = np.ascontiguousarray(np.asarray(doc["c0"], dtype=np.float32).transpose(1, 0, 2))
    else:
        h0 = c0 = np.zeros((layers, len(x), hidden), dtype=np.float32)
    lengths = np.full(len(x), x.shape[1], dtype=np.int32)
    y, hn, cn = session.run(None, {"x": x, "h0": h0, "c0": c0, "lengths": lengths})
    answer = {
        "outputs": y,
        "hn": np.ascontiguousarray(hn.transpose(1, 0, 2)),
        "cn": np.ascontiguousarray(cn.transpose(1, 0, 2)),
    }
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
