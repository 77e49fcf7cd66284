# The LSTM inference service.
#
#   docker build -t lstm-service .                                  # onnxruntime-gpu + CUDA/cuDNN wheels: GPU, else CPU
#   docker build -t lstm-service:cpu --build-arg ONNXRUNTIME=cpu .   # slim, CPU only
#
# Training in a container has its own file: docker/train.Dockerfile.
# The serving image holds no torch, no compiler and no training code: only the
# virtual environment built from pyproject.toml, the service and the default model.
# Only the classic builder's features are used (no BuildKit syntax).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LANG=C.UTF-8

# ---- build: the serving virtual environment -------------------------------
FROM base AS build
# gpu: onnxruntime-gpu with its CUDA and cuDNN wheels; cpu: onnxruntime alone.
ARG ONNXRUNTIME=gpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/requirements.py
RUN python -m venv /opt/venv \
    && python docker/requirements.py "${ONNXRUNTIME}" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --quiet -r /tmp/requirements.txt
COPY service/ service/
RUN /opt/venv/bin/pip install --quiet --no-deps . \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- serve: the runtime image ---------------------------------------------
FROM base AS serve
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin lstm
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The default model; a models directory mounted on /app/models replaces it.
COPY models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    LSTM_MODEL_REPOSITORY=/app/models \
    LSTM_HOST=0.0.0.0 \
    LSTM_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service.server.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
