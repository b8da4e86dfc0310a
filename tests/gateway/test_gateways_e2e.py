"""Gateways with real processes: a core (``EV_Central --gateways``), gateways
(``EV_Central gateway``) sharing one port with SO_REUSEPORT, real CPs (Engine + Monitor), a
driver, and a fleet of simulated Monitors, on the real broker and MySQL. Gateways and the core
are killed (SIGKILL) mid-run: the CPs come back without losing a supply or a ticket."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.gateway.conftest import GATEWAY_TIMEOUT
from benchmarks.monitor_fleet import MonitorFleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

IN_SERVICE = {"ACTIVADO", "SUMINISTRANDO"}


def holder(system, cp_id: str) -> str:
    """The id of the gateway whose log shows ``cp_id``'s registration."""
    pattern = re.compile(rf"REG received from \S+: REG#{cp_id}#")
    found = [gid for gid, program in system.gateways.items() if pattern.search(program.output())]
    assert len(found) == 1, f"{cp_id} registered at {found}"
    return found[0]


@contextmanager
def simulated_monitors(system, count: int) -> Iterator[tuple[list[str], MonitorFleet]]:
    """``count`` of the load generator's Monitors (the real wire protocol, a sign of life every
    second) at the gateways' shared port, 200 connecting a second, each one lost connecting again
    after a second; once they and CP001 are ACTIVADO at the core. Stopped at the end."""
    sims = [f"SIM{i:04d}" for i in range(count)]
    fleet = MonitorFleet("127.0.0.1", system.gateway_port, sims, set(), storm=False, connect_rate=200,
                         faults_per_second=0, fault_seconds=0).start()
    try:
        wait_until(lambda: fleet.registered_count() == len(sims), 30, "every simulated Monitor to register")
        system.wait_states(sims + ["CP001"], {"ACTIVADO"}, 20, "every CP ACTIVADO at the core")
        yield sims, fleet
    finally:
        fleet.stop()


def supply_at_cp001(system):
    """Driver D001 charging at CP001: its process, once the CP took the supply."""
    driver = system.start_driver("D001", "--cp", "CP001", "--supply-timeout", "120")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    return driver


def test_gateway_killed_its_monitors_come_back_through_the_other(gateway_system):
    system = gateway_system
    system.start_gateway("G1")
    system.start_gateway("G2")
    system.start_cp_at_gateways("CP001", "--auto", "--auto-seconds", "14")
    with simulated_monitors(system, 240) as (sims, fleet):
        driver = supply_at_cp001(system)
        wait_until(lambda: [s for s in system.sessions(driver_id="D001") if s.kwh > 0], 15, "telemetry at the core")

        victim = holder(system, "CP001")
        survivor = "G2" if victim == "G1" else "G1"
        monitor_mark = system.cps["CP001"].monitor.mark()
        core_mark = system.central.mark()
        system.gateways[victim].kill()

        # the Monitors of the dead gateway register again, through the one left on the port
        system.cps["CP001"].monitor.wait_for_output(r"Registered at Central as CP001", after=monitor_mark,
                                                    timeout=15)
        wait_until(lambda: fleet.registered_count() == len(sims), 20, "every simulated Monitor registered again")
        moved = [cp for cp in sims if fleet.registrations[cp] > 1]
        assert len(moved) >= 20, f"only {len(moved)} simulated Monitors were on the killed gateway {victim}"
        # the core declares the silent gateway dead; no CP it held is left DESCONECTADO
        system.central.wait_for_output(rf"gateway {victim} is dead", after=core_mark,
                                       timeout=float(GATEWAY_TIMEOUT) + 10)
        system.wait_states(sims, {"ACTIVADO"}, 15, "every simulated CP ACTIVADO after the gateway died")
        system.wait_states(["CP001"], IN_SERVICE, 15, "CP001 in service after the gateway died")
        assert re.search(r"REG received from \S+: REG#CP001#", system.gateways[survivor].output())

        # the supply went on through the move: one ticket, its energy counted
        assert driver.wait_exit(60) == 0, driver.output()[-3000:]
        assert driver.output().count("TICKET of your supply at CP001") == 1, driver.output()[-3000:]
        [session] = [s for s in system.sessions(driver_id="D001") if s.ended_at is not None]
        assert session.status == "COMPLETED" and session.kwh > 0, session
        system.wait_states(["CP001"], {"ACTIVADO"}, 10, "CP001 free after its supply")


def test_core_restarted_gateways_keep_their_sessions(gateway_system):
    system = gateway_system
    system.start_gateway("G1")
    cp = system.start_cp_at_gateways("CP001", "--auto", "--auto-seconds", "10")
    with simulated_monitors(system, 100) as (sims, fleet):
        driver = supply_at_cp001(system)
        monitor_mark = cp.monitor.mark()

        system.central.kill()
        gateway_mark, core_mark = system.gateways["G1"].mark(), system.central.mark()
        system.start_core()  # the same port, database and topics
        # (a killed core's Kafka consumers stay in their groups for up to 6 s: the new one waits that long)
        system.central.wait_for_output(r"Central (system status OK|running)", after=core_mark, timeout=30)
        system.central.wait_for_output(r"gateway G1 \(run [0-9a-f]+\) is serving Monitors", after=core_mark,
                                       timeout=20)
        # every CP back in service from the gateway's roster, none of its Monitors registering again
        system.wait_states(sims, {"ACTIVADO"}, 20, "every simulated CP ACTIVADO after the core's restart")
        system.wait_states(["CP001"], IN_SERVICE, 20, "CP001 in service after the core's restart")
        assert set(fleet.registrations.values()) == {1} and fleet.figures.closed_by_central == 0
        assert "Registered at Central" not in cp.monitor.output()[monitor_mark:]
        assert "Cannot connect" not in cp.monitor.output()[monitor_mark:]
        assert "the core asks for the roster" in system.gateways["G1"].output()[gateway_mark:]

        # the supply went on at the CP while the core was away: its ticket, once
        assert driver.wait_exit(60) == 0, driver.output()[-3000:]
        assert driver.output().count("TICKET of your supply at CP001") == 1, driver.output()[-3000:]
        [session] = [s for s in system.sessions(driver_id="D001") if s.ended_at is not None]
        assert session.status == "COMPLETED" and session.kwh > 0, session

        # and the core commands the CPs through the gateway again: a new supply, stop and resume
        system.wait_states(["CP001"], {"ACTIVADO"}, 10, "CP001 free after its supply")
        engine_mark = cp.engine.mark()
        system.operator("stop CP001")
        cp.engine.wait_for_output(r"Central STOPPED this CP", after=engine_mark, timeout=10)
        system.wait_states(["CP001"], {"PARADO"}, 10, "CP001 PARADO")
        system.operator("resume CP001")
        system.wait_states(["CP001"], {"ACTIVADO"}, 10, "CP001 ACTIVADO again")


def test_secure_gateways_authenticate_and_a_cp_keeps_its_key_when_it_moves(secure_gateway_system):
    """TLS and credentials at the gateways, keys from the core's database: the CP's sealed records
    open at the core, also after its Monitor moved to the other gateway (the same key)."""
    system = secure_gateway_system
    system.start_gateway("G1")
    system.start_gateway("G2")
    cp = system.start_cp_at_gateways("CP001", "--auto", "--auto-seconds", "12")
    victim = holder(system, "CP001")
    survivor = "G2" if victim == "G1" else "G1"
    driver = supply_at_cp001(system)
    wait_until(lambda: [s for s in system.sessions(driver_id="D001") if s.kwh > 0], 15, "sealed telemetry opened")
    mark = cp.monitor.mark()
    system.gateways[victim].kill()
    cp.monitor.wait_for_output(r"Registered at Central as CP001", after=mark, timeout=15)
    # its credential and the resumption ticket the other gateway gave it (the same master key)
    assert re.search(r"REG received from \S+: REG#CP001#.*#\*\*\*#\*\*\*", system.gateways[survivor].output())
    wait_until(lambda: [row.entry.details for row in system.store.list_audit(action="auth")
                        if row.entry.actor == "CP001"][1:] == ["authenticated with its resumption ticket; key v1"],
               15, "the second authentication audited, by its ticket")
    assert driver.wait_exit(60) == 0, driver.output()[-3000:]
    assert driver.output().count("TICKET of your supply at CP001") == 1, driver.output()[-3000:]
    [session] = [s for s in system.sessions(driver_id="D001") if s.ended_at is not None]
    assert session.status == "COMPLETED" and session.kwh > 0, session
    assert "not authentic" not in system.central.output() and "unknown key" not in system.central.output()
    keys = [row for row in system.store.load_cp_keys() if row.cp_id == "CP001"]
    assert [row.version for row in keys] == [1]  # one key, kept across the move
