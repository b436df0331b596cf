"""Each user's data key, as the use cases need it inside a transaction, and a secret sealed under
it into its credential's columns. Shared by every use case that seals or opens a secret.

Never returns or stores a data key unwrapped beyond the caller's use of it; a key is stored only
wrapped by the current KEK (keys.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.kit.clock import Clock
from services.kit.errors import DataLoss, Unavailable
from services.kit.tokens import sha256_hex
from services.vault import kinds
from services.vault.keys import (
    DATA_KEY,
    KeyRing,
    KeyUnavailable,
    Tampered,
    new_data_key,
    seal,
    secret_aad,
)
from services.vault.store import Tx


class DataKeys:
    def __init__(self, keyring: KeyRing, clock: Clock) -> None:
        self.keyring = keyring
        self.clock = clock

    async def get(self, tx: Tx, user_id: str, *, create: bool) -> tuple[bytes, int] | None:
        """The user's data key and its generation; made on first use when `create`."""
        row = await tx.user_key(user_id)
        if row is None and create:
            version, wrapped = self.keyring.wrap(user_id, new_data_key())
            await tx.add_user_key(
                {
                    "user_id": user_id,
                    "kek_version": version,
                    "wrapped_key": wrapped,
                    "generation": 1,
                    "create_time": self.clock.now(),
                }
            )
            row = await tx.user_key(user_id)  # ours, or a concurrent first use's
        if row is None:
            return None
        return self.unwrap(user_id, row["kek_version"], row["wrapped_key"]), row["generation"]

    def unwrap(self, user_id: str, version: str, wrapped: bytes, kind: str = DATA_KEY) -> bytes:
        """The data key (or another `kind` of wrapped key, of the subject `user_id`), or the
        vault's error: its KEK is not loaded, or it does not open."""
        try:
            return self.keyring.unwrap(user_id, version, wrapped, kind)
        except KeyUnavailable:
            raise Unavailable(
                "KEY_UNAVAILABLE",
                f"KEK version {version} is not loaded",
                metadata={"version": version},
            ) from None
        except Tampered:
            raise DataLoss("DATA_KEY_UNREADABLE", "a data key does not authenticate") from None


def sealed_columns(
    key: bytes, generation: int, user_id: str, credential_id: str, kind: str, secret: dict
) -> dict[str, Any]:
    """The columns of a credential that hold (or describe, without revealing) its secret."""
    plaintext = kinds.encode(secret)
    expires_at = secret.get("expires_at")
    aad = secret_aad(user_id, credential_id, kind, kinds.SECRET_FORMAT)
    return {
        "secret": seal(key, plaintext, aad),
        "key_generation": generation,
        "format_version": kinds.SECRET_FORMAT,
        "hint": kinds.hint(kind, secret),
        "scopes": list(secret.get("scopes", [])),
        "expire_time": datetime.fromtimestamp(expires_at, UTC) if expires_at else None,
        "token_sha256": sha256_hex(secret["access_token"]) if kind == "oauth2" else None,
    }
