"""Pseudonymous subject references: HMAC-SHA256 of a user id under the retention key, the only
way a certificate (kept 3 years) names whom it is about.

The key is `RETENTION_SUBJECT_KEY`, or, unset, 32 random bytes generated once under
var/retention/ (mode 0600, like the vault's managed keys). Losing it loses nothing but the
ability to tell which certificate is whose given a user id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from services.kit.db import private_dir

KEY_FILE = "subject.key"


def load_subject_key(configured: str | None, var_dir: Path) -> bytes:
    if configured:
        return configured.encode("utf-8")
    path = var_dir / KEY_FILE
    if not path.exists():
        private_dir(var_dir)
        encoded = base64.b64encode(secrets.token_bytes(32))
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica on this machine made it first
            pass
        else:
            with os.fdopen(descriptor, "wb") as file:
                file.write(encoded + b"\n")
                file.flush()
                os.fsync(file.fileno())
    return base64.b64decode(path.read_bytes().strip())


def subject_ref(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
