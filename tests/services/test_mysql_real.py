"""The MySQL server the tests use is real: a TCP connection to a throw-away database."""

from __future__ import annotations

from decimal import Decimal

from tests.support.services import mysql_connect, parse_mysql_url


def test_table_round_trip_over_tcp(mysql_url: str) -> None:
    target = parse_mysql_url(mysql_url)
    assert target.database and target.database.startswith("evtest_")

    conn = mysql_connect(mysql_url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT DATABASE(), HOST FROM information_schema.PROCESSLIST"
                    " WHERE ID = CONNECTION_ID()")
        database, client_host = cur.fetchone()
        assert database == target.database
        assert ":" in client_host, f"not a TCP connection: {client_host!r}"

        cur.execute(
            "CREATE TABLE charging_point ("
            " id VARCHAR(16) PRIMARY KEY, location VARCHAR(64) NOT NULL,"
            " price_eur_kwh DECIMAL(6, 3) NOT NULL, state VARCHAR(16) NOT NULL)"
        )
        rows = [
            ("CP001", "Alicante C/ Italia 5", Decimal("0.540"), "ACTIVE"),
            ("CP002", "Elche Av. Universidad", Decimal("0.385"), "STOPPED"),
        ]
        cur.executemany(
            "INSERT INTO charging_point (id, location, price_eur_kwh, state)"
            " VALUES (%s, %s, %s, %s)",
            rows,
        )
        conn.commit()
        cur.close()
    finally:
        conn.close()

    # A second connection sees the committed rows.
    conn = mysql_connect(mysql_url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, location, price_eur_kwh, state FROM charging_point ORDER BY id")
        assert cur.fetchall() == rows
        cur.close()
    finally:
        conn.close()
