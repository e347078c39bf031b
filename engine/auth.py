"""Users, API tokens, sign-in with a brute-force guard, and the audit trail of who did what.

Passwords are kept as argon2id hashes (verification takes tens of milliseconds on purpose: call
`check_password` and `add_user` off the event loop, they do that themselves). API tokens are 256
random bits: a SHA-256 of them is enough to store, and lets every request be checked in microseconds.
Neither a password nor a token is ever logged, stored or shown after it was created.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine import db
from models.errors import StepdeckError
from models.tables import ApiToken, AuditEntry, SharedSecret, SignInFailure, User

ROLES = ("viewer", "operator")
TOKEN_PREFIX = "sdk_"
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so that the answer takes as long."""
    return _hasher.hash(secrets.token_hex(16))


# Brute-force guard: after this many failures for a name or from an address, wait, doubling.
FAILURES_BEFORE_LOCK = 5
FIRST_LOCK_S = 30.0
MAX_LOCK_S = 900.0
FAILURE_MEMORY_S = 900.0
TOKEN_TOUCH_INTERVAL_S = 60.0  # last_used_at and the "token used" audit entry, at most this often


class AuthError(StepdeckError, ValueError):
    """Bad input to a user or token command; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: a signed-in user, a token's user, or the local user when sign-in is off."""

    name: str
    role: str
    via: str  # session | token | local
    token: str | None = None  # the token's name, for the audit trail
    epoch: str | None = None  # changes with the password or a re-created account: older sessions end

    @property
    def can_act(self) -> bool:
        return self.role == "operator"

    @property
    def actor(self) -> str:
        """How actions are recorded in a run's events."""
        return f"{self.name} (token {self.token})" if self.token else self.name


LOCAL = Principal("local", "operator", "local")


def utcnow() -> datetime:
    """The database's clock (`engine.db.now`), for the rows of accounts, tokens and the audit."""
    return db.now()


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise AuthError(
            f"invalid user name {name!r}: letters, digits and _ . @ -, at most 64, starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AuthError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    return role


# --- users ------------------------------------------------------------------------------------------


async def add_user(name: str, password: str, role: str = "operator") -> User:
    check_name(name), check_password(password), check_role(role)
    if await User.filter(name=name).exists():
        raise AuthError(f"user {name!r} already exists")
    digest = await asyncio.to_thread(_hasher.hash, password)
    now = utcnow()
    user = await User.create(name=name, password_hash=digest, role=role, created_at=now, updated_at=now)
    await audit("user_added", "admin", f"{name} ({role})")
    return user


async def get_user(name: str) -> User:
    user = await User.filter(name=name).first()
    if user is None:
        raise AuthError(f"no user {name!r}")
    return user


async def set_password(name: str, password: str) -> None:
    user = await get_user(name)
    check_password(password)
    user.password_hash = await asyncio.to_thread(_hasher.hash, password)
    user.updated_at = utcnow()
    await user.save(update_fields=["password_hash", "updated_at"])
    await audit("password_changed", "admin", name)


async def set_disabled(name: str, disabled: bool) -> None:
    user = await get_user(name)
    user.disabled, user.updated_at = disabled, utcnow()
    await user.save(update_fields=["disabled", "updated_at"])
    await audit("user_disabled" if disabled else "user_enabled", "admin", name)


async def set_role(name: str, role: str) -> None:
    user = await get_user(name)
    user.role, user.updated_at = check_role(role), utcnow()
    await user.save(update_fields=["role", "updated_at"])
    await audit("role_changed", "admin", f"{name} ({role})")


async def remove_user(name: str) -> None:
    user = await get_user(name)
    await user.delete()
    await audit("user_removed", "admin", name)


async def list_users() -> list[User]:
    return await User.all().order_by("name")


async def sign_in_enabled() -> bool:
    """Sign-in is required as soon as one account exists (disabled ones count: they were meant to)."""
    return await User.all().exists()


# --- sign-in -------------------------------------------------------------------------------------


class Guard:
    """Failed sign-ins per user name and per address, counted in the database (so every dashboard process
    of one database counts the same failures); locks out with a growing wait."""

    def __init__(self) -> None:
        self.reported: dict[str, float] = {}  # key -> end of the lock last written to the audit trail (here)

    async def wait_s(self, *keys: str, before: dict[str, int] | None = None) -> float:
        """Seconds until these keys may try again (0 when they may now), counting the failures recorded
        before the rows `before` (an attempt's own, from `failed`)."""
        now = utcnow()
        since = now - timedelta(seconds=FAILURE_MEMORY_S)
        await SignInFailure.filter(key__in=keys, at__lt=since).delete()  # the table stays bounded by recent ones
        wait = 0.0
        for key in keys:
            query = SignInFailure.filter(key=key)
            if before is not None and key in before:
                query = query.filter(id__lt=before[key])
            recent = [row.at for row in await query.order_by("at").only("id", "at")]
            if len(recent) >= FAILURES_BEFORE_LOCK:
                lock = min(FIRST_LOCK_S * 2 ** (len(recent) - FAILURES_BEFORE_LOCK), MAX_LOCK_S)
                wait = max(wait, (_aware(recent[-1]) - now).total_seconds() + lock)
        return max(wait, 0.0)

    async def failed(self, *keys: str) -> dict[str, int]:
        """Count a failure now; returns its rows by key (to take it back if the attempt turns out right)."""
        now = utcnow()
        return {key: (await SignInFailure.create(key=key, at=now)).id for key in keys}

    async def take_back(self, rows: dict[str, int], *keys: str) -> None:
        await SignInFailure.filter(id__in=[rows[key] for key in keys if key in rows]).delete()

    async def succeeded(self, *keys: str) -> None:
        await SignInFailure.filter(key__in=keys).delete()

    def first_report(self, key: str, wait_s: float) -> bool:
        """Whether a lock is new to the audit trail (one entry per lock and process, not one per refused
        request)."""
        now = time.monotonic()
        if self.reported.get(key, 0.0) > now:
            return False
        self.reported[key] = now + wait_s
        return True


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


guard = Guard()


class LockedOut(StepdeckError):
    def __init__(self, wait_s: float) -> None:
        super().__init__(f"too many failed sign-ins: try again in {wait_s:.0f} s")
        self.wait_s = wait_s


async def sign_in(name: str, password: str, address: str) -> Principal | None:
    """The user if the password is right; None if not; LockedOut while the guard holds."""
    keys = (f"name:{name.lower()}", f"address:{address}")
    user = await User.filter(name=name).first() if _NAME_RE.match(name) else None
    # A name that is no account may be a password typed in the wrong field: it is never recorded.
    who = user.name if user is not None else "unknown name"
    # Counted before the guard looks and before the (slow) check, so that of many attempts sent at once (to
    # any dashboard process) only those with fewer earlier failures than the limit get through.
    attempt = await guard.failed(*keys)
    wait = await guard.wait_s(*keys, before=attempt)
    if wait > 0:
        await guard.take_back(attempt, *keys)  # a refused try is no failure: the lock does not grow with them
        if guard.first_report(keys[1], wait):
            await audit("sign_in_locked", who, f"locked for {wait:.0f} s", address)
        raise LockedOut(wait)
    digest = user.password_hash if user else await asyncio.to_thread(_dummy_hash)
    ok = await asyncio.to_thread(_verify, digest, password[:MAX_PASSWORD_CHARS])
    if not ok or user is None or user.disabled:
        reason = "disabled account" if user is not None and user.disabled and ok else "wrong name or password"
        await audit("sign_in_failed", who, reason, address)
        return None
    # Only the name is forgiven: an address that guessed wrong stays counted, so signing in to one
    # account of one's own does not reset a run of guesses at others.
    await guard.take_back(attempt, keys[1])
    await guard.succeeded(keys[0])
    await audit("sign_in", user.name, None, address)
    return Principal(user.name, user.role, "session", epoch=_epoch(user))


def _verify(digest: str, password: str) -> bool:
    try:
        return _hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False


async def principal_of(name: str, via: str = "session") -> Principal | None:
    """The current role of a signed-in user, or None when the account is gone or disabled."""
    user = await User.filter(name=name).first()
    if user is None or user.disabled:
        return None
    return Principal(user.name, user.role, via, epoch=_epoch(user))


def _epoch(user: User) -> str:
    """Tells sessions of this account and password from earlier ones (a digest: it reveals neither)."""
    return hashlib.sha256(f"{user.id}:{user.password_hash}".encode()).hexdigest()[:16]


# --- tokens --------------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def add_token(user_name: str, name: str) -> tuple[str, ApiToken]:
    """A new token for the user: the token itself is returned once and never again."""
    user = await get_user(user_name)
    if not name.strip() or len(name) > 100:
        raise AuthError("a token needs a name of 1 to 100 characters (what it is for, e.g. 'ci')")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = await ApiToken.create(
        user=user, name=name.strip(), prefix=token[:12], token_hash=_digest(token), created_at=utcnow()
    )
    await audit("token_added", "admin", f"{user.name}: {row.name} ({row.prefix}…)")
    return token, row


async def list_tokens(user_name: str | None = None) -> list[ApiToken]:
    query = ApiToken.all().prefetch_related("user").order_by("id")
    if user_name is not None:
        query = query.filter(user__name=user_name)
    return await query


async def revoke_token(token_id: int) -> ApiToken:
    row = await ApiToken.filter(id=token_id).prefetch_related("user").first()
    if row is None:
        raise AuthError(f"no token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await row.save(update_fields=["revoked_at"])
        await audit("token_revoked", "admin", f"{row.user.name}: {row.name} ({row.prefix}…)")
    return row


async def token_principal(token: str, touched: dict[int, float], address: str | None = None) -> Principal | None:
    """The user a bearer token acts for, or None if it is unknown, revoked, or its user disabled. Its use is
    recorded at most every TOKEN_TOUCH_INTERVAL_S: `touched` (the caller's, by token id) holds when it last was."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = await ApiToken.filter(token_hash=_digest(token), revoked_at__isnull=True).prefetch_related("user").first()
    if row is None or row.user.disabled:
        return None
    now = time.monotonic()
    if now - touched.get(row.id, -TOKEN_TOUCH_INTERVAL_S) >= TOKEN_TOUCH_INTERVAL_S:
        touched[row.id] = now
        await ApiToken.filter(id=row.id).update(last_used_at=utcnow())
        await audit("token_used", row.user.name, f"{row.name} ({row.prefix}…)", address)
    return Principal(row.user.name, row.user.role, "token", row.name)


# --- audit ---------------------------------------------------------------------------------------


async def audit(action: str, actor: str, detail: str | None = None, address: str | None = None) -> None:
    await AuditEntry.create(at=utcnow(), actor=actor[:200], action=action, detail=detail, address=address)


async def audit_entries(limit: int = 200) -> list[AuditEntry]:
    return await AuditEntry.all().order_by("-id").limit(limit)


# --- secrets every process shares --------------------------------------------------------------------------


async def shared_secret(name: str) -> str:
    """The secret `name` kept in the database, made by the first process that asks (the same for all)."""
    made = SharedSecret(name=name, value=secrets.token_urlsafe(48), created_at=utcnow())
    await SharedSecret.bulk_create([made], ignore_conflicts=True)  # a process asking at once: one wins
    return (await SharedSecret.get(name=name)).value
