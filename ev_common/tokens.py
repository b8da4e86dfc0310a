"""Bearer tokens, as EVCharging's HTTP APIs take them (EV_Registry's operator token, Central's
operator and EV_W tokens): read from a file or a variable, checked for their form, and found
in an ``Authorization: Bearer <token>`` header.

A token is 16-512 printable ASCII characters without spaces (it travels in an HTTP header).
A server keeps only its SHA-256 (``token_digest``) and compares digests in constant time
(``hmac.compare_digest``). No function here puts a token in a message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from pathlib import Path

__all__ = ["BEARER", "MALFORMED", "NO_TOKEN", "TOKEN_PATTERN", "WRONG_TOKEN", "bearer_token", "load_token",
           "read_token", "token_digest"]

log = logging.getLogger(__name__)

#: A token: printable ASCII without spaces, 16-512 characters.
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{16,512}")
#: An ``Authorization`` header carrying a bearer token (the scheme's name in any case).
BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e]{1,1024}) *")
NO_TOKEN = "no bearer token"
MALFORMED = "malformed Authorization header (expected 'Bearer <token>')"
WRONG_TOKEN = "wrong bearer token"


def load_token(text: str, where: str, what: str = "the operator token") -> str:
    """``what`` read from ``where`` (a file or a variable): surrounding white space is dropped;
    ``ValueError`` when it is empty or not 16-512 printable ASCII characters."""
    token = text.strip()
    if not token:
        raise ValueError(f"{what} in {where} is empty")
    if not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"{what} in {where} must be 16 to 512 printable ASCII characters without "
                         f"spaces (it has {len(token)} characters)")
    return token


def read_token(path: Path | None, env_name: str, what: str = "the operator token") -> str | None:
    """``what`` from the file ``path``, else from ``$env_name``, else None. ``ValueError`` (a
    message to show, never the token) when the file cannot be read or the token is malformed.
    A file other users may read is said in a warning."""
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {what} file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if os.name == "posix":
            try:
                mode = path.stat().st_mode
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    log.warning("%s file %s can be read by other users (mode %o): chmod 600 it", what, path,
                                mode & 0o777)
            except OSError:
                pass
        return load_token(text, str(path), what)
    value = os.environ.get(env_name, "")
    return load_token(value, f"${env_name}", what) if value.strip() else None


def bearer_token(authorization: str | None) -> tuple[str | None, str]:
    """The token in an ``Authorization`` header, and what to say if it is refused: ``(None,
    NO_TOKEN)`` without one, ``(None, MALFORMED)`` for a header that is not ``Bearer <token>``,
    ``(token, WRONG_TOKEN)`` otherwise (the reason, should the token not be the right one)."""
    if authorization is None or not authorization.strip():
        return None, NO_TOKEN
    match = BEARER.fullmatch(authorization)
    if match is None:
        return None, MALFORMED
    return match.group(1), WRONG_TOKEN


def token_digest(token: str) -> bytes:
    """The SHA-256 of ``token``: what a server keeps and compares (``hmac.compare_digest``)."""
    return hashlib.sha256(token.encode("ascii", "replace")).digest()
