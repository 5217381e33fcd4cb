"""The request sequences Entra ID and Okta document, replayed as they send them."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.extensions import db
from app.models import Membership
from app.models import User
from tests.helpers import audit_actions
from tests.scim.conftest import load_fixture
from tests.scim.replay import replay


def test_entra_id_sequence(app, scim, account):
    variables = replay(scim, load_fixture("entra_id.json")["steps"])

    actions = audit_actions(app)
    for action in (
        "scim.user.created",
        "scim.user.updated",
        "scim.user.deactivated",
        "scim.user.deleted",
        "scim.group.created",
        "scim.group.updated",
        "scim.group.deleted",
    ):
        assert action in actions
    with app.app_context():
        user = db.session.get(User, uuid.UUID(variables["user_id"]))
        # Deprovisioned: the row stays for the audit trail, inactive and in no account.
        assert user is not None and user.active is False
        assert (
            db.session.scalars(select(Membership).where(Membership.user_id == user.id)).all() == []
        )
        assert user.external_id == "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
        # The primary work email became the user's email (lower-cased, as every email).
        assert user.email == "updatedemail@microsoft.com"


def test_okta_sequence(app, scim, account):
    variables = replay(scim, load_fixture("okta.json")["steps"])

    with app.app_context():
        user = db.session.get(User, uuid.UUID(variables["user_id"]))
        assert user.active is True
        # okta.local is a special-use domain (RFC 6762), never a deliverable address: the
        # user keeps an address of their own that can never be anyone's (RFC 2606 .invalid).
        assert user.email.endswith("@scim.invalid")
        # Okta's 8-character random password is below the policy: kept out, not refused.
        assert user.password_hash is None
        assert user.managed_by_account_id == account.id
    assert "scim.user.reactivated" in audit_actions(app)
