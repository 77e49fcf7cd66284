# The shared sequence store for `docker compose --profile shared-state`: Debian's redis-server (the
# protocol Valkey speaks too), built here because no image registry needs to be reachable. Elsewhere an
# official Valkey image serves as well: the service needs only the Redis protocol and Lua scripting.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --no-create-home store \
    && mkdir -p /data && chown 10002 /data
USER 10002
WORKDIR /data
EXPOSE 6379
# Append-only file: a restarted store still holds every sequence (a restart loses nothing).
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", "--appendonly", "yes", "--save", ""]
