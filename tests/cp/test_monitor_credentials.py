"""The Monitor's credential (ev_cp_monitor/credentials.py): read from a file only its owner may
read; obtained once from EV_Registry (a fake client here) and written 0600, whole, never over an
existing file; errors say why without the credential or the token."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from ev_cp_monitor.credentials import CredentialError, RegistryAccess, obtain, read_credential, write_private
from tests.cp.secure_fakes import CREDENTIAL

TOKEN = "operator-token-0123456789abcdef"
PRICE = Decimal("0.48")


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


class FakeRegistry:
    """Stands for ``ev_registry.client.RegistryClient``: records each registration."""

    def __init__(self, answer: str = CREDENTIAL, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.calls: list[tuple] = []
        self.closed = 0

    def __call__(self, access: RegistryAccess, token: str) -> "FakeRegistry":
        self.calls.append(("client", access.url, token))
        return self

    def register(self, cp_id: str, location: str, price) -> str:
        self.calls.append(("register", cp_id, location, price))
        if self.error is not None:
            raise self.error
        return self.answer

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def access(tmp_path) -> RegistryAccess:
    return RegistryAccess("https://127.0.0.1:8443", private(tmp_path / "token", TOKEN + "\n"))


def test_a_credential_is_one_line_of_base64url_in_a_private_file(tmp_path):
    assert read_credential(private(tmp_path / "c", f"  {CREDENTIAL}  \nignored\n")) == CREDENTIAL
    for text, why in [("", "is empty"), ("not base64!\n", "does not hold a credential"),
                      ("x" * 129, "does not hold a credential")]:
        with pytest.raises(CredentialError, match=why) as caught:
            read_credential(private(tmp_path / "c", text))
        assert text.strip() == "" or text.strip() not in str(caught.value)
    with pytest.raises(CredentialError, match="not found"):
        read_credential(tmp_path / "none")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_file_group_or_others_may_read_is_refused(tmp_path, mode):
    path = private(tmp_path / "c", CREDENTIAL, mode)
    with pytest.raises(CredentialError) as caught:
        read_credential(path)
    assert f"chmod 600 {path}" in str(caught.value) and CREDENTIAL not in str(caught.value)


def test_registering_writes_the_file_0600_once_and_never_again(tmp_path, access):
    path, said, registry = tmp_path / "cp001.credential", [], FakeRegistry()
    assert obtain(path, "CP001", "C/Mayor, 45", PRICE, access, say=said.append, client_factory=registry) == CREDENTIAL
    assert registry.calls == [("client", access.url, TOKEN), ("register", "CP001", "C/Mayor, 45", PRICE)]
    assert registry.closed == 1
    assert path.read_text() == CREDENTIAL + "\n" and (path.stat().st_mode & 0o777) == 0o600
    assert set(os.listdir(tmp_path)) == {"cp001.credential", "token"}  # no temporary file left
    # the file exists: used as it is, the CP is not registered again
    assert obtain(path, "CP001", "C/Mayor, 45", PRICE, access, say=said.append, client_factory=registry) == CREDENTIAL
    assert len(registry.calls) == 2
    assert said[-1] == f"credentials file {path} exists: CP001 is not registered at EV_Registry again"
    assert not [line for line in said if CREDENTIAL in line or TOKEN in line]


def test_a_failed_registration_says_why_without_the_token_and_writes_nothing(tmp_path, access):
    path = tmp_path / "cp001.credential"
    registry = FakeRegistry(error=RuntimeError(f"HTTP 401: bad token {TOKEN}"))
    with pytest.raises(CredentialError) as caught:
        obtain(path, "CP001", "L", PRICE, access, client_factory=registry)
    assert str(caught.value) == ("registering CP001 at EV_Registry https://127.0.0.1:8443 failed: "
                                 "HTTP 401: bad token ***")
    assert not path.exists() and registry.closed == 1
    with pytest.raises(CredentialError, match="answered no usable credential"):
        obtain(path, "CP001", "L", PRICE, access, client_factory=FakeRegistry(answer="not a credential!"))
    assert not path.exists()


def test_the_token_file_must_be_private_too(tmp_path, access):
    access.token_file.chmod(0o644)
    registry = FakeRegistry()
    with pytest.raises(CredentialError, match=f"chmod 600 {access.token_file}"):
        obtain(tmp_path / "c", "CP001", "L", PRICE, access, client_factory=registry)
    assert registry.calls == []


def test_without_the_registry_a_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(CredentialError, match="--registry URL --registry-token-file FILE"):
        obtain(tmp_path / "c", "CP001", "L", PRICE)


def test_a_private_file_is_written_whole_and_never_replaces_one(tmp_path):
    path = tmp_path / "c"
    write_private(path, "first\n")
    with pytest.raises(FileExistsError):
        write_private(path, "second\n")
    assert path.read_text() == "first\n" and os.listdir(tmp_path) == ["c"]
