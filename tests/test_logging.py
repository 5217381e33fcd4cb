"""LOG_FORMAT=json: one JSON object per line on stderr, tagged with the request id."""

from __future__ import annotations

import json


def test_json_log_lines_carry_the_request_id(make_app, capsys):
    app = make_app(LOG_FORMAT="json")
    client = app.test_client()
    client.get("/login")
    # A refused form logs a warning; the password must never appear in the log.
    response = client.post("/login", data={"email": "a@example.com", "password": "hunter2-secret"})
    assert response.status_code == 400
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    csrf = [r for r in records if "CSRF check failed" in r["message"]]
    assert len(csrf) == 1
    assert csrf[0]["level"] == "WARNING"
    assert csrf[0]["request_id"] == response.headers["X-Request-ID"]
    assert all("hunter2-secret" not in line for line in lines)
