"""`flask keys rotate`: every stored secret re-encrypted under the newest key, all or nothing."""

from __future__ import annotations

import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from app.extensions import db
from app.models import Session
from app.models import SsoProvider
from app.services import accounts
from app.services import crypto
from app.services import providers
from app.services.providers import ProviderFields
from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json
from tests.conftest import base_config

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
LOST = Fernet.generate_key().decode()
SECRET = "client-s3cr3t"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


@pytest.fixture
def config(database_url):
    # The operator's first step: the new key first, the old one still there.
    return base_config(
        database_url, ENCRYPTION_KEYS=f"{NEW},{OLD}", OUTBOUND_ALLOW_PRIVATE="127.0.0.1:9"
    )


def _stored_under(key: str, plaintext: str) -> str:
    return Fernet(key.encode()).encrypt(plaintext.encode()).decode()


def _seed(app, key: str = OLD, sessions: int = 2) -> uuid.UUID:
    """A provider secret and some sessions' ID tokens, all encrypted under ``key``."""
    with app.app_context():
        account = accounts.create_account("Acme", "acme")
        provider = providers.create_provider(
            ProviderFields(
                display_name="Acme", scheme="Acme", authority="http://127.0.0.1:9", client_id="c"
            ),
            account=account,
        )
        provider.client_secret_encrypted = _stored_under(key, SECRET)
        for number in range(sessions):
            db.session.add(
                Session(
                    token_hash=f"{number:064d}",
                    provider_id=provider.id,
                    id_token_encrypted=_stored_under(key, f"{ID_TOKEN}{number}"),
                )
            )
        db.session.add(Session(token_hash="f" * 64))  # no ID token: nothing to rotate
        db.session.commit()
        return provider.id


def _ciphertexts(app) -> list[str | None]:
    with app.app_context():
        rows = [db.session.scalar(select(SsoProvider.client_secret_encrypted))]
        rows += db.session.scalars(
            select(Session.id_token_encrypted).order_by(Session.token_hash)
        ).all()
        return rows


def test_rotate_reencrypts_so_the_old_key_can_go(app, runner, make_app):
    provider_id = _seed(app)
    new_only = make_app(ENCRYPTION_KEYS=NEW)
    # Before the rotation, dropping the old key would lose the secret.
    with new_only.app_context(), pytest.raises(crypto.SecretUnreadable):
        providers.client_secret(db.session.get(SsoProvider, provider_id))
    before = _ciphertexts(app)

    assert run_json(runner, "keys", "rotate") == {"providers": 1, "sessions": 2}

    after = _ciphertexts(app)
    assert all(a != b for a, b in zip(after[:-1], before[:-1], strict=True))
    assert after[-1] is None
    with new_only.app_context():
        assert providers.client_secret(db.session.get(SsoProvider, provider_id)) == SECRET
        tokens = db.session.scalars(
            select(Session.id_token_encrypted)
            .where(Session.id_token_encrypted.is_not(None))
            .order_by(Session.token_hash)
        ).all()
        assert [crypto.decrypt(t) for t in tokens] == [f"{ID_TOKEN}0", f"{ID_TOKEN}1"]
    for ciphertext in after[:-1]:
        with pytest.raises(Exception):  # noqa: B017 - any failure: OLD cannot read it
            Fernet(OLD.encode()).decrypt(ciphertext.encode())


def test_rotate_pages_through_many_sessions(app, runner, monkeypatch):
    monkeypatch.setattr(crypto, "_ROTATE_BATCH", 3)
    _seed(app, sessions=7)
    assert run_json(runner, "keys", "rotate") == {"providers": 1, "sessions": 7}
    with app.app_context():
        tokens = db.session.scalars(
            select(Session.id_token_encrypted).where(Session.id_token_encrypted.is_not(None))
        ).all()
        for token in tokens:
            Fernet(NEW.encode()).decrypt(token.encode())  # raises unless under NEW


def test_rotate_text_output(app, runner):
    _seed(app)
    result = runner.invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "Re-encrypted 1 provider secret(s) and 2 session ID token(s) under the newest key."
    )


def test_an_unreadable_secret_stops_the_rotation_and_changes_nothing(app, runner):
    _seed(app)
    with app.app_context():
        # Rows sort by id, so the readable ones may come first: all of them must stay as
        # they were anyway.
        lost = db.session.scalar(select(Session).where(Session.token_hash == f"{1:064d}"))
        lost.id_token_encrypted = _stored_under(LOST, "gone")
        db.session.commit()
        lost_id = lost.id
    before = _ciphertexts(app)

    result = runner.invoke(args=["keys", "rotate", "--json"])

    assert_error(result, f"The ID token of session {lost_id} cannot be decrypted")
    assert result.exit_code == 1
    assert "Nothing was changed." in result.stderr
    assert _ciphertexts(app) == before


def test_an_unreadable_provider_secret_is_named(app, runner):
    provider_id = _seed(app, sessions=0)
    with app.app_context():
        db.session.get(SsoProvider, provider_id).client_secret_encrypted = _stored_under(
            LOST, SECRET
        )
        db.session.commit()
    assert_error(
        runner.invoke(args=["keys", "rotate"]),
        f"The client secret of provider {provider_id} cannot be decrypted",
    )


def test_rotate_with_nothing_stored(runner):
    assert run_json(runner, "keys", "rotate") == {"providers": 0, "sessions": 0}
