"""services.role_mapping: which role a provider's claim gives, and applying it at sign-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Membership
from app.models import Role
from app.services import accounts
from app.services import providers
from app.services import users
from app.services.audit import RequestMeta
from app.services.providers import ProviderFields
from app.services.role_mapping import apply_role_mapping
from app.services.role_mapping import mapped_role
from tests.conftest import base_config

AUTHORITY = "http://127.0.0.1:9"
MAPPINGS = (("Staff", "member"), ("Keyward-Admins", "admin"), ("Founders", "owner"))


@pytest.fixture
def config(database_url):
    return base_config(database_url, OUTBOUND_ALLOW_PRIVATE="127.0.0.1:9")


@pytest.fixture
def ctx(app) -> Iterator[None]:
    with app.app_context():
        yield


@pytest.fixture
def account(ctx):
    account = accounts.create_account("Acme", "acme")
    db.session.flush()
    return account


def make_provider(account, **changes):
    values = {
        "display_name": "Acme SSO",
        "scheme": "AcmeSSO",
        "authority": AUTHORITY,
        "client_id": "keyward",
        "role_claim": "groups",
        "role_mappings": MAPPINGS,
        **changes,
    }
    provider = providers.create_provider(ProviderFields(**values), account=account)
    db.session.flush()
    return provider


# --- mapped_role ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "claims,expected",
    [
        ({"groups": "Keyward-Admins"}, Role.ADMIN),  # a single string
        ({"groups": ["Staff"]}, Role.MEMBER),  # a list of groups
        ({"groups": ["Staff", "Founders", "Keyward-Admins"]}, Role.OWNER),  # the highest wins
        ({"groups": ["Keyward-Admins", "Staff"]}, Role.ADMIN),
        ({"groups": ["keyward-admins"]}, None),  # exact: case matters
        ({"groups": ["Engineering"]}, None),
        ({"groups": []}, None),
        ({}, None),  # claim missing
        ({"groups": [["Founders"], 7, {"Founders": 1}]}, None),  # not strings: never guessed
        ({"roles": ["Founders"]}, None),  # another claim than the configured one
    ],
)
def test_mapped_role_without_default(account, claims, expected):
    provider = make_provider(account)
    assert mapped_role(provider, claims) == expected


@pytest.mark.parametrize(
    "claims,expected",
    [
        ({"groups": ["Engineering"]}, Role.MEMBER),
        ({}, Role.MEMBER),
        ({"groups": "Founders"}, Role.OWNER),
    ],
)
def test_mapped_role_falls_back_to_the_default(account, claims, expected):
    provider = make_provider(account, role_mapping_default="member")
    assert mapped_role(provider, claims) == expected


def test_no_role_claim_means_no_mapping(account):
    provider = make_provider(account, role_claim=None, role_mappings=())
    assert mapped_role(provider, {"groups": ["Founders"]}) is None


def test_other_claim_names_work_too(account):
    provider = make_provider(account, role_claim="roles", role_mappings=(("Admin", "admin"),))
    assert mapped_role(provider, {"roles": ["Admin"], "groups": ["Founders"]}) == Role.ADMIN


# --- apply_role_mapping ---------------------------------------------------------------------------
def _role(account, user) -> str | None:
    return db.session.scalar(
        select(Membership.role).where(
            Membership.account_id == account.id, Membership.user_id == user.id
        )
    )


def _events() -> list[AuditEvent]:
    return list(
        db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "membership.role.changed")
            .order_by(AuditEvent.id)
        )
    )


def test_apply_changes_the_role_and_audits_before_and_after(account):
    provider = make_provider(account)
    user = users.create_user("alice@example.com", None)
    accounts.add_member(account, user, Role.MEMBER)
    meta = RequestMeta(ip_address="203.0.113.9", request_id="req-1")

    assert apply_role_mapping(user, provider, {"groups": ["Keyward-Admins"]}, meta=meta) == (
        Role.ADMIN
    )
    db.session.flush()
    assert _role(account, user) == "admin"
    (event,) = _events()
    assert event.account_id == account.id
    assert (event.target_type, event.target_id) == ("user", str(user.id))
    assert event.details == {
        "before": "member",
        "after": "admin",
        "provider_id": str(provider.id),
        "scheme": "AcmeSSO",
        "claim": "groups",
    }
    assert (event.ip_address, event.request_id) == ("203.0.113.9", "req-1")


def test_apply_can_demote(account):
    provider = make_provider(account, role_mapping_default="member")
    user = users.create_user("bob@example.com", None)
    accounts.add_member(account, user, Role.ADMIN)
    assert apply_role_mapping(user, provider, {"groups": ["Engineering"]}) == Role.MEMBER
    assert _role(account, user) == "member"
    assert [e.details["before"] for e in _events()] == ["admin"]


def test_apply_creates_the_membership_when_missing(account):
    provider = make_provider(account)
    user = users.create_user("carol@example.com", None)
    assert apply_role_mapping(user, provider, {"groups": "Founders"}) == Role.OWNER
    db.session.flush()
    assert _role(account, user) == "owner"
    assert _events()[0].details["before"] is None


def test_apply_does_nothing_for_the_same_role(account):
    provider = make_provider(account)
    user = users.create_user("dave@example.com", None)
    accounts.add_member(account, user, Role.ADMIN)
    assert apply_role_mapping(user, provider, {"groups": ["Keyward-Admins"]}) is None
    assert _role(account, user) == "admin"
    assert _events() == []


def test_apply_leaves_the_role_when_the_mapping_says_nothing(account):
    provider = make_provider(account)  # no default
    user = users.create_user("erin@example.com", None)
    accounts.add_member(account, user, Role.OWNER)
    assert apply_role_mapping(user, provider, {"groups": ["Engineering"]}) is None
    assert _role(account, user) == "owner"
    unmapped = make_provider(account, scheme="Plain", role_claim=None, role_mappings=())
    assert apply_role_mapping(user, unmapped, {"groups": ["Staff"]}) is None
    assert _role(account, user) == "owner"
    assert _events() == []


def test_apply_is_a_no_op_for_builtin_providers(account):
    google = providers.create_provider(
        providers.builtin_fields("google", client_id="g", client_secret=None, authority=AUTHORITY),
        account=None,
        builtin="google",
    )
    # Set directly: built-in providers are configured from the environment, not the form.
    google.role_claim = "groups"
    google.role_mapping_default = "owner"
    user = users.create_user("frank@example.com", None)
    assert apply_role_mapping(user, google, {"groups": ["Founders"]}) is None
    assert db.session.scalars(select(Membership).where(Membership.user_id == user.id)).all() == []
    assert _events() == []
