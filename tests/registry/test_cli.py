"""EV_Registry as a real process (``python -m ev_registry``, ``EV_Registry.py`` from its folder),
and the installers' commands against it, on SQLite and on MySQL."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ev_central.store import open_store
from ev_common.credentials import verify_credential
from tests.registry.conftest import TOKEN
from tests.support.processes import ROOT, ProgramRunner
from tests.support.services import free_port

CREDENTIAL = re.compile(r"evc1_[A-Za-z0-9_-]{43}")
FINGERPRINT = re.compile(r"fingerprint: (SHA256:[0-9A-F:]{95})")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EV_")}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ev_registry", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "operator.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def _start(runner: ProgramRunner, tmp_path: Path, token_file: Path, db: str | None, *extra: str,
           name: str = "registry"):
    port = free_port()
    args = ["--port", str(port), "--host", "127.0.0.1", "--data-dir", str(tmp_path / "data"),
            "--admin-token-file", str(token_file), *extra]
    if db:
        args += ["--db", db]
    program = runner.start(name, args, package="ev_registry")
    fingerprint = program.wait_for_output(FINGERPRINT.pattern, timeout=30).group(1)
    return program, port, fingerprint


# -- starting ----------------------------------------------------------------------------------------


def test_it_refuses_to_start_without_an_operator_token(tmp_path: Path):
    result = run(["--port", str(free_port()), "--data-dir", str(tmp_path)], tmp_path)
    assert result.returncode == 2
    assert "no operator token" in result.stderr and "--admin-token-file" in result.stderr
    assert not (tmp_path / "ev_registry.key").exists()


@pytest.mark.parametrize("content,message", [("short", "16 to 512"), ("", "empty"), ("has spaces in it 123", "16 to 512")])
def test_it_refuses_a_bad_token(tmp_path: Path, content, message):
    bad = tmp_path / "bad.token"
    bad.write_text(content)
    result = run(["--port", str(free_port()), "--data-dir", str(tmp_path), "--admin-token-file", str(bad)], tmp_path)
    assert result.returncode == 1 and message in result.stderr
    missing = run(["--port", "1", "--admin-token-file", str(tmp_path / "nope")], tmp_path)
    assert missing.returncode == 1 and "cannot read the operator token file" in missing.stderr


def test_cert_and_key_go_together(tmp_path: Path, token_file: Path):
    result = run(["--port", "1", "--cert", str(tmp_path / "x.crt"), "--admin-token-file", str(token_file)], tmp_path)
    assert result.returncode == 2 and "--cert and --key go together" in result.stderr


def test_unknown_commands_are_refused(tmp_path: Path):
    result = run(["registr", "CP001"], tmp_path)
    assert result.returncode == 2 and "unknown command" in result.stderr


# -- serving, and the installers' commands ---------------------------------------------------------


def test_serve_and_register_list_deregister_from_the_command_line(runner: ProgramRunner, tmp_path: Path,
                                                                 token_file: Path, db_url: str):
    registry, port, fingerprint = _start(runner, tmp_path, token_file, db_url)
    url = f"https://127.0.0.1:{port}"
    data = tmp_path / "data"
    assert stat.S_IMODE((data / "ev_registry.key").stat().st_mode) == 0o600
    assert (data / "ev_registry.crt").exists()
    common = ["--url", url, "--token-file", str(token_file), "--fingerprint", fingerprint]

    out = tmp_path / "CP001.credential"
    registered = run(["register", "CP001", "--location", "C/Mayor, 45", "--price", "0.48", *common,
                      "--credentials-out", str(out)], tmp_path)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout == ""  # written to the file, not shown
    assert "CP001 registered" in registered.stderr and str(out) in registered.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    credential = out.read_text().strip()
    assert CREDENTIAL.fullmatch(credential)

    store = open_store(db_url)
    try:
        assert verify_credential(credential, store.get_registration("CP001").credential_hash)
        again = run(["register", "CP001", "--location", "Plaza 1", "--price", "0.5", *common], tmp_path)
        assert again.returncode == 0, again.stderr
        shown = again.stdout.strip()
        assert CREDENTIAL.fullmatch(shown) and shown != credential  # printed when no file is given
        assert "registered again" in again.stderr
        stored = store.get_registration("CP001").credential_hash
        assert verify_credential(shown, stored) and not verify_credential(credential, stored)
    finally:
        store.close()

    listed = run(["list", *common], tmp_path)
    assert listed.returncode == 0 and re.search(r"^CP001\tregistered\t0\.5000 EUR/kWh\tsince .*\tPlaza 1$",
                                                listed.stdout, re.M), listed.stdout
    one = run(["show", "CP001", "--json", *common], tmp_path)
    assert one.returncode == 0 and json.loads(one.stdout)["location"] == "Plaza 1"

    gone = run(["deregister", "CP001", *common], tmp_path)
    assert gone.returncode == 0 and "CP001 deregistered" in gone.stdout
    twice = run(["deregister", "CP001", *common], tmp_path)
    assert twice.returncode == 1 and "409" in twice.stderr and "already deregistered" in twice.stderr
    missing = run(["show", "NOPE", *common], tmp_path)
    assert missing.returncode == 1 and "404" in missing.stderr

    wrong_token = tmp_path / "wrong.token"
    wrong_token.write_text("not-the-operator-token-1234")
    refused = run(["list", "--url", url, "--token-file", str(wrong_token), "--fingerprint", fingerprint], tmp_path)
    assert refused.returncode == 1 and "401" in refused.stderr
    pinned_wrong = run(["list", "--url", url, "--token-file", str(token_file), "--fingerprint",
                        "SHA256:" + ":".join(["00"] * 32)], tmp_path)
    assert pinned_wrong.returncode == 1 and "does not match the pinned fingerprint" in pinned_wrong.stderr
    bad_price = run(["register", "CP002", "--location", "x", "--price", "1000.5", *common], tmp_path)
    assert bad_price.returncode == 2 and "price" in bad_price.stderr

    log = registry.output()
    assert "CP001 registered" in log and "refused a request from 127.0.0.1" in log
    for secret in (credential, shown, TOKEN, "not-the-operator-token-1234"):
        assert secret not in log
    assert registry.stop(signal.SIGINT) == 0


def test_the_certificate_is_made_once_and_kept(runner: ProgramRunner, tmp_path: Path, token_file: Path):
    first, _, fingerprint = _start(runner, tmp_path, token_file, None)
    assert "made now" in first.output()
    assert first.stop(signal.SIGTERM) == 0
    assert (tmp_path / "data" / "ev_central.db").exists()  # Central's default database, in --data-dir
    second, port, again = _start(runner, tmp_path, token_file, None, name="registry-again")
    assert again == fingerprint and "made now" not in second.output()
    listed = run(["list", "--url", f"https://127.0.0.1:{port}", "--token-file", str(token_file),
                  "--ca", str(tmp_path / "data" / "ev_registry.crt")], tmp_path)  # its own CA file
    assert listed.returncode == 0, listed.stderr


def test_from_its_folder_with_a_given_certificate_and_the_token_in_the_environment(runner: ProgramRunner,
                                                                                  tmp_path: Path, certificate):
    cert, key, ca = certificate
    port = free_port()
    program = runner.start("registry-script", ["serve", "--port", str(port), "--host", "127.0.0.1", "--cert",
                                               str(cert), "--key", str(key), "--data-dir", str(tmp_path / "d")],
                           script="ev_registry/EV_Registry.py", env={"EV_REGISTRY_TOKEN": TOKEN})
    program.wait_for_output(FINGERPRINT.pattern, timeout=30)
    assert not (tmp_path / "d" / "ev_registry.key").exists()  # no certificate made: one was given
    out = tmp_path / "cred"
    registered = run(["register", "CP9", "--location", "x", "--price", "0", "--url", f"https://localhost:{port}",
                      "--ca", str(ca), "--credentials-out", str(out)], tmp_path,
                     EV_REGISTRY_TOKEN=TOKEN)
    assert registered.returncode == 0, registered.stderr
    assert CREDENTIAL.fullmatch(out.read_text().strip())
    assert program.stop() == 0


def test_help_lists_the_commands_and_flags(tmp_path: Path):
    result = subprocess.run([sys.executable, "EV_Registry.py", "--help"], cwd=ROOT / "ev_registry",
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    shown = " ".join(result.stdout.split())
    for text in ("--port", "--host", "--db", "--cert", "--key", "--data-dir", "--admin-token-file", "--log-level",
                 "register, deregister, list, show"):
        assert text in shown
    register = run(["register", "--help"], tmp_path)
    for text in ("--location", "--price", "--url", "--token-file", "--ca", "--fingerprint", "--credentials-out"):
        assert text in register.stdout
