"""API keys, no internals in error answers, CORS off unless configured."""

import hmac

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings

from .conftest import app_client

ROW = [0.0, 10.0, 5.0, 3.0]
KEYS = ["k-one-0123456789", "k-two-9876543210"]


@pytest.fixture(scope="module")
def keyed(settings: Settings):
    with app_client(settings, api_keys=KEYS) as c:
        yield c


@pytest.mark.parametrize("fast_path", [True, False])
def test_every_route_but_health_and_metrics_needs_a_key(settings: Settings, fast_path: bool) -> None:
    with app_client(settings, api_keys=KEYS, fast_path=fast_path) as c:
        for method, path in [("POST", "/predict"), ("GET", "/model"), ("GET", "/docs"), ("GET", "/openapi.json")]:
            r = c.request(method, path, json={"inputs": [[ROW]]})
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
        for path in ["/health/live", "/health/ready", "/metrics"]:
            assert c.get(path).status_code == 200, path
        for key in KEYS:
            r = c.post("/predict", json={"inputs": [[ROW]]}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200


def test_failures_look_alike(keyed: TestClient) -> None:
    """Missing, wrong, almost-right and wrong-scheme keys get the same answer: no hint of what exists."""
    answers = [
        keyed.get("/model", headers=h)
        for h in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": f"Bearer {KEYS[0][:-1]}"},
            {"Authorization": f"Basic {KEYS[0]}"},
            {"Authorization": KEYS[0]},
        )
    ]
    assert {(a.status_code, a.content, a.headers["www-authenticate"]) for a in answers} == {
        (401, b'{"detail":"Not authenticated"}', "Bearer")
    }


def test_keys_are_compared_in_constant_time_against_all(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert keyed.get("/model", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
    assert len(calls) == len(KEYS)  # no early exit on the first match


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_API_KEYS", " a1 , b2,, ")
    s = Settings()
    assert s.api_keys == ["a1", "b2"]
    assert "a1" not in repr(s)


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_internal_error_reveals_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    with app_client(settings, raise_server_exceptions=False, fast_path=fast_path) as c:
        engine = c.app.state.registry.default_plane.engine  # type: ignore[attr-defined]

        def broken(batch: object) -> None:
            raise RuntimeError(f"secret detail at {__file__}")

        monkeypatch.setattr(engine, "predict", broken)
        r = c.post("/predict", json={"inputs": [[ROW]]})
        assert r.status_code == 500
        assert "secret" not in r.text and ".py" not in r.text and "Traceback" not in r.text
        assert c.get("/health/live").status_code == 200


def test_cors_is_off_unless_configured(settings: Settings) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with app_client(settings) as c:
        r = c.options("/predict", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/model", headers={"Origin": "https://app.example"}).headers
    with app_client(settings, cors_origins=["https://app.example"]) as c:
        r = c.options("/predict", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post("/predict", json={"inputs": [[ROW]]}, headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
