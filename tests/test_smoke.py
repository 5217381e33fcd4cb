"""The app starts on the migrated database and answers its liveness probe."""


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_login_roundtrip_sets_a_session(auth, make_user, client):
    user = make_user()
    response = auth.login(user.email)
    assert response.status_code == 303
    assert client.get("/whoami").json["email"] == user.email
