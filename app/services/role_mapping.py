"""Role mapping: a provider's claim (groups, roles) decides the member's role at sign-in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from app.extensions import db
from app.models import Membership
from app.models import Role
from app.models import SsoProvider
from app.models import User
from app.services import audit


def _claim_values(value: Any) -> set[str]:
    """A claim as a set of strings: one string, or a list of them (groups). Anything else
    (numbers, objects, nested lists) matches nothing rather than being guessed at."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return {item for item in value if isinstance(item, str)}
    return set()


def mapped_role(provider: SsoProvider, claims: Mapping[str, Any]) -> Role | None:
    """The role the provider's mapping gives for these claims, or None for "leave it".

    None when the provider has no role claim. Among the rows whose value equals (exactly,
    case-sensitively) one of the claim's values, the strongest role wins; when none match
    (or the claim is missing) the provider's ``role_mapping_default``, if any."""
    if not provider.role_claim:
        return None
    values = _claim_values(claims.get(provider.role_claim))
    matched = [Role(m.role) for m in provider.role_mappings if m.claim_value in values]
    if matched:
        return max(matched, key=lambda role: role.rank)
    if provider.role_mapping_default:
        return Role(provider.role_mapping_default)
    return None


def apply_role_mapping(
    user: User,
    provider: SsoProvider,
    claims: Mapping[str, Any],
    *,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> Role | None:
    """Give ``user`` the mapped role in the provider's account (at sign-in).

    Creates the membership when the user has none there. Records
    ``membership.role.changed`` (before, after, provider, claim) and returns the new role
    when the role changed; returns None when nothing changed, when the mapping says
    nothing, and for built-in providers (they belong to no account). Adds and flushes,
    never commits."""
    if provider.account_id is None:
        return None
    role = mapped_role(provider, claims)
    if role is None:
        return None
    membership = db.session.scalar(
        select(Membership).where(
            Membership.account_id == provider.account_id, Membership.user_id == user.id
        )
    )
    before = membership.role if membership is not None else None
    if before == role.value:
        return None
    if membership is None:
        db.session.add(Membership(account=provider.account, user=user, role=role.value))
    else:
        membership.role = role.value
    db.session.flush()
    audit.record(
        "membership.role.changed",
        # The IdP's claim decided, not a person: the event names the provider instead.
        actor_label=f"role mapping of {provider.scheme}",
        account_id=provider.account_id,
        target_type="user",
        target_id=user.id,
        details={
            "before": before,
            "after": role.value,
            "provider_id": str(provider.id),
            "scheme": provider.scheme,
            "claim": provider.role_claim,
        },
        meta=meta,
    )
    return role
