"""Accounts and memberships: creation, slugs and the role checks every admin view uses."""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import Account
from app.models import Membership
from app.models import Role
from app.models import User
from app.services import audit
from app.services.errors import NotFound
from app.services.errors import ValidationError

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Slugs become /login/<slug>; keep words that read like product paths out of the namespace.
RESERVED_SLUGS = frozenset(
    {
        "admin",
        "api",
        "account",
        "accounts",
        "login",
        "logout",
        "static",
        "sso",
        "scim",
        "saml",
        "healthz",
        "readyz",
        "metrics",
        "whoami",
        "keyward",
        "new",
        "settings",
        "help",
    }
)


def slugify(name: str) -> str:
    """A lower-case ASCII slug from an account name ("Acme Corp." -> "acme-corp")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:63].strip("-")


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise ValidationError(
            f"Role must be one of owner, admin, member (not {value!r}).", "role"
        ) from None


def create_account(name: str, slug: str | None = None, *, actor: User | None = None) -> Account:
    """Create an account. A missing slug is derived from the name (with a numeric suffix if
    taken); a given slug must be valid and free. Raises ValidationError."""
    name = (name or "").strip()
    if not name:
        raise ValidationError("Account name must not be empty.", "name")
    if len(name) > 200:
        raise ValidationError("Account name must be at most 200 characters.", "name")
    if slug is None or slug == "":
        base = slugify(name) or "account"
        if base in RESERVED_SLUGS:
            base = f"{base}-account"
        slug = base
        suffix = 2
        while _slug_taken(slug):
            slug = f"{base[:58]}-{suffix}"
            suffix += 1
    else:
        slug = slug.strip().lower()
        if not SLUG_PATTERN.match(slug):
            raise ValidationError(
                "Slug must be 1-63 lower-case letters, digits or hyphens, "
                "starting and ending with a letter or digit.",
                "slug",
            )
        if slug in RESERVED_SLUGS:
            raise ValidationError(f"Slug {slug!r} is reserved.", "slug")
        if _slug_taken(slug):
            raise ValidationError(f"Slug {slug!r} is already in use.", "slug")
    account = Account(name=name, slug=slug)
    db.session.add(account)
    db.session.flush()
    audit.record(
        "account.created",
        actor=actor,
        account_id=account.id,
        target_type="account",
        target_id=account.id,
        details={"slug": slug},
    )
    return account


def _slug_taken(slug: str) -> bool:
    return db.session.scalar(select(func.count()).where(Account.slug == slug)) > 0


def get_account(account_id: int) -> Account:
    account = db.session.get(Account, account_id)
    if account is None:
        raise NotFound(f"No account with id {account_id}.")
    return account


def add_member(
    account: Account, user: User, role: Role, *, actor: User | None = None
) -> Membership:
    """Give ``user`` a ``role`` in ``account`` (changing the role if already a member)."""
    membership = db.session.scalar(
        select(Membership).where(Membership.account_id == account.id, Membership.user_id == user.id)
    )
    if membership is None:
        membership = Membership(account=account, user=user, role=role.value)
        db.session.add(membership)
        action = "membership.created"
    else:
        membership.role = role.value
        action = "membership.role_changed"
    db.session.flush()
    audit.record(
        action,
        actor=actor,
        account_id=account.id,
        target_type="user",
        target_id=user.id,
        details={"role": role.value},
    )
    return membership


def role_in(user: User, account_id: int) -> Role | None:
    """The user's role in the account, or None when not a member or when the membership is
    inactive (the account's SCIM deactivated it: it grants nothing until reactivated)."""
    role = db.session.scalar(
        select(Membership.role).where(
            Membership.account_id == account_id,
            Membership.user_id == user.id,
            Membership.active.is_(True),
        )
    )
    return Role(role) if role else None


def has_role(user: User, account_id: int, minimum: Role) -> bool:
    """True when the user holds ``minimum`` or a stronger role in the account."""
    role = role_in(user, account_id)
    return role is not None and role.rank >= minimum.rank


def memberships_of(user: User) -> list[Membership]:
    """The user's active memberships (an inactive one grants no access), by account name."""
    return list(
        db.session.scalars(
            select(Membership)
            .join(Account)
            .where(Membership.user_id == user.id, Membership.active.is_(True))
            .order_by(Account.name)
        )
    )


def members_of(account: Account) -> list[Membership]:
    return list(
        db.session.scalars(
            select(Membership)
            .join(User)
            .where(Membership.account_id == account.id)
            .order_by(User.email)
        )
    )


def serialise(account: Account) -> dict:
    return {"id": account.id, "name": account.name, "slug": account.slug}
