"""Built-in Google and Microsoft providers are created from the environment at start-up."""

from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.models import SsoProvider
from app.services import providers


def test_configured_builtins_exist_and_show_on_every_login_page(make_app, make_account):
    app = make_app(
        GOOGLE_CLIENT_ID="g-id",
        GOOGLE_CLIENT_SECRET="g-secret",
        MICROSOFT_CLIENT_ID="m-id",
        MICROSOFT_TENANT="organizations",
    )
    with app.app_context():
        rows = {p.builtin: p for p in db.session.scalars(select(SsoProvider))}
        assert set(rows) == {"google", "microsoft"}
        assert rows["google"].authority == "https://accounts.google.com"
        assert rows["google"].account_id is None
        assert "g-secret" not in rows["google"].client_secret_encrypted
        assert providers.client_secret(rows["google"]) == "g-secret"
        assert rows["microsoft"].authority == (
            "https://login.microsoftonline.com/organizations/v2.0"
        )
        assert rows["microsoft"].external_id_claim == "oid"
    account = make_account()
    client = app.test_client()
    for page in ("/login", f"/login?account={account.id}", f"/login/{account.slug}"):
        text = client.get(page).text
        assert "Sign in with Google" in text and "Sign in with Microsoft" in text


def test_restart_keeps_one_row_and_picks_up_a_new_client_id(make_app):
    make_app(GOOGLE_CLIENT_ID="g-id")
    make_app(GOOGLE_CLIENT_ID="g-id")
    app = make_app(GOOGLE_CLIENT_ID="g-id-2")
    with app.app_context():
        rows = db.session.scalars(select(SsoProvider)).all()
        assert [(r.builtin, r.client_id, r.version) for r in rows] == [("google", "g-id-2", 2)]


def test_unconfigured_builtins_are_not_shown(client):
    text = client.get("/login").text
    assert "Sign in with Google" not in text and "Sign in with Microsoft" not in text
