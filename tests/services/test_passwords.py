"""argon2id hashing and the password strength rules."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from app.services import passwords
from app.services.errors import ValidationError


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def test_hash_and_verify(ctx):
    stored = passwords.hash_password("a long enough passphrase")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "a long enough passphrase")
    assert not passwords.verify_password(stored, "a long enough passphrasE")
    assert not passwords.verify_password("not-a-hash", "anything")
    assert not passwords.verify_password(None, "anything")


def test_hashes_with_other_parameters_need_a_rehash(ctx):
    old = PasswordHasher(time_cost=1, memory_cost=32, parallelism=1).hash("x" * 12)
    assert passwords.needs_rehash(old)
    assert not passwords.needs_rehash(passwords.hash_password("x" * 12))


def test_production_defaults_are_owasp_argon2id(tmp_path):
    from config import load_config

    settings = load_config({}, tmp_path)
    assert (
        settings.ARGON2_MEMORY_COST,
        settings.ARGON2_TIME_COST,
        settings.ARGON2_PARALLELISM,
    ) == (
        19 * 1024,
        2,
        1,
    )


@pytest.mark.parametrize(
    "candidate,message",
    [
        ("short pass", "at least 12"),
        ("x" * 257, "at most 256"),
        ("Password1234", "too common"),
        ("123456789012", "too common"),
        ("abababababababab", "too common"),
        ("grace.hopper-rocks", "email"),
    ],
)
def test_weak_passwords_are_refused(ctx, candidate, message):
    with pytest.raises(ValidationError) as error:
        passwords.check_password_strength(candidate, email="grace.hopper@example.com")
    assert message in error.value.message
    assert error.value.field == "password"


def test_a_reasonable_passphrase_passes(ctx):
    passwords.check_password_strength("violet tractor umbrella", email="grace@example.com")


def test_sign_in_upgrades_an_old_hash(app, auth, make_user):
    from app.extensions import db
    from app.services import users

    user = make_user()
    with app.app_context():
        row = users.get_user(user.id)
        row.password_hash = PasswordHasher(time_cost=1, memory_cost=32, parallelism=1).hash(
            user.password
        )
        db.session.commit()
    assert auth.login(user.email).status_code == 303
    with app.app_context():
        assert not passwords.needs_rehash(users.get_user(user.id).password_hash)
