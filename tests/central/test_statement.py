"""Account statements: ``Store.account_statement`` and ``EV_Central accounts statement`` on both
backends, with sessions stored directly; totals are the exact sums of the sessions listed."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from ev_central.cli import STATEMENT_CSV_COLUMNS, main
from ev_central.store import SessionRow
from ev_central.store.sql import SQLStore

UTC = timezone.utc
MARCH = datetime(2025, 3, 1, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("root_logger_kept")  # (tests/conftest.py)


def ended(session_id: str, started_at: datetime, kwh: str, price: str, amount: str, **changes: Any) -> SessionRow:
    values: dict[str, Any] = dict(
        session_id=session_id, request_id=f"req-{session_id}", cp_id="CP001", driver_id="D001",
        price_eur_kwh=Decimal(price), started_at=started_at, ended_at=started_at + timedelta(minutes=45),
        kwh=Decimal(kwh), amount_eur=Decimal(amount), status="COMPLETED", end_reason="unplugged",
        ticket_sent=True, last_seq=10, account_id="FLAT3B",
    )
    values.update(changes)
    return SessionRow(**values)


#: FLAT3B's sessions: by its tag and by its driver, one interrupted, one open; figures chosen so
#: that a float would not add them up exactly.
SESSIONS = [
    ended("S01", MARCH - timedelta(microseconds=1), "9.9999", "0.3500", "3.5000"),  # February
    ended("S02", MARCH, "0.1000", "0.3333", "0.0333", tag_uid="16AC936B1692E73A", driver_id=""),
    ended("S03", MARCH + timedelta(days=3, hours=8), "0.2000", "0.3333", "0.0667", cp_id="CP002"),
    ended("S04", MARCH + timedelta(days=10), "12.3456", "0.4199", "5.1839", status="INTERRUPTED",
          end_reason="Monitor lost", tag_uid="04A23B1C", driver_id=""),
    ended("S05", MARCH + timedelta(days=30, hours=23, minutes=59), "0.3000", "0.3333", "0.1000",
          status="SUPPLYING", ended_at=None, end_reason=None, ticket_sent=False),
    ended("S06", MARCH + timedelta(days=31), "1.0000", "0.3500", "0.3500"),  # April
    ended("X01", MARCH + timedelta(days=2), "7.0000", "0.3500", "2.4500", account_id="ACME"),
    ended("X02", MARCH + timedelta(days=2), "7.0000", "0.3500", "2.4500", account_id=None, driver_id="D009"),
]
MARCH_IDS = ["S02", "S03", "S04", "S05"]


def stored(store: SQLStore) -> None:
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_account("ACME", "Acme", "company")
    store.add_account("EMPTY")
    store.save_sessions(SESSIONS)


def test_a_statement_lists_the_period_and_adds_it_up_exactly(store: SQLStore) -> None:
    stored(store)
    statement = store.account_statement("FLAT3B", MARCH, MARCH + timedelta(days=31))
    assert statement is not None
    assert statement.account == store.get_account("FLAT3B")
    assert [s.session_id for s in statement.sessions] == MARCH_IDS
    assert list(statement.sessions) == [s for s in SESSIONS if s.session_id in MARCH_IDS]  # as stored
    assert statement.total_kwh == Decimal("12.9456") == sum(s.kwh for s in statement.sessions)
    assert statement.total_amount_eur == Decimal("5.3839") == sum(s.amount_eur for s in statement.sessions)
    assert str(statement.total_amount_eur) == "5.3839"

    whole = store.account_statement("FLAT3B")
    assert whole is not None and [s.session_id for s in whole.sessions] == ["S01", *MARCH_IDS, "S06"]
    assert whole.total_amount_eur == Decimal("9.2339")

    empty = store.account_statement("EMPTY")
    assert empty is not None and empty.sessions == ()
    assert (str(empty.total_kwh), str(empty.total_amount_eur)) == ("0.0000", "0.0000")
    assert store.account_statement("NOPE") is None


def test_the_csv_statement_is_exactly_as_specified(store: SQLStore, capsys) -> None:
    stored(store)
    url = _url(store)
    code = main(["accounts", "statement", "FLAT3B", "--from", "2025-03-01", "--to", "2025-03-31", "--csv",
                 "--db", url])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "session_id,cp_id,tag,driver_id,started_at,ended_at,kwh,price_eur_kwh,amount_eur,status"
    assert tuple(lines[0].split(",")) == STATEMENT_CSV_COLUMNS
    assert lines[1:] == [
        "S02,CP001,16AC936B1692E73A,,2025-03-01T00:00:00+00:00,2025-03-01T00:45:00+00:00,0.1000,0.3333,0.0333,"
        "COMPLETED",
        "S03,CP002,,D001,2025-03-04T08:00:00+00:00,2025-03-04T08:45:00+00:00,0.2000,0.3333,0.0667,COMPLETED",
        "S04,CP001,04A23B1C,,2025-03-11T00:00:00+00:00,2025-03-11T00:45:00+00:00,12.3456,0.4199,5.1839,"
        "INTERRUPTED",
        "S05,CP001,,D001,2025-03-31T23:59:00+00:00,,0.3000,0.3333,0.1000,SUPPLYING",
    ]
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sum(Decimal(r["amount_eur"]) for r in rows) == Decimal("5.3839")  # no total row among them


def test_the_text_statement_shows_each_session_and_the_totals(store: SQLStore, capsys) -> None:
    stored(store)
    code = main(["accounts", "statement", "FLAT3B", "--from", "2025-03-01", "--to", "2025-03-31", "--db",
                 _url(store)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Statement of account FLAT3B (Flat 3B, apartment, active)"
    assert lines[1] == "Period: 2025-03-01 to 2025-03-31 (UTC days, by the session's start)"
    assert lines[2].split() == ["session", "CP", "tag", "driver", "started", "(UTC)", "ended", "(UTC)", "kWh",
                                "EUR/kWh", "amount", "EUR", "status"]
    assert [line.split()[0] for line in lines[3:-1]] == MARCH_IDS
    assert lines[3].split() == ["S02", "CP001", "16AC936B1692E73A", "-", "2025-03-01", "00:00:00", "2025-03-01",
                                "00:45:00", "0.1000", "0.3333", "0.0333", "COMPLETED"]
    assert lines[6].split()[6:] == ["-", "0.3000", "0.3333", "0.1000", "SUPPLYING"]
    assert lines[-1] == ("Total: 4 sessions, 12.9456 kWh, 5.3839 EUR (1 still open: their figures so far)")


def test_a_statement_of_one_day_and_of_open_bounds(store: SQLStore, capsys) -> None:
    stored(store)
    url = _url(store)
    assert main(["accounts", "statement", "FLAT3B", "--from", "2025-03-04", "--to", "2025-03-04", "--csv",
                 "--db", url]) == 0
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["S03"]
    assert main(["accounts", "statement", "FLAT3B", "--to", "2025-02-28", "--csv", "--db", url]) == 0
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["S01"]
    assert main(["accounts", "statement", "FLAT3B", "--from", "2025-04-01", "--db", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Total: 1 sessions, 1.0000 kWh, 0.3500 EUR"
    assert main(["accounts", "statement", "EMPTY", "--csv", "--db", url]) == 0
    assert capsys.readouterr().out == ",".join(STATEMENT_CSV_COLUMNS) + "\n"
    assert main(["accounts", "statement", "NOPE", "--db", url]) == 1
    assert capsys.readouterr().err == "no account NOPE\n"


def _url(store: SQLStore) -> str:
    if type(store).__name__ == "SQLiteStore":
        return f"sqlite:///{store.path}"
    url = store.url
    password = f":{url.password}" if url.password else ""
    return f"mysql://{url.user}{password}@{url.host}:{url.port}/{url.database}"
