"""Central's MCSP port on real sockets: a real Central (its store on SQLite and on MySQL, no
Kafka) with fake Monitors that answer SUP and play the Engine's supply.end on FIN. Every answer
code, framing faults, several exchanges on one connection, the bounds (idle, slow, too many).
The whole flow with real Engines over Kafka is in tests/e2e/test_mcsp_e2e.py."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import Iterator

import pytest

from ev_central.app import Central
from ev_central.mcsp_server import message_text
from ev_central.store import open_store
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.mcsp import EndOk, EndRequest, ErrorAnswer, StartOk, StartRequest
from ev_common.protocol import Auth, Fin, Reg, Sup, Supr
from ev_common.records import SupplyEnd
from tests.support.mcsp_station import Station
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.5, max_retries=3, write_timeout=1.0)
QUIET = 3600.0  # the fake Monitors send no heartbeats
UID = "16AC936B1692E73A"
OTHER = "04A224B2C3D4E5"


class FakeCP:
    """A Monitor and its Engine reduced to what MCSP needs: SUP is answered ``answer``; FIN ends
    the supply with ``kwh`` as the Engine's supply.end would (straight into Central's service)."""

    def __init__(self, central: Central, cp_id: str, price: str = "0.48") -> None:
        self.central, self.cp_id = central, cp_id
        self.answer = "OK"  # or a refusal reason, or None: never answer
        self.kwh = Decimal("2.75")
        self.fins: list[Fin] = []
        self.link = Link.connect(*central.address, FAST)
        self.link.send(Reg(cp_id, "Calle Mayor 1", Decimal(price)))
        self._auth = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"fake-{cp_id}", daemon=True)
        self._thread.start()
        assert self._auth.wait(5), "no AUTH"

    def _read(self) -> None:
        try:
            while not self.link.closed:
                message = self.link.recv(timeout=0.1)
                if isinstance(message, Auth):
                    self._auth.set()
                elif isinstance(message, Sup) and self.answer is not None:
                    ok = self.answer == "OK"
                    self.link.send(Supr(self.cp_id, message.session_id, "OK" if ok else "KO", "" if ok else self.answer))
                elif isinstance(message, Fin):
                    self.fins.append(message)
                    self.central.supplies.on_supply_end(SupplyEnd(self.cp_id, message.session_id, "FLAT3B", 5,
                                                                  self.kwh, Decimal(0), "unplugged"))
        except LinkError:
            pass

    def close(self) -> None:
        self.link.close("test over")
        self._thread.join(2)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def central(request, tmp_path) -> Iterator[Central]:
    url = request.getfixturevalue("fresh_mysql_url") if request.param == "mysql" else f"sqlite:///{tmp_path}/c.db"
    store = open_store(url)
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_tag(UID, "FLAT3B")
    store.add_account("FLAT4A", "Flat 4A", "apartment")
    store.add_tag(OTHER, "FLAT4A")
    store.add_account("GONE", "Moved out")
    store.add_tag("AABBCCDD", "GONE")
    store.set_account_active("GONE", False)
    store.add_tag("AABBCCDDEEFF00", "FLAT3B")
    store.set_tag_active("AABBCCDDEEFF00", False)
    started = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST, mcsp_port=0).start()
    started.supplies.tag_end_wait = 3.0
    yield started
    started.stop()


@pytest.fixture
def cps(central) -> Iterator[dict[str, FakeCP]]:
    made = {cp_id: FakeCP(central, cp_id) for cp_id in ("CP1", "CP2")}
    wait_until(lambda: all(central.network.get(c).state == "ACTIVADO" for c in made), 5, "both CPs ACTIVADO")
    yield made
    for cp in made.values():
        cp.close()


@pytest.fixture
def station(central) -> Iterator[Station]:
    opened = Station(central.mcsp_address)
    yield opened
    opened.close()


def test_start_then_end_on_one_connection_books_the_engines_figures(central, cps, station):
    started = station.ask(StartRequest("CP1", UID))
    assert isinstance(started, StartOk)
    row = central.book.active_for_cp("CP1")
    assert (row.session_id, row.tag_uid, row.account_id, row.driver_id) == (started.session_id, UID, "FLAT3B", "")
    ended = station.ask(EndRequest("CP1", started.session_id, UID))
    assert ended == EndOk(Decimal("2.7500"), Decimal("1.32"))
    assert cps["CP1"].fins == [Fin("CP1", started.session_id)]
    again = station.ask(EndRequest("CP1", started.session_id, UID))  # idempotent
    assert again == ended and len(cps["CP1"].fins) == 1
    stored = wait_until(lambda: (s := central.store.get_session(started.session_id)) and s.ended_at and s, 5,
                        "the session stored closed")
    assert (stored.status, stored.kwh, stored.amount_eur, stored.tag_uid, stored.account_id) == (
        "COMPLETED", Decimal("2.7500"), Decimal("1.32"), UID, "FLAT3B")
    statement = central.store.account_statement("FLAT3B")
    assert [s.session_id for s in statement.sessions] == [started.session_id]
    assert statement.total_kwh == ended.energy_kwh and statement.total_amount_eur == ended.amount_eur


def test_every_refusal_code(central, cps, station):
    def error(request) -> tuple[int, str]:
        answer = station.ask(request)
        assert isinstance(answer, ErrorAnswer), answer
        return answer.code, answer.message

    assert error(StartRequest("CP1", "01020304")) == (401, "Key is not registered")  # as drawn
    assert error(StartRequest("CP1", "AABBCCDDEEFF00")) == (403, "Key is disabled")
    assert error(StartRequest("CP1", "AABBCCDD")) == (403, "Account GONE is disabled")
    assert error(StartRequest("NOPE", UID)) == (404, "unknown CP NOPE")
    started = station.ask(StartRequest("CP1", UID))
    assert isinstance(started, StartOk)
    assert error(StartRequest("CP1", UID))[0] == 409  # START twice
    assert error(StartRequest("CP1", OTHER)) == (409, "CP1 is not available (SUMINISTRANDO)")  # busy
    assert error(EndRequest("CP1", started.session_id, OTHER)) == (403, f"Key is not the key of session "
                                                                        f"{started.session_id}")
    assert error(EndRequest("CP1", "nosuchsession", UID)) == (404, "No session nosuchsession of a tag at station CP1")
    assert error(EndRequest("CP2", started.session_id, UID))[0] == 404
    cps["CP2"].answer = "the CP is faulty"
    assert error(StartRequest("CP2", OTHER)) == (409, "CP2 refused: the CP is faulty")
    cps["CP2"].answer = None  # the CP does not answer in time
    code, message = error(StartRequest("CP2", OTHER))
    assert code == 503 and message.startswith("CP2 did not confirm")
    cps["CP1"].close()  # its Monitor gone: END cannot reach the CP
    wait_until(lambda: central.network.get("CP1").state == "DESCONECTADO", 5, "CP1 DESCONECTADO")
    code, message = error(EndRequest("CP1", started.session_id, UID))
    assert code == 503
    assert error(StartRequest("CP1", OTHER)) == (503, "CP1 is not available (DESCONECTADO)")
    assert isinstance(station.ask(StartRequest("CP1", UID)), ErrorAnswer)  # refusals keep the connection open


@pytest.mark.parametrize("raw, code", [
    (b"HELLO\r\n", 400),
    (b"MMETERING/1.0 START\r\nContent-Length: 3\r\nName: CP1\r\nKey: 16AC936B1692E73A\r\n", 400),
    (b"MMETERING/1.0 START\r\nContent-Length: 2\r\nName: CP1\r\nName: CP1\r\n", 400),
    (b"MMETERING/1.0 START\r\nContent-Length: 2\r\nName: CP1\r\nColour: red\r\n", 400),
    (b"MMETERING/1.0 START\r\nContent-Length: 2\r\nName: CP\xc3\xa9\r\nKey: 16AC936B1692E73A\r\n", 400),
    (b"MMETERING/1.0 START\r\nContent-Length: 2\r\nName: CP1\r\nKey: XYZ\r\n", 400),
    (b"A" * 300, 400),
    (b"MMETERING/2.0 START\r\nContent-Length: 2\r\nName: CP1\r\nKey: 16AC936B1692E73A\r\n", 505),
])
def test_malformed_requests_are_answered_then_closed_and_others_go_on(central, cps, station, raw, code):
    station.send(raw)
    answer = station.answer()
    assert isinstance(answer, ErrorAnswer) and answer.code == code, answer
    assert station.closed_by_server()
    other = Station(central.mcsp_address)  # the server serves the next station as before
    assert isinstance(other.ask(StartRequest("CP1", "01020304")), ErrorAnswer)
    other.close()


def test_pipelined_requests_get_one_answer_each_in_order(central, cps, station):
    station.send(StartRequest("CP9", UID).to_bytes() + b"\r\n" + StartRequest("CP1", "01020304").to_bytes())
    first, second = station.answer(), station.answer()
    assert (first.code, second.code) == (404, 401)


def test_a_slow_request_is_refused_and_an_idle_connection_closed(central, cps):
    central.mcsp.request_timeout = 0.5
    central.mcsp.idle_timeout = 0.5
    slow = Station(central.mcsp_address)
    slow.send(b"MMETERING/1.0 START\r\nContent-Length: 2\r\n")  # and nothing more
    answer = slow.answer(5)
    assert isinstance(answer, ErrorAnswer) and answer.code == 400 and "not complete within 0.5 s" in answer.message
    assert slow.closed_by_server()
    idle = Station(central.mcsp_address)
    assert idle.closed_by_server(5)  # nothing sent: closed without a word
    served = Station(central.mcsp_address)
    assert isinstance(served.ask(StartRequest("CP1", "01020304")), ErrorAnswer)
    for one in (slow, idle, served):
        one.close()


def test_one_connection_too_many_is_answered_503(central, cps):
    central.mcsp.max_connections = 2
    held = [Station(central.mcsp_address) for _ in range(2)]
    wait_until(lambda: central.mcsp.connections == 2, 5, "two connections served")
    extra = Station(central.mcsp_address)
    answer = extra.answer(5)
    assert isinstance(answer, ErrorAnswer) and answer.code == 503
    assert extra.closed_by_server()
    assert isinstance(held[0].ask(StartRequest("CP1", "01020304")), ErrorAnswer)  # the others are served
    for one in (*held, extra):
        one.close()


def test_errors_are_in_centrals_messages(central, cps, station, caplog):
    caplog.set_level(logging.INFO, logger="ev_central")
    station.ask(StartRequest("CP1", "01020304"))
    assert any("MCSP START at CP1" in r.getMessage() and "ERROR 401 Key is not registered" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert not any("01020304" in r.getMessage() for r in caplog.records)  # keys are never logged whole


def test_message_text_is_printable_ascii_of_at_most_200():
    assert message_text("CP1 is not available (Avería ñ)") == "CP1 is not available (Aver?a ?)"
    assert len(message_text("x" * 500)) == 200 and message_text("x" * 500).endswith("...")
    assert message_text("  ") == "Refused"
