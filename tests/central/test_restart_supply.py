"""Central restarted while a CP supplies: the CP comes back SUMINISTRANDO, not ACTIVADO."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from ev_central.app import Central
from ev_central.store import SessionRow, open_store
from ev_common.link import Link
from ev_common.protocol import Auth, Reg
from tests.support.waiting import wait_until


def test_open_session_survives_restart_and_registration(tmp_path):
    url = f"sqlite:///{tmp_path / 'central.db'}"
    store = open_store(url)
    store.save_sessions([SessionRow("s1", "r1", "CP1", "D1", Decimal("0.5"), datetime.now(timezone.utc), None,
                                    Decimal("1.5"), Decimal("0.75"), "SUPPLYING", None, False, 7)])
    store.close()
    central = Central(open_store(url), "127.0.0.1", 0).start()
    try:
        with Link.connect(*central.address) as link:
            link.send(Reg("CP1", "Calle 1", Decimal("0.5")))
            assert isinstance(link.recv(timeout=5), Auth)
            wait_until(lambda: central.network.get("CP1").state == "SUMINISTRANDO", 5, "CP1 SUMINISTRANDO")
            assert central.book.running_for_cp("CP1").last_seq == 7  # the supply goes on where it was
    finally:
        central.stop()
