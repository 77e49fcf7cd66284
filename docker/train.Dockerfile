# Trains and exports a model inside a container, for users without a local Python setup.
#
#   docker build -t lstm-service:train -f docker/train.Dockerfile .
#   docker run --rm -v "$PWD/models:/app/models" -v "$PWD/artifacts:/app/artifacts" lstm-service:train
#   docker run --rm -v "$PWD/models:/app/models" lstm-service:train \
#       sh -c "python -m training train --max-epochs 20 && python -m training export"
#
# torch is pinned in pyproject.toml; PyPI's Linux wheel of it bundles CUDA. For a CPU-only
# build point pip elsewhere: --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# (or PIP_FIND_LINKS=<a folder or URL holding the wheel>).
# A file of its own, because the classic builder builds every stage before its target.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LANG=C.UTF-8
ARG PIP_FIND_LINKS=""
ARG PIP_EXTRA_INDEX_URL=""
WORKDIR /app
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/requirements.py
RUN python -m venv /opt/venv \
    && python docker/requirements.py cpu train > /tmp/requirements.txt \
    && PIP_FIND_LINKS="${PIP_FIND_LINKS}" PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL}" \
       /opt/venv/bin/pip install --quiet -r /tmp/requirements.txt
COPY service/ service/
COPY training/ training/
RUN /opt/venv/bin/pip install --quiet --no-deps . \
    && /opt/venv/bin/python -c "import onnxruntime, torch"
COPY data/ data/
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin lstm \
    && mkdir -p models artifacts && chown lstm models artifacts
ENV PATH=/opt/venv/bin:$PATH MPLCONFIGDIR=/tmp/matplotlib
USER 10001
CMD ["sh", "-c", "python -m training train && python -m training export"]

