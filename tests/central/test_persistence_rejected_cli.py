"""``EV_Central rejected``: the rows the database refused, as the write-behind set them aside."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ev_central.cli import main
from ev_central.persistence import session_writer
from ev_central.store import SessionRow, open_store

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


pytestmark = pytest.mark.usefixtures("root_logger_kept")  # (tests/conftest.py)



def test_rejected_lists_what_the_writer_set_aside(db_url: str, capsys) -> None:
    store = open_store(db_url)
    writer = session_writer(store).start()
    try:
        bad = SessionRow("S\x1b1", "r", "CP1", "D1", Decimal("0.4"), T0, None, Decimal("0"), Decimal("0"),
                         "SUPPLYING", None, False, 2**31)
        writer.put(bad)
        assert writer.wait_idle(10)
    finally:
        writer.stop()
        store.close()

    assert main(["rejected", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "session\tS?1\t" in out and "last_seq" in out  # no escape sequence reaches the terminal

    assert main(["rejected", "--db", db_url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["kind"], row["row_id"]) == ("session", "S\x1b1")
    assert row["row"]["last_seq"] == 2**31 and row["row"]["status"] == "SUPPLYING"


def test_rejected_on_an_empty_database(tmp_path, capsys) -> None:
    assert main(["rejected", "--db", f"sqlite:///{tmp_path}/ev.db"]) == 0
    assert capsys.readouterr().out.strip() == "no rejected rows"
    assert main(["rejected", "--db", "nope://x"]) == 1
