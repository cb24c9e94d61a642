"""Client tokens: created once, stored only as a hash, revocable.

A token is 256 random bits (``secrets.token_urlsafe(32)``) behind a short
prefix that makes a leaked one easy to recognise. Because it is high-entropy,
one sha256 is the right stored form: there is nothing to brute-force, so a
slow password hash would only cost every RPC time. The plain token is shown
to the operator once and never stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from seedfed.server.models import TokenRow
from seedfed.shared.wire import CLIENT_NAME

TOKEN_PREFIX = "sfk_"
TOKEN_BYTES = 32  # 256 bits
MAX_TOKEN_CHARS = 128  # anything longer in a header is not one of ours
# A client joins under its token's name, so that is a client name, within the tokens.name column.
MAX_TOKEN_NAME = TokenRow.__table__.c.name.type.length


class TokenError(ValueError):
    """A token operation that cannot be done (bad name, name in use, unknown name)."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def check_token_name(name: str) -> str:
    if not (CLIENT_NAME.check(name) and len(name) <= MAX_TOKEN_NAME):
        raise TokenError(f"token name {name!r} must be a client name ({CLIENT_NAME.rule}) of at most {MAX_TOKEN_NAME} characters")
    return name


@dataclass(frozen=True)
class TokenInfo:
    name: str
    fingerprint: str  # first 12 hex digits of the hash: names a token in logs without revealing it
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def fingerprint(digest: bytes) -> str:
    return digest.hex()[:12]


class TokenStore:
    """The ``tokens`` table. At most one active token per name (a partial
    unique index); a revoked name can be given a fresh token."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(self, name: str, now: float | None = None) -> str:
        """A new token for ``name``; returns the plain token (the only time it exists)."""
        check_token_name(name)
        token = new_token()
        try:
            with self._sessions.begin() as s:
                if s.scalar(select(TokenRow.id).where(TokenRow.name == name, TokenRow.revoked_at.is_(None))) is not None:
                    raise TokenError(f"an active token named {name!r} exists; revoke it first")
                s.add(TokenRow(name=name, token_hash=token_hash(token), created_at=time.time() if now is None else now))
        except IntegrityError:  # a concurrent create of the same name
            raise TokenError(f"an active token named {name!r} exists; revoke it first") from None
        return token

    def revoke(self, name: str, now: float | None = None) -> int:
        """Revoke the active token of ``name``; returns how many were revoked (0 or 1)."""
        with self._sessions.begin() as s:
            result = s.execute(
                update(TokenRow)
                .where(TokenRow.name == name, TokenRow.revoked_at.is_(None))
                .values(revoked_at=time.time() if now is None else now)
            )
            return result.rowcount or 0

    def list(self) -> list[TokenInfo]:
        with self._sessions() as s:
            rows = s.execute(select(TokenRow).order_by(TokenRow.name, TokenRow.created_at)).scalars().all()
            return [TokenInfo(r.name, fingerprint(r.token_hash), r.created_at, r.revoked_at) for r in rows]

    def active(self) -> dict[bytes, str]:
        """hash -> name of every token that is not revoked (the auth cache reloads this)."""
        with self._sessions() as s:
            return dict(
                (h, n)
                for h, n in s.execute(select(TokenRow.token_hash, TokenRow.name).where(TokenRow.revoked_at.is_(None))).all()
            )


def open_token_store(url: str) -> TokenStore:
    """The token table of the coordinator database at ``url``, migrated to the newest schema."""
    from seedfed.server.db import open_database

    engine, _ = open_database(url)
    return TokenStore(engine)
