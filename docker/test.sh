#!/usr/bin/env bash
# make docker-test: build the images, run the compose stack on a real Docker engine, check it from
# outside, stop it, bring it down. Needs root (to start the engine) and ../shared/docker/.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED_DOCKER:-../shared/docker}
py=${PYTHON:-.venv/bin/python}
port=${LSTM_TEST_PORT:-18000}
compose="$shared/compose-host.sh"
log() { printf '\n== docker-test: %s\n' "$*"; }
fail() { printf '\ndocker-test FAILED: %s\n' "$*" >&2; exit 1; }

[ -x "$shared/engine-up.sh" ] || fail "no Docker engine helper at $shared/engine-up.sh: cannot start a Docker engine here"
"$shared/engine-up.sh" || fail "no Docker engine could be started (see the lines above)"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer"

# Inside the stack: loopback only, on a port of its own (the host's network is shared).
export LSTM_HOST=127.0.0.1 LSTM_PORT=$port COMPOSE_PROJECT_NAME=lstm-docker-test
# Down with every profile the test brings up (a service of a profile not named is left running).
down() { COMPOSE_ARGS="--profile shared-state" "$compose" down -v --remove-orphans; }
cleanup() { down >/dev/null 2>&1 || true; }
trap cleanup EXIT

log "hadolint"
.venv/bin/hadolint Dockerfile docker/train.Dockerfile docker/valkey.Dockerfile

log "build the slim CPU image"
LSTM_ONNXRUNTIME=cpu "$compose" build lstm
log "build the CUDA image and bring the stack up (it runs on the CPU here)"
"$compose" up -d --build --wait --wait-timeout 180 lstm

for image in lstm-service:gpu lstm-service:cpu; do
  docker run --rm --network none --entrypoint python "$image" -c '
import importlib.util as u, shutil, sys
assert u.find_spec("torch") is None, "torch in the serving image"
assert u.find_spec("training") is None, "training code in the serving image"
assert not any(shutil.which(c) for c in ("gcc", "cc", "g++")), "a compiler in the serving image"
' || fail "$image holds what serving does not need"
done
# The CUDA image: with the wheels' libraries preloaded, CUDA fails here for want of the driver alone
# (libcuda.so.1, which the NVIDIA container toolkit mounts on a GPU host), and the CPU takes over.
cuda_log=$(docker run --rm --network none --entrypoint python lstm-service:gpu -c '
import onnxruntime as ort
ort.preload_dlls()
s = ort.InferenceSession("/app/models/seattle-weather/1/model.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("providers", s.get_providers())' 2>&1)
grep -q "libcuda.so.1" <<<"$cuda_log" || fail "the CUDA image misses more than the driver: $cuda_log"
grep -qE "Failed to load (libcublas|libcudnn|libcurand|libcufft|libcudart)" <<<"$cuda_log" \
  && fail "the CUDA image lacks CUDA or cuDNN libraries: $cuda_log"
grep -q "providers \['CPUExecutionProvider'\]" <<<"$cuda_log" || fail "no CPU fallback: $cuda_log"
docker run --rm --network none --entrypoint python lstm-service:cpu -c '
import importlib.util as u; assert u.find_spec("nvidia") is None, "CUDA wheels in the slim image"' \
  || fail "the slim image holds CUDA libraries"

log "checks from outside the container"
LSTM_URL="http://127.0.0.1:$port" "$py" -m pytest -q -p no:cacheprovider docker/test_stack.py -k "not sequence"

log "the process runs as non-root"
uid=$("$compose" exec -T lstm id -u)
[ "$uid" != "0" ] || fail "the service runs as root"
echo "uid $uid"

log "server-held sequences in the compose Valkey (profile shared-state), across a restart of the service"
valkey_port=$((port + 3))
export LSTM_VALKEY_BIND=127.0.0.1 LSTM_VALKEY_PORT=$valkey_port
COMPOSE_ARGS="--profile shared-state" "$compose" up -d --build --wait --wait-timeout 120 valkey
export LSTM_STATE_URL="redis://127.0.0.1:$valkey_port/0"
"$compose" up -d --wait --wait-timeout 180 lstm
LSTM_URL="http://127.0.0.1:$port" LSTM_STACK_SEQUENCE=start "$py" -m pytest -q -p no:cacheprovider \
  docker/test_stack.py -k sequence
"$compose" restart lstm
"$compose" up -d --wait --wait-timeout 180 lstm
LSTM_URL="http://127.0.0.1:$port" LSTM_STACK_SEQUENCE=finish "$py" -m pytest -q -p no:cacheprovider \
  docker/test_stack.py -k sequence
unset LSTM_STATE_URL

log "stop: SIGTERM, graceful drain, exit 0"
container=$("$compose" ps -q lstm)
"$compose" stop lstm
code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
logs=$(docker logs "$container" 2>&1)
grep -q "Application shutdown complete" <<<"$logs" || fail "no graceful shutdown in the logs"
[ "$code" = "0" ] || fail "the service exited $code on SIGTERM"
echo "exit code $code"

log "train and export a model inside a container"
find_links=""
if ls /opt/wheels/torch-2.13.0*.whl >/dev/null 2>&1; then
  # This machine keeps a CPU build of torch on disk: serve it to the build over loopback.
  wheel_port=$((port + 1))
  python3 -m http.server --bind 127.0.0.1 --directory /opt/wheels "$wheel_port" >/dev/null 2>&1 &
  wheels_pid=$!
  trap 'kill $wheels_pid 2>/dev/null || true; cleanup' EXIT
  find_links="http://127.0.0.1:$wheel_port/"
fi
PIP_FIND_LINKS=$find_links COMPOSE_ARGS="--profile train" "$compose" build train
out=$(mktemp -d)
chmod 0777 "$out"
docker run --rm --network none -v "$out:/app/models" lstm-service:train \
  sh -c "python -m training train --max-epochs 2 --hidden-size 8 --no-plots && python -m training export"
[ -s "$out/seattle-weather/1/model.onnx" ] && [ -s "$out/seattle-weather/1/metadata.json" ] \
  || fail "the training container wrote no model"

log "a mounted models directory replaces the baked-in model"
mounted_port=$((port + 2))
docker run -d --name lstm-docker-test-mounted --network host -v "$out:/app/models:ro" \
  -e LSTM_HOST=127.0.0.1 -e LSTM_PORT=$mounted_port lstm-service:cpu >/dev/null
trap 'docker rm -f lstm-docker-test-mounted >/dev/null 2>&1 || true; kill ${wheels_pid:-} 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$mounted_port/health/ready" >/dev/null && break
  sleep 1
done
hidden=$(curl -sf "http://127.0.0.1:$mounted_port/model" | "$py" -c 'import json, sys; print(json.load(sys.stdin)["hidden_size"])')
[ "$hidden" = "8" ] || fail "the mounted model (hidden size 8) is not the one served: hidden size $hidden"
echo "serves the mounted model (hidden size $hidden)"
docker rm -f lstm-docker-test-mounted >/dev/null
rm -rf "$out"

log "image sizes"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^lstm-service:'

down
trap - EXIT
printf '\ndocker-test passed\n'
