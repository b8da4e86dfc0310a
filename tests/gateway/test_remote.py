"""The core's side of the gateways (``RemoteGateways``, ``CPRouter``) and a gateway's table
(``GatewayNetwork``), in one process: a real ``ChargingNetwork``, records handed over as the
consumer would, commands caught where the producer would take them."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from ev_central.core.network import ChargingNetwork
from ev_central.gateway.edge import GatewayNetwork
from ev_central.gateway.wire import Beacon, Command, CPEvent, RosterEntry, decode
from ev_central.remote import CPRouter, RemoteGateways, RemoteSession
from ev_central.server import CPUnreachable
from ev_common.bus import Topics
from ev_common.protocol import Can, Sst, Stop, Sup, Supr
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

INC1, INC2 = "1" * 16, "2" * 16


class Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, object]] = []

    def publish(self, topic, key, record, on_delivery=None, encode=None):
        self.sent.append((topic, key, decode(encode(record))))  # as it would travel
        if on_delivery is not None:
            on_delivery(True)

    def commands(self, kind=None):
        return [r for _, _, r in self.sent if isinstance(r, Command) and (kind is None or r.kind == kind)]


class Supplies:
    """What RemoteGateways calls of SupplyService."""

    def __init__(self) -> None:
        self.changes = []
        self.reports = []

    def changed(self, change) -> None:
        if change is not None:
            self.changes.append(change)

    def on_supply_state(self, cp_id, report):
        self.reports.append((cp_id, report))
        return [Can(cp_id, report.session_id, "unknown")]


@pytest.fixture
def core():
    clock = FakeClock()
    network = ChargingNetwork(clock=clock)
    publisher = Publisher()
    remote = RemoteGateways(network, publisher, "unused:9092", Topics("p-"), timeout=6.0, clock=clock)
    remote.supplies = Supplies()
    return network, remote, publisher, clock


def registered(cp_id, gateway="G1", inc=INC1, session=1, since=1000, **fields):
    return CPEvent("cp.registered", cp_id, gateway, inc, session, location="Here", price_eur_kwh=Decimal("0.5"),
                   since_ms=since, **fields)


def beacon(gateway="G1", inc=INC1, started=1, roster=None, **fields):
    if roster is None:
        return Beacon(gateway, inc, started, 1, 0, 1000, **fields)
    return Beacon(gateway, inc, started, 1, len(roster), 1000, roster_id=1, part=1, parts=1, roster=tuple(roster),
                  **fields)


def state(network, cp_id):
    row = network.get(cp_id)
    return row.state if row else None


def test_a_cp_registered_at_a_gateway_is_served_like_a_local_one(core):
    network, remote, publisher, clock = core
    remote.on_record("CP001", registered("CP001"))
    assert state(network, "CP001") == "ACTIVADO" and isinstance(network.owner("CP001"), RemoteSession)
    remote.on_record("CP001", CPEvent("cp.fault", "CP001", "G1", INC1, 1, reason="Engine KO"))
    assert state(network, "CP001") == "AVERIADO"
    remote.on_record("CP001", CPEvent("cp.recovered", "CP001", "G1", INC1, 1))
    assert state(network, "CP001") == "ACTIVADO"
    clock.advance(60)  # the gateway watches its silence, not the core
    assert network.expire_silent() == []
    remote.on_record("CP001", CPEvent("cp.supply", "CP001", "G1", INC1, 1, message=Sst("CP001", "SUPPLYING", "S9", 2,
                                                                                         Decimal(1))))
    [can] = publisher.commands("cp.command")
    assert isinstance(can.message, Can) and (can.gateway, can.session) == ("G1", 1)
    remote.on_record("CP001", CPEvent("cp.lost", "CP001", "G1", INC1, 1, reason="Monitor connection lost"))
    assert state(network, "CP001") == "DESCONECTADO" and network.owner("CP001") is None


def test_an_older_registration_never_replaces_a_newer_one(core):
    network, remote, publisher, _ = core
    remote.on_record("CP001", registered("CP001", "G2", INC2, session=5, since=2000))
    remote.on_record("CP001", registered("CP001", "G1", INC1, session=9, since=1000))  # made before, read after
    assert network.owner("CP001").gateway == "G2"
    remote.on_record("CP001", registered("CP001", "G2", INC2, session=4, since=3000))  # an earlier session of G2
    assert network.owner("CP001").number == 5
    remote.on_record("CP001", CPEvent("cp.lost", "CP001", "G1", INC1, 9, reason="gone"))  # not the owner: no effect
    assert state(network, "CP001") == "ACTIVADO"
    remote.on_record("CP001", registered("CP001", "G1", INC1, session=10, since=4000))  # the Monitor moved
    assert network.owner("CP001").gateway == "G1"
    [drop] = publisher.commands("cp.drop")  # the older session's gateway closes it
    assert (drop.gateway, drop.cp_id, drop.session) == ("G2", "CP001", 5)


def test_a_roster_brings_cps_back_but_not_a_session_known_ended(core):
    network, remote, publisher, _ = core
    network.register("OLD", "Here", Decimal("0.5"), object())  # some local CP (not the gateway's business)
    remote.on_record("CP002", registered("CP002", session=2))
    remote.on_record("CP002", CPEvent("cp.lost", "CP002", "G1", INC1, 2, reason="gone"))
    roster = [RosterEntry("CP001", 1, 1000, "Here", Decimal("0.5"), "Engine KO"),
              RosterEntry("CP002", 2, 1000, "Here", Decimal("0.5"))]  # made before CP002's end, read after
    remote.on_record("G1", beacon(roster=roster))
    assert state(network, "CP001") == "AVERIADO" and network.owner("CP001").number == 1
    assert state(network, "CP002") == "DESCONECTADO"
    assert publisher.commands("roster.request") == []  # the beacon carried one


def test_the_core_asks_a_new_gateway_for_its_roster_once(core):
    _, remote, publisher, _ = core
    for _ in range(3):
        remote.on_record("G1", beacon())
    [request] = publisher.commands("roster.request")
    assert (request.gateway, request.incarnation) == ("G1", INC1)


def test_a_silent_gateway_is_dead_and_only_its_cps_go(core):
    network, remote, publisher, clock = core
    remote.on_record("G1", beacon())
    remote.on_record("G2", beacon("G2", INC2))
    remote.on_record("CP001", registered("CP001"))
    remote.on_record("CP002", registered("CP002", session=2))
    remote.on_record("CP002", registered("CP002", "G2", INC2, session=1, since=5000))  # moved to G2
    clock.advance(5)
    remote.on_record("G2", beacon("G2", INC2))
    remote.sweep()
    assert state(network, "CP001") == "ACTIVADO"
    clock.advance(2)
    remote.sweep()
    assert state(network, "CP001") == "DESCONECTADO" and "gateway G1 silent" in remote.supplies.changes[-1].cause
    assert state(network, "CP002") == "ACTIVADO"
    remote.on_record("G1", beacon())  # back (the same run): asked for its roster again
    assert len(publisher.commands("roster.request")) == 3


def test_a_new_run_of_a_gateway_ends_the_cps_of_the_old_one(core):
    network, remote, _, _ = core
    remote.on_record("G1", beacon(started=1))
    remote.on_record("CP001", registered("CP001"))
    remote.on_record("G1", beacon(inc=INC2, started=2))
    assert state(network, "CP001") == "DESCONECTADO"
    remote.on_record("CP001", CPEvent("cp.fault", "CP001", "G1", INC1, 1, reason="late word of the old run"))
    remote.on_record("CP001", registered("CP001", inc=INC1, session=3, since=9999))
    assert network.owner("CP001") is None  # the old run is over


def test_two_live_gateways_with_one_id_are_said_once_and_a_dead_runs_late_beacon_is_not(core, caplog):
    from datetime import datetime, timezone

    def at(ms):
        return datetime.fromtimestamp(ms / 1000, timezone.utc)

    network, remote, _, _ = core
    started_old = int(datetime.now(timezone.utc).timestamp() * 1000)  # (the core skips what came before it)
    started_new = started_old + 100_000
    remote.on_record("G1", beacon(started=started_old, ts=at(started_old + 1000), address="10.0.0.1:5100"))
    remote.on_record("CP001", registered("CP001"))
    remote.on_record("G1", beacon(inc=INC2, started=started_new, ts=at(started_new + 500), address="10.0.0.2:5100"))
    remote.on_record("G1", beacon(started=started_old, ts=at(started_new - 200)))  # sent before: a dead run's
    remote.on_record("G1", beacon(started=started_old, ts=at(started_new + 5000)))  # within the clocks' margin
    assert "two gateways run with the id" not in caplog.text
    for later in (11_000, 12_000, 60_000):  # still beaconing long after: alive
        remote.on_record("G1", beacon(started=started_old, ts=at(started_new + later), address="10.0.0.1:5100"))
    said = [r for r in caplog.records if "two gateways run with the id G1" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"
    assert "10.0.0.1:5100" in said[0].getMessage() and "10.0.0.2:5100" in said[0].getMessage()
    assert "--id" in said[0].getMessage()
    assert remote._gateways["G1"].incarnation == INC2  # the core still follows the newer run
    assert state(network, "CP001") == "DESCONECTADO"


def test_a_leaving_gateway_gives_its_monitors_a_grace_to_move(core):
    network, remote, _, clock = core
    remote.on_record("G1", beacon())
    remote.on_record("CP001", registered("CP001"))
    remote.on_record("CP002", registered("CP002", session=2))
    remote.on_record("G1", beacon(leaving=True))
    remote.on_record("CP001", registered("CP001", "G2", INC2, since=5000))
    clock.advance(3.5)
    remote.sweep()
    assert (state(network, "CP001"), state(network, "CP002")) == ("ACTIVADO", "DESCONECTADO")


def test_records_made_before_the_core_started_are_left_to_the_rosters(core):
    network, remote, _, _ = core
    from datetime import datetime, timedelta, timezone

    old = datetime.now(timezone.utc) - timedelta(seconds=30)
    remote.on_record("CP001", CPEvent("cp.registered", "CP001", "G1", INC1, 1, location="Here",
                                      price_eur_kwh=Decimal("0.5"), ts=old))
    assert network.get("CP001") is None and remote.skipped_old == 1


def test_ask_through_a_gateway_and_its_answer(core):
    network, remote, publisher, _ = core
    remote.on_record("CP001", registered("CP001", session=4))
    router = CPRouter(network, local=None, remote=remote)
    question = Sup("CP001", "S1", "D001", Decimal("0.5"))
    answers = []
    asking = threading.Thread(target=lambda: answers.append(router.ask("CP001", question, 5)))
    asking.start()
    wait_until(lambda: publisher.commands("cp.command"), 5, "the SUP command")
    [command] = publisher.commands("cp.command")
    assert (command.gateway, command.incarnation, command.session, command.message) == ("G1", INC1, 4, question)
    remote.on_record("CP001", CPEvent("cp.answer", "CP001", "G1", INC1, 4, ask_id=command.ask_id,
                                      message=Supr("CP001", "S1", "OK", "")))
    asking.join(5)
    assert answers and answers[0].ok
    assert router.command("CP001", Stop("CP001"))
    assert publisher.commands("cp.command")[-1].message == Stop("CP001")


def test_an_unanswered_ask_is_unreachable_and_a_late_ok_is_cancelled(core):
    network, remote, publisher, _ = core
    remote.on_record("CP001", registered("CP001"))
    with pytest.raises(CPUnreachable, match="did not answer"):
        remote.ask(network.owner("CP001"), Sup("CP001", "S1", "D001", Decimal("0.5")), 0.2)
    [command] = publisher.commands("cp.command")
    remote.on_record("CP001", CPEvent("cp.answer", "CP001", "G1", INC1, 1, ask_id=command.ask_id,
                                      message=Supr("CP001", "S1", "OK", "")))
    can = publisher.commands("cp.command")[-1]
    assert isinstance(can.message, Can) and can.message.session_id == "S1"


def test_an_undelivered_question_fails_at_once(core):
    network, remote, publisher, _ = core
    remote.on_record("CP001", registered("CP001"))
    failure = []

    def ask():
        try:
            remote.ask(network.owner("CP001"), Sup("CP001", "S1", "D001", Decimal("0.5")), 30)
        except CPUnreachable as exc:
            failure.append(str(exc))

    asking = threading.Thread(target=ask)
    asking.start()
    wait_until(lambda: publisher.commands("cp.command"), 5, "the SUP command")
    [command] = publisher.commands("cp.command")
    remote.on_record("CP001", CPEvent("cp.undelivered", "CP001", "G1", INC1, 1, ask_id=command.ask_id,
                                      reason="CP001 has no such session here"))
    asking.join(5)
    assert failure and "no such session" in failure[0]


def test_a_stopped_cp_is_told_so_after_registering_at_a_gateway(core):
    network, remote, publisher, _ = core
    remote.on_record("CP001", registered("CP001"))
    network.apply("CP001", __import__("ev_central.core.states", fromlist=["Event"]).Event.STOP, "operator")
    remote.on_record("CP001", registered("CP001", session=2, since=2000))
    assert state(network, "CP001") == "PARADO"
    assert publisher.commands("cp.command")[-1].message == Stop("CP001")


# -- the gateway's own table -------------------------------------------------------------------------


class Session:
    def __init__(self, number):
        self.number = number
        self.link = type("Link", (), {"peer": f"10.0.0.{number}:5000"})()


def test_the_gateway_network_turns_what_monitorserver_says_into_events():
    clock = FakeClock()
    events = []
    table = GatewayNetwork(events.append, "G1", INC1, clock=clock, silence_timeout=2.5)
    one, two = Session(1), Session(2)
    change, replaced = table.register("CP001", "Here", Decimal("0.5"), one)
    assert replaced is None and not change.stopped and events[-1].kind == "cp.registered"
    assert events[-1].peer == "10.0.0.1:5000" and events[-1].session == 1
    assert table.heartbeat("CP001", one) and not table.heartbeat("CP001", two)
    table.engine_fault("CP001", one, "KO")
    assert [e.kind for e in events] == ["cp.registered", "cp.fault"]
    assert table.roster()[0].fault == "KO"
    _, replaced = table.register("CP001", "Here", Decimal("0.5"), two)
    assert replaced is one and table.session_ended("CP001", one, "closed") is None  # the old one says nothing
    clock.advance(3)
    [(session, change)] = table.expire_silent()
    assert session is two and events[-1].kind == "cp.lost" and "no sign of life" in events[-1].reason
    assert table.owner("CP001") is None and table.roster() == []
