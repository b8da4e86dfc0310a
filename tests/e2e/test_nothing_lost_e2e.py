"""The energy on a ticket is the energy the Engine delivered, whatever happened to the link
between a Monitor and Central meanwhile; a clean stop of Central is not a failure of the CPs.
Real processes, the real broker and real MySQL."""

from __future__ import annotations

import signal
from decimal import ROUND_HALF_UP, Decimal

import pytest

from tests.support.proxy import CuttableProxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ENGINE_END = r"supply of driver D001 ended \((?P<reason>[^)]*)\): (?P<kwh>[0-9.]+) kWh"


@pytest.fixture
def link_proxy(system):
    """A proxy between the Monitors and Central that the test can cut."""
    proxy = CuttableProxy("127.0.0.1", system.central_port)
    yield proxy
    proxy.close()


def ended(system, driver_id="D001"):
    return [s for s in system.sessions(driver_id=driver_id) if s.status in ("COMPLETED", "INTERRUPTED")]


def engine_final_kwh(cp, after=0) -> Decimal:
    match = cp.engine.wait_for_output(ENGINE_END, timeout=30, after=after)
    return Decimal(match["kwh"])


def test_a_link_cut_longer_than_the_grace_gets_a_corrected_ticket_with_the_engines_figures(system, link_proxy):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "30", central_port=link_proxy.port)
    driver = system.start_driver("D001", "--cp", "CP001", "--supply-timeout", "120")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    wait_until(lambda: [s for s in system.sessions(driver_id="D001") if s.kwh > 0], 10, "telemetry at Central")
    link_proxy.cut()  # the Monitor and its Engine go on; Central loses the Monitor
    system.wait_cp_state("CP001", "DESCONECTADO", 3)
    wait_until(lambda: ended(system), 15, "Central to close the session after --end-grace")
    [first] = ended(system)
    assert (first.status, first.engine_final) == ("INTERRUPTED", False)
    assert driver.wait_exit(30) == 1  # its ticket: INTERRUPTED (Monitor lost)
    link_proxy.restore()  # the Monitor registers again and reports the supply it still holds
    kwh = engine_final_kwh(cp)  # Central cancelled it (CAN): the Engine ended it with its figures
    wait_until(lambda: ended(system)[0].corrected, 30, "the corrected session row")
    [row] = ended(system)
    assert row.engine_final and row.kwh.quantize(Decimal("0.001"), ROUND_HALF_UP) == kwh > first.kwh
    assert row.amount_eur == (row.kwh * row.price_eur_kwh).quantize(Decimal("0.01"))
    wait_until(lambda: ended(system)[0].ticket_sent, 20, "the corrected ticket delivered")
    system.central.wait_for_output(r"corrected ticket", timeout=5)
    back = system.start_driver("D001", name="driver-D001-back")  # the app shows the corrected ticket
    back.wait_for_output(r"CORRECTED TICKET", timeout=40)
    assert f"{kwh:.3f}" in back.output()


def test_a_short_link_cut_keeps_the_supply_and_bills_what_the_engine_delivered(system, link_proxy):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "10", central_port=link_proxy.port)
    driver = system.start_driver("D001", "--cp", "CP001", "--supply-timeout", "120")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    link_proxy.cut()
    system.wait_cp_state("CP001", "DESCONECTADO", 3)
    link_proxy.restore()  # back before --end-grace: Central re-adopts the supply
    mark = system.central.mark()
    system.central.wait_for_output(r"goes on with supply", timeout=10, after=mark)
    system.wait_cp_state("CP001", "SUMINISTRANDO", 5)
    kwh = engine_final_kwh(cp)
    assert driver.wait_exit(60) == 0, driver.output()
    assert driver.output().count("TICKET of your supply at CP001") == 1
    [row] = ended(system)
    assert row.status == "COMPLETED" and row.engine_final and not row.corrected
    assert row.kwh.quantize(Decimal("0.001"), ROUND_HALF_UP) == kwh


def test_a_clean_stop_of_central_alerts_no_driver_and_loses_nothing(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "8")
    driver = system.start_driver("D001", "--cp", "CP001", "--supply-timeout", "120")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    assert system.central.stop(signal.SIGTERM) == 0  # docker stop, systemctl stop
    kwh = engine_final_kwh(cp)  # the CP finished the supply meanwhile
    system.start_central()
    system.wait_cp_state("CP001", "ACTIVADO", 15)
    assert driver.wait_exit(60) == 0, driver.output()
    assert "ALERT" not in driver.output() and "DESCONECTADO" not in driver.output(), driver.output()
    assert driver.output().count("TICKET of your supply at CP001") == 1
    [row] = ended(system)
    assert row.status == "COMPLETED" and row.kwh.quantize(Decimal("0.001"), ROUND_HALF_UP) == kwh and row.ticket_sent
