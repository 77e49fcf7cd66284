"""Several replicas of the service behind a real load balancer (HAProxy), sharing one Valkey for
server-held sequences, all on 127.0.0.1: the fleet of deploy/kubernetes on one machine, for
``make scale-test`` and to try by hand.

    python -m deploy.fleet --replicas 3 --port 8080     # until Ctrl-C; needs haproxy and redis-server

Each replica is ``python -m service`` on a port of its own. HAProxy balances requests over the replicas
that answer ``/health/ready`` (checked every 500 ms: a replica that died, or drains on SIGTERM, is out
within a second), retries a request on another replica only where it could not connect (nothing was sent,
so nothing ran twice), and passes WebSocket connections through. Everything else a retry needs is the
client's: returned states make a chunk safe to send again, and so do numbered chunks of a server-held
sequence (docs/protocols.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.run import PY, ROOT, free_port, server, valkey_server

HEALTH_CHECK_MS = 500  # how often HAProxy asks each replica /health/ready; two misses take it out


def haproxy_config(port: int, replicas: list[str]) -> str:
    servers = "\n".join(f"    server r{i} {url.removeprefix('http://')}" for i, url in enumerate(replicas))
    return f"""global
    maxconn 4096
    noreuseport  # a port already taken fails the start, rather than being shared with another fleet

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 300s
    # a request that could not reach a replica goes to another (option redispatch); nothing sent is retried
    retries 2
    retry-on conn-failure
    option redispatch 1

frontend lstm
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /health/ready
    http-check expect status 200
    default-server check inter {HEALTH_CHECK_MS}ms fall 2 rise 2
{servers}
"""


@dataclass
class Replica:
    url: str
    pid: int  # the leader of the replica's process group

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the replica and every process of it (its group: it was started in a session of its own)."""
        assert os.getpgid(self.pid) == self.pid, "the replica does not lead its process group"
        os.killpg(self.pid, sig)


@dataclass
class Fleet:
    url: str  # the load balancer
    replicas: list[Replica]
    store: str  # the Valkey every replica shares


@contextlib.contextmanager
def fleet(
    replicas: int, port: int | None = None, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[Fleet]:
    """Valkey, ``replicas`` replicas of the service (``workers`` workers each) and HAProxy on ``port``."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise RuntimeError("the fleet needs haproxy (Debian: apt-get install haproxy)")
    with tempfile.TemporaryDirectory(prefix="lstm-fleet-") as folder, contextlib.ExitStack() as stack:
        found = valkey_server(Path(folder))
        if found is None:
            raise RuntimeError("the fleet needs valkey-server or redis-server (Debian: apt-get install redis-server)")
        store, valkey = found
        stack.callback(valkey.wait, 10)
        stack.callback(valkey.terminate)
        settings = {"LSTM_WORKERS": str(workers), "LSTM_STATE_URL": store, **(env or {})}
        started = [stack.enter_context(server([PY, "-m", "service"], settings)) for _ in range(replicas)]
        port = port or free_port()
        config = Path(folder) / "haproxy.cfg"
        config.write_text(haproxy_config(port, [url for url, _ in started]))
        log = stack.enter_context(open(Path(folder) / "haproxy.log", "wb"))
        balancer = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        stack.callback(balancer.wait, 10)
        stack.callback(balancer.terminate)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.TransportError):  # ready, and through this HAProxy, not another
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200 and balancer.poll() is None:
                    break
            if balancer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {(Path(folder) / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(2 * HEALTH_CHECK_MS / 1000)  # every replica seen up by HAProxy
        yield Fleet(url, [Replica(u, pid) for u, pid in started], store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="workers per replica")
    parser.add_argument("--port", type=int, default=8080, help="the load balancer's port on 127.0.0.1")
    args = parser.parse_args()

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM or SIGHUP as Ctrl-C: everything started is stopped on the way out

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    with fleet(args.replicas, args.port, args.workers) as f:
        print(f"{f.url}: {len(f.replicas)} replicas ({', '.join(r.url for r in f.replicas)}), store {f.store}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
