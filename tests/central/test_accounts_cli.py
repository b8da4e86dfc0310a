"""``EV_Central accounts``, ``EV_Central tags`` and ``EV_Central drivers add --account``: what they
print, their exit statuses, and their input checked against the tables' limits, on both backends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ev_central.cli import main
from ev_central.store import open_store


pytestmark = pytest.mark.usefixtures("root_logger_kept")  # (tests/conftest.py)



def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)``: its exit status (argparse's included), standard output and error."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_accounts_add_list_disable_enable(db_url: str, capsys) -> None:
    db = ("--db", db_url)
    assert run(capsys, "accounts", "add", "FLAT3B", "--name", "Flat 3B", "--kind", "apartment", *db) == (
        0, "account FLAT3B created\n", "")
    assert run(capsys, "accounts", "add", "ACME", "--name", "Acme S.L.", "--kind", "company", *db)[0] == 0
    assert run(capsys, "accounts", "add", "SOLO", *db)[0] == 0
    assert run(capsys, "accounts", "add", "FLAT3B", "--name", "Other", *db) == (  # as drivers add: harmless
        0, "account FLAT3B already exists; nothing changed\n", "")
    assert run(capsys, "accounts", "list", *db) == (
        0, "ACME\tcompany\tactive\tAcme S.L.\nFLAT3B\tapartment\tactive\tFlat 3B\nSOLO\tother\tactive\t\n", "")
    assert run(capsys, "accounts", "disable", "FLAT3B", *db) == (0, "account FLAT3B disabled\n", "")
    assert run(capsys, "accounts", "disable", "FLAT3B", *db) == (0, "account FLAT3B was already disabled\n", "")
    assert run(capsys, "accounts", "list", *db)[1].splitlines()[1] == "FLAT3B\tapartment\tdisabled\tFlat 3B"
    assert run(capsys, "accounts", "enable", "FLAT3B", *db) == (0, "account FLAT3B enabled\n", "")
    assert run(capsys, "accounts", "disable", "NOPE", *db) == (1, "", "no account NOPE\n")


def test_tags_add_list_disable(db_url: str, capsys) -> None:
    db = ("--db", db_url)
    run(capsys, "accounts", "add", "FLAT3B", "--kind", "apartment", *db)
    run(capsys, "accounts", "add", "ACME", "--kind", "company", *db)
    assert run(capsys, "tags", "add", "16AC936B1692E73A", "--account", "FLAT3B", *db) == (
        0, "tag 16AC936B1692E73A added to account FLAT3B\n", "")
    assert run(capsys, "tags", "add", "04:a2:3b:1c", "--account", "ACME", *db) == (
        0, "tag 04A23B1C added to account ACME\n", "")
    code, out, err = run(capsys, "tags", "add", "16-ac-93-6b-16-92-e7-3a", "--account", "ACME", *db)
    assert (code, out) == (1, "") and "16AC936B1692E73A already belongs to account FLAT3B" in err
    assert run(capsys, "tags", "add", "16ac936b1692e73a", "--account", "FLAT3B", *db) == (  # again: harmless
        0, "tag 16AC936B1692E73A already belongs to account FLAT3B; nothing changed\n", "")
    code, out, _ = run(capsys, "tags", "list", *db)
    assert code == 0
    assert [line.split("\t")[:3] for line in out.splitlines()] == [
        ["04A23B1C", "ACME", "active"], ["16AC936B1692E73A", "FLAT3B", "active"]]
    code, out, _ = run(capsys, "tags", "list", "--account", "FLAT3B", *db)
    assert [line.split("\t")[0] for line in out.splitlines()] == ["16AC936B1692E73A"]
    assert run(capsys, "tags", "list", "--account", "NOPE", *db) == (1, "", "no account NOPE\n")
    assert run(capsys, "tags", "disable", "16 ac 93 6b 16 92 e7 3a", *db) == (
        0, "tag 16AC936B1692E73A disabled\n", "")
    assert run(capsys, "tags", "enable", "16AC936B1692E73A", *db) == (0, "tag 16AC936B1692E73A enabled\n", "")
    assert run(capsys, "tags", "disable", "DEADBEEF", *db) == (1, "", "no tag DEADBEEF\n")
    code, _, err = run(capsys, "tags", "add", "DEADBEEF", "--account", "NOPE", *db)
    assert code == 1 and "account 'NOPE' does not exist" in err
    run(capsys, "accounts", "disable", "ACME", *db)
    code, _, err = run(capsys, "tags", "add", "DEADBEEF", "--account", "ACME", *db)
    assert code == 1 and "account 'ACME' is disabled" in err
    store = open_store(db_url)
    try:
        assert store.get_tag("DEADBEEF") is None
        tag = store.get_tag("16AC936B1692E73A")
        assert tag is not None and tag.active and tag.account_id == "FLAT3B"
    finally:
        store.close()


def test_drivers_add_with_an_account(db_url: str, capsys) -> None:
    db = ("--db", db_url)
    run(capsys, "accounts", "add", "FLAT3B", "--kind", "apartment", *db)
    run(capsys, "accounts", "add", "ACME", "--kind", "company", *db)
    assert run(capsys, "drivers", "add", "D001", "--account", "FLAT3B", *db) == (
        0, "driver D001 registered; account FLAT3B\n", "")
    assert run(capsys, "drivers", "add", "D001", "--account", "ACME", *db) == (
        0, "driver D001 was already registered; account ACME\n", "")
    assert run(capsys, "drivers", "add", "D002", *db)[0] == 0
    code, err = run(capsys, "drivers", "add", "D003", "--account", "NOPE", *db)[::2]
    assert code == 1 and "no account NOPE" in err
    run(capsys, "accounts", "disable", "FLAT3B", *db)
    code, err = run(capsys, "drivers", "add", "D003", "--account", "FLAT3B", *db)[::2]
    assert code == 1 and "disabled account FLAT3B" in err
    code, out, _ = run(capsys, "drivers", "list", *db)
    assert [line.split("\t")[::3] for line in out.splitlines()] == [["D001", "ACME"], ["D002", "-"]]
    store = open_store(db_url)
    try:
        assert not store.driver_exists("D003")  # nothing registered when the account is refused
        account = store.account_of_driver("D001")
        assert account is not None and account.account_id == "ACME"
    finally:
        store.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["accounts", "add", "FLAT 3B"], ["accounts", "add", "A" * 65], ["accounts", "add", ""],
        ["accounts", "add", "FLAT3B", "--name", "x" * 101], ["accounts", "add", "FLAT3B", "--name", "a\nb"],
        ["accounts", "add", "FLAT3B", "--kind", "Apartment"], ["accounts", "add", "FLAT3B", "--kind", "a" * 33],
        ["accounts", "add", "FLAT3B", "--kind", ""], ["accounts"], ["accounts", "remove", "FLAT3B"],
        ["accounts", "disable"], ["accounts", "statement", "FLAT3B", "--from", "2025-3-1"],
        ["accounts", "statement", "FLAT3B", "--from", "2025-W09-6"],
        ["accounts", "statement", "FLAT3B", "--to", "2025-02-30"],
        ["accounts", "statement", "FLAT3B", "--from", "2025-03-02", "--to", "2025-03-01"],
        ["tags", "add", "16AC936B1692E73A"], ["tags", "add", "16AC936B1692E", "--account", "A"],
        ["tags", "add", "12345678901", "--account", "A"], ["tags", "add", "04A23B1G", "--account", "A"],
        ["tags", "add", "04A23B1C", "--account", "A B"], ["tags", "disable", "xyz"], ["tags"],
        ["drivers", "add", "D001", "--account", "A B"], ["drivers", "remove", "D001", "--account", "A"],
    ],
)
def test_bad_arguments_exit_2_and_touch_nothing(tmp_path, capsys, argv: list[str]) -> None:
    db = tmp_path / "ev.db"
    code, out, err = run(capsys, *argv, "--db", f"sqlite:///{db}")
    assert code == 2 and out == "" and "error:" in err
    assert not db.exists()  # refused before the database is opened


def test_an_unreachable_database_exits_1(capsys) -> None:
    for argv in (["accounts", "list"], ["tags", "list"]):
        code, _, err = run(capsys, *argv, "--db", "mysql://nobody@127.0.0.1:1/none")
        assert code == 1 and "cannot open the database" in err


@pytest.mark.parametrize("command", [["accounts"], ["accounts", "statement"], ["tags"], ["tags", "add"], []])
def test_help_names_the_subcommands(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "ev_central", *command, "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    if command == ["accounts"]:
        for action in ("add", "list", "disable", "enable", "statement"):
            assert f"\n    {action}" in result.stdout
    elif command == ["accounts", "statement"]:
        assert "--from DATE" in text and "--to DATE" in text and "--csv" in text
        assert ("session_id, cp_id, tag, driver_id, started_at, ended_at, kwh, price_eur_kwh, amount_eur, status"
                in text)
    elif command == ["tags"]:
        assert "4, 7, 8 or 10 bytes" in text
    elif command == ["tags", "add"]:
        assert "--account ID" in text
    else:
        assert "EV_Central accounts --help" in text and "EV_Central tags --help" in text
