"""A storm's registrations served together (``MonitorServer.batch``, the register lane's turn)
and their changes handed to the core at once (``SupplyService.changed_many``): the same
answers and rows as one by one, one lock, and one log line per batch instead of one per CP."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ev_central.auth import Admitted, OpenDoor, Refused
from ev_central.core.network import ChargingNetwork
from ev_central.core.states import State
from ev_central.server import LOUD_BATCH, MonitorServer
from ev_central.store.base import CPRow
from ev_common.protocol import Auth, Err, Hb, Key, Reg, Stop


class FakeLink:
    def __init__(self, number: int) -> None:
        self.peer = f"10.0.0.{number}:5000"
        self.closed_for: str | None = None

    def close(self, reason: str = "") -> None:
        self.closed_for = reason


class Doorman(OpenDoor):
    """Open mode, except that CP "BAD" is refused and CP "CRASH" cannot be checked."""

    def authenticate(self, reg: Reg, peer: str) -> Admitted | Refused:
        if reg.cp_id == "BAD":
            return Refused("unknown CP")
        if reg.cp_id == "CRASH":
            raise RuntimeError("the credential store is broken")
        return super().authenticate(reg, peer)


@pytest.fixture
def server():
    changes, batches = [], []
    monitors = MonitorServer(ChargingNetwork(), changes.append, "127.0.0.1", 0, authenticator=Doorman())
    monitors.on_changes = batches.append
    monitors.changes, monitors.batches = changes, batches
    yield monitors
    monitors._server._listener.close()


def sessions(server: MonitorServer, count: int) -> list:
    return [server.opened(FakeLink(number)) for number in range(count)]


def reg(cp_id: str) -> Reg:
    return Reg(cp_id, f"Street {cp_id}", Decimal("0.40"))


def test_a_batch_answers_each_session_as_one_by_one(server) -> None:
    server.network.load([CPRow("CP2", "b", Decimal("0.5"), "DESCONECTADO", True, datetime.now(timezone.utc))])
    s = sessions(server, 6)
    items = [(s[0], reg("CP1")), (s[1], reg("CP2")), (s[2], reg("BAD")), (s[3], Hb("CP9")), (s[4], reg("CRASH")),
             (s[5], reg("CP1"))]
    answers = server.batch(items)

    assert answers[0] == [Auth.accepted(), Key("CP1", 0)]
    assert answers[1] == [Auth.accepted(), Key("CP2", 0), Stop("CP2")]  # stopped: it must know at once
    assert answers[2] == [Auth.refused("unknown CP")]
    assert answers[3] == [Err("NOT_REGISTERED", "send REG before HB")]
    assert answers[4] is False  # its session ends; the others are served
    assert answers[5] == [Auth.accepted(), Key("CP1", 0)]
    # CP1 registered twice in one batch: the later session owns it, the earlier is closed
    assert server.network.owner("CP1") is s[5] and s[0].link.closed_for is not None
    assert [s_.cp_id for s_ in s] == ["CP1", "CP2", None, None, None, "CP1"]
    (batch,) = server.batches  # every change at once, in order, none one by one
    assert [(c.cp_id, c.new) for c in batch] == [("CP1", State.ACTIVADO), ("CP2", State.PARADO),
                                                 ("CP1", State.ACTIVADO)]
    assert server.changes == []
    assert server._unregistered == {s[3]}  # not registering yet: the registration deadline still watches it


def test_a_small_batch_logs_each_cp_and_a_storm_one_line(server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ev_central.server")
    few = sessions(server, 2)
    server.batch([(few[0], reg("CP1")), (few[1], reg("CP2"))])
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("REG received" in line for line in lines) == 2 and sum("AUTH#OK sent to CP" in line
                                                                    for line in lines) == 2
    caplog.clear()
    many = sessions(server, LOUD_BATCH + 4)
    server.batch([(session, reg(f"S{i:02d}")) for i, session in enumerate(many)])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [f"AUTH#OK sent to {LOUD_BATCH + 4} CPs registering at once: S00, S01, S02, S03, S04 "
                     f"and {LOUD_BATCH - 1} more"]


def test_a_monitor_acknowledging_auth_is_a_sign_of_life() -> None:
    """The silence rule counts from the Monitor's ACK of AUTH (in a storm AUTH may wait), not
    only from when Central decided the registration."""
    from tests.support.clock import FakeClock

    clock = FakeClock(1000.0)
    network = ChargingNetwork(clock=clock, silence_timeout=2.5)
    monitors = MonitorServer(network, lambda change: None, "127.0.0.1", 0)
    try:
        session = monitors.opened(FakeLink(1))
        monitors.batch([(session, reg("CP1")), (monitors.opened(FakeLink(2)), reg("CP2"))])
        clock.advance(2.0)
        monitors.acked(session)  # CP1's Monitor acknowledged its AUTH just now
        clock.advance(1.0)
        assert [change.cp_id for _, change in network.expire_silent()] == ["CP2"]
        monitors.acked(monitors.opened(FakeLink(3)))  # an unregistered session: nothing to refresh
    finally:
        monitors._server._listener.close()
