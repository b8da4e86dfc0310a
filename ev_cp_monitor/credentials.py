"""The CP's credential from EV_Registry: read from its file, or obtained once by registering.

The file holds one line, the credential (base64url, what ``REG`` carries) and is kept
mode 0600: a file that group or others may read is refused. ``obtain`` reads it, or, when
it does not exist yet and the Registry's address and an operator token are given,
registers the CP at EV_Registry and writes the file (created 0600, whole or not at all).
Neither the credential nor the token is ever printed or logged: errors name the files,
never their contents.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable

from ev_common.files import write_atomically
from ev_common.protocol.fields import Token
from ev_common.protocol.messages import CREDENTIAL_MAX

log = logging.getLogger(__name__)

REDACTED = "***"


class CredentialError(Exception):
    """The credential cannot be had (its file, the Registry): the text says why, without secrets."""


@dataclass(frozen=True)
class RegistryAccess:
    """How to register at EV_Registry: its URL, the file with an operator's token, and how to
    verify its certificate (a CA file or a pinned fingerprint, or the system's CAs)."""

    url: str
    token_file: Path
    ca_file: str | None = None
    fingerprint: str | None = None
    timeout: float = 10.0


def _private(path: Path, what: str) -> os.stat_result:
    """The file's status; refuses one that group or others may read or write."""
    info = path.stat()
    if os.name == "posix" and info.st_mode & 0o077:
        raise CredentialError(f"{what} {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}): "
                              f"chmod 600 {path}")
    return info


def read_secret_line(path: Path, what: str) -> str:
    """The first line of a private file, stripped; refused when empty or not private."""
    try:
        _private(path, what)
        with open(path, encoding="utf-8") as handle:
            text = handle.readline(4096).strip()
    except FileNotFoundError:
        raise CredentialError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}") \
            from None
    if not text:
        raise CredentialError(f"{what} {path} is empty")
    return text


def read_credential(path: Path) -> str:
    """The credential in ``path``: one line of base64url, at most 128 characters."""
    credential = read_secret_line(path, "the credentials file")
    try:
        Token(CREDENTIAL_MAX).check(credential)
    except ValueError:
        raise CredentialError(f"the credentials file {path} does not hold a credential (one line of base64url "
                              f"characters, at most {CREDENTIAL_MAX})") from None
    return credential


def write_private(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, mode 0600, whole or not at all; ``path`` must not exist
    yet (``FileExistsError``: what is there is left alone)."""
    write_atomically(path, text.encode("utf-8"), 0o600, replace=False)


def _registry_client(access: RegistryAccess, token: str):
    try:
        from ev_registry.client import RegistryClient
    except ImportError as exc:
        raise CredentialError(f"EV_Registry's client (ev_registry.client) cannot be loaded: {exc}") from None
    return RegistryClient(access.url, token, ca_file=access.ca_file, fingerprint=access.fingerprint,
                          timeout=access.timeout)


def register(access: RegistryAccess, cp_id: str, location: str, price: Decimal, *,
             client_factory: Callable[[RegistryAccess, str], object] = _registry_client) -> str:
    """Register the CP at EV_Registry with the operator's token; its new credential."""
    token = read_secret_line(access.token_file, "the registry token file")
    try:
        client = client_factory(access, token)
        try:
            credential = client.register(cp_id, location, price)
        finally:
            getattr(client, "close", lambda: None)()
    except Exception as exc:  # whatever the client raises (HTTP, TLS, a refusal) says why, without the token
        reason = (str(exc) or type(exc).__name__).replace(token, REDACTED)
        raise CredentialError(f"registering {cp_id} at EV_Registry {access.url} failed: {reason}") from None
    try:
        Token(CREDENTIAL_MAX).check(credential)
        if not credential:
            raise ValueError("empty")
    except ValueError:
        raise CredentialError(f"EV_Registry {access.url} answered no usable credential for {cp_id} (one line "
                              f"of base64url characters, at most {CREDENTIAL_MAX})") from None
    return credential


def obtain(path: Path, cp_id: str, location: str, price: Decimal, registry: RegistryAccess | None = None, *,
           say: Callable[[str], None] = lambda text: log.info("%s", text),
           client_factory: Callable[[RegistryAccess, str], object] = _registry_client) -> str:
    """The credential in ``path``; when that file does not exist yet and ``registry`` is given,
    the CP is registered there first and the file written (0600). An existing file is never
    replaced: the CP is not registered again."""
    if registry is not None and path.exists():
        say(f"credentials file {path} exists: {cp_id} is not registered at EV_Registry again")
    elif registry is not None:
        say(f"registering {cp_id} at EV_Registry {registry.url}...")
        credential = register(registry, cp_id, location, price, client_factory=client_factory)
        try:
            write_private(path, credential + "\n")
        except FileExistsError:
            say(f"credentials file {path} was written meanwhile: that one is used")
        except OSError as exc:
            raise CredentialError(f"{cp_id} is registered, but its credentials file {path} cannot be written "
                                  f"({exc.strerror or exc}): register it again when the folder is writable") \
                from None
        else:
            say(f"registered {cp_id} at EV_Registry; its credential is in {path} (mode 0600)")
    elif not path.exists():
        raise CredentialError(f"the credentials file {path} not found (to register this CP at EV_Registry and "
                              f"write it, give --registry URL --registry-token-file FILE)")
    return read_credential(path)
