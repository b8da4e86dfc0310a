"""``EV_Central audit`` and ``EV_Central audit verify``, in-process, on SQLite and MySQL."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ev_central.audit import AuditLog
from ev_central.audit_cli import since_time
from ev_central.cli import main
from ev_central.core.entities import AuditEntry
from ev_central.store import open_store
from tests.central.conftest import raw

T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)

pytestmark = pytest.mark.usefixtures("root_logger_kept")  # (tests/conftest.py)

ENTRIES = [
    AuditEntry(T0, "driver D1", "", "supply.start", "cp CP1, session s1, account -", "ok"),
    AuditEntry(T0 + timedelta(minutes=1), "CP001", "10.0.0.7", "auth", "credential accepted", "ok"),
    AuditEntry(T0 + timedelta(days=1), "operator", "", "key.revoke", "CP001: 1 key", "ok"),
    AuditEntry(T0 + timedelta(days=1, minutes=1), "CP001", "10.0.0.7", "key.issue", "version 2", "ok"),
    AuditEntry(T0 + timedelta(days=2), "tag ...E73A", "10.0.0.9", "supply.deny", "cp CP4 (MCSP): Key is disabled",
               "refused"),
]


@pytest.fixture
def filled(db_url: str) -> str:
    store = open_store(db_url)
    try:
        store.append_audit(ENTRIES)
    finally:
        store.close()
    return db_url


def test_entries_are_printed_oldest_first_in_aligned_columns(filled, capsys):
    assert main(["audit", "--db", filled]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == ["seq", "at", "(UTC)", "actor", "source_ip", "action", "outcome", "details"]
    assert len(lines) == 6
    assert lines[1].split()[:2] == ["1", "2026-03-01T12:00:00.250000Z"]

    def column(line: str, name: str) -> str:  # the value where the header puts the column
        start = header.index(name)
        return line[start:].split("  ")[0].strip()

    assert [column(line, "actor") for line in lines[1:]] == ["driver D1", "CP001", "operator", "CP001", "tag ...E73A"]
    assert [column(line, "source_ip") for line in lines[1:]] == ["-", "10.0.0.7", "-", "10.0.0.7", "10.0.0.9"]
    assert [column(line, "action") for line in lines[1:]] == ["supply.start", "auth", "key.revoke", "key.issue",
                                                              "supply.deny"]
    assert [column(line, "outcome") for line in lines[1:]] == ["ok", "ok", "ok", "ok", "refused"]
    assert [line[header.index("details"):] for line in lines[1:]] == [e.details for e in ENTRIES]


def test_json_has_exactly_the_six_keys_one_object_per_line(filled, capsys):
    assert main(["audit", "--json", "--db", filled]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(objects) == 5
    assert all(list(o) == ["at", "actor", "source_ip", "action", "details", "outcome"] for o in objects)
    assert objects[0] == {"at": "2026-03-01T12:00:00.250000Z", "actor": "driver D1", "source_ip": "",
                          "action": "supply.start", "details": "cp CP1, session s1, account -", "outcome": "ok"}
    assert objects[4]["outcome"] == "refused" and objects[4]["source_ip"] == "10.0.0.9"


def test_since_action_family_and_limit(filled, capsys):
    def actions(*args: str) -> list[str]:
        assert main(["audit", "--json", "--db", filled, *args]) == 0
        return [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()]

    assert actions("--action", "key.") == ["key.revoke", "key.issue"]
    assert actions("--action", "auth") == ["auth"]
    assert actions("--since", "2026-03-02") == ["key.revoke", "key.issue", "supply.deny"]
    assert actions("--since", "2026-03-01T12:01") == ["auth", "key.revoke", "key.issue", "supply.deny"]
    assert actions("--since", "2026-03-01T14:00:30+02:00") == ["auth", "key.revoke", "key.issue", "supply.deny"]
    assert actions("--since", "2026-03-02", "--action", "supply.") == ["supply.deny"]
    assert actions("--limit", "2") == ["supply.start", "auth"]
    assert actions("--action", "cp.") == []
    assert main(["audit", "--db", filled, "--action", "cp."]) == 0
    assert capsys.readouterr().out.strip() == "no audit entries match"


def test_many_entries_are_read_in_batches(db_url, capsys, monkeypatch):
    monkeypatch.setattr("ev_central.audit_cli.READ_BATCH", 7)
    store = open_store(db_url)
    try:
        store.append_audit([AuditEntry(T0 + timedelta(seconds=n), f"CP{n:03d}", "", "cp.fault", f"n {n}", "ok")
                            for n in range(1, 31)])
    finally:
        store.close()
    assert main(["audit", "--db", db_url, "--json"]) == 0
    assert [json.loads(line)["details"] for line in capsys.readouterr().out.splitlines()] == [
        f"n {n}" for n in range(1, 31)]
    assert main(["audit", "--db", db_url, "--json", "--limit", "10"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10


@pytest.mark.parametrize("text, expected", [
    ("2026-03-01", datetime(2026, 3, 1, tzinfo=timezone.utc)),
    ("2026-03-01T12:30", datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc)),
    ("2026-03-01 12:30:05", datetime(2026, 3, 1, 12, 30, 5, tzinfo=timezone.utc)),
    ("2026-03-01T12:30:05Z", datetime(2026, 3, 1, 12, 30, 5, tzinfo=timezone.utc)),
    ("2026-03-01T14:30:05+02:00", datetime(2026, 3, 1, 12, 30, 5, tzinfo=timezone.utc)),
])
def test_since_takes_dates_and_times_in_utc_unless_zoned(text, expected):
    assert since_time(text) == expected


@pytest.mark.parametrize("args, complaint", [
    (["--since", "yesterday"], "is not a date or a time"),
    (["--since", "2026-13-01"], "is not a date or a time"),
    (["--action", "key revoke"], "is not an action"),
    (["--limit", "-1"], "--limit must be >= 0"),
    (["verify", "--json"], "verify checks the whole chain"),
    (["nonsense"], "invalid choice"),
])
def test_bad_arguments_exit_2_and_say_why(tmp_path, capsys, args, complaint):
    with pytest.raises(SystemExit) as exited:
        main(["audit", "--db", f"sqlite:///{tmp_path}/ev.db", *args])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_help_names_both_forms_and_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # (argparse wraps the lines)
    assert "EV_Central audit verify [--db URL]" in out and "--since T" in out and "--action A" in out
    assert "at, actor, source_ip, action, details, outcome" in out and "$EV_DB" in out


def test_an_empty_log(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/ev.db"
    assert main(["audit", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == "no audit entries"
    assert main(["audit", "verify", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == "audit log intact: 0 entries"


def test_the_database_url_comes_from_ev_db(filled, capsys, monkeypatch):
    monkeypatch.setenv("EV_DB", filled)
    assert main(["audit", "--json", "--action", "auth"]) == 0
    assert [json.loads(line)["actor"] for line in capsys.readouterr().out.splitlines()] == ["CP001"]


# -- verify -----------------------------------------------------------------------------------------


def test_verify_an_intact_chain_written_by_central(db_url, tmp_path, capsys):
    store = open_store(db_url)
    audit = AuditLog(store, tmp_path / "spool.jsonl").start()
    try:
        for n in range(25):
            audit.record("operator.command", "operator", f"list -> {n} CPs")
        assert audit.wait_idle(10)
    finally:
        audit.stop()
        store.close()
    assert main(["audit", "verify", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == "audit log intact: 25 entries"


@pytest.mark.parametrize("tamper, problem", [
    ("UPDATE audit_log SET details = 'nothing happened' WHERE seq = 2", "entry 2 was changed"),
    ("DELETE FROM audit_log WHERE seq = 3", "entry 3 is missing"),
    ("DELETE FROM audit_log WHERE seq = 5", "entries were removed from its end"),
])
def test_verify_a_chain_broken_by_hand(filled, capsys, tamper, problem):
    store = open_store(filled)
    try:
        raw(store, tamper)
    finally:
        store.close()
    assert main(["audit", "verify", "--db", filled]) == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith("audit log NOT intact: ") and problem in out, out


def test_verify_when_the_database_cannot_be_opened(capsys):
    assert main(["audit", "verify", "--db", "nope://x"]) == 3
    assert "cannot open the database" in capsys.readouterr().err
