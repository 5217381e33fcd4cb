"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_readyz_is_200_when_the_database_answers(client, app):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"]["database"] == {"ok": True}
    if app.config["REDIS_URL"]:
        assert response.json["checks"]["redis"] == {"ok": True}


def test_readyz_is_503_when_redis_is_down(make_app):
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"] == {"ok": False}
    assert "127.0.0.1" not in response.text


def test_readyz_is_503_when_the_database_is_down(make_app):
    app = make_app(DATABASE_URL=f"postgresql://127.0.0.1:{_free_port()}/nothing")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["checks"]["database"] == {"ok": False}
    assert "127.0.0.1" not in response.text  # no connection details leak
    # /healthz still answers: the process is alive.
    assert app.test_client().get("/healthz").status_code == 200


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_and_sign_ins_by_outcome(client, auth, make_user):
    user = make_user()
    before = client.get("/metrics").text
    auth.login(user.email, "wrong password here")
    auth.login(user.email)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    after = response.text
    for outcome in ("succeeded", "refused"):
        labels = {"method": "password", "outcome": outcome}
        assert _sample(after, "keyward_signins_total", **labels) == (
            _sample(before, "keyward_signins_total", **labels) + 1
        )
    posts = {"endpoint": "auth.login", "method": "POST", "status": "303"}
    assert _sample(after, "keyward_http_requests_total", **posts) >= 1
    assert (
        _sample(
            after,
            "keyward_http_request_duration_seconds_count",
            endpoint="auth.login",
            method="GET",
        )
        >= 2
    )
