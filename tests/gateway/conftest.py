"""What the gateway tests share: a core (``EV_Central --gateways``) on a new MySQL database,
its gateways (``EV_Central gateway``) started and killed as processes, on the real broker."""

from __future__ import annotations

import pytest

from tests.support.processes import Program
from tests.support.services import free_port, port_open
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

GATEWAY_TIMEOUT = "4"  # s: a killed gateway's CPs go DESCONECTADO after this


class GatewaySystem(EVSystem):
    """An ``EVSystem`` whose Central serves gateways; ``gateway_port`` is the port its gateways
    share (SO_REUSEPORT), where the CPs' Monitors connect."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gateway_port = free_port()
        self.gateways: dict[str, Program] = {}

    def start_core(self) -> Program:
        return self.start_central("--gateways", "--gateway-timeout", GATEWAY_TIMEOUT)

    def start_gateway(self, gateway_id: str, *extra: str) -> Program:
        if self.secure:  # Central's certificate, master key and database
            data = self.central_data
            extra = ("--secure", "--tls-cert", str(data / "ev_central.crt"), "--tls-key", str(data / "ev_central.key"),
                     "--master-key", str(data / "ev_central.master.key"), "--db", self.db_url, *extra)
        program = self.runner.start(f"gateway-{gateway_id}", [
            "gateway", "--port", str(self.gateway_port), "--host", "127.0.0.1", "--reuse-port",
            "--kafka", self.kafka, "--id", gateway_id, "--topic-prefix", self.prefix, *extra],
            script="ev_central/EV_Central.py")
        program.wait_for_output(r"gateway \S+ running", timeout=20)
        assert port_open("127.0.0.1", self.gateway_port)
        self.gateways[gateway_id] = program
        return program

    def start_cp_at_gateways(self, cp_id: str, *engine_args: str, **kwargs):
        return self.start_cp(cp_id, *engine_args, central_port=self.gateway_port, **kwargs)

    def states(self) -> dict[str, str]:
        return {row.cp_id: row.state for row in self.store.load_charging_points()}

    def wait_states(self, cp_ids, allowed: set[str], timeout: float, what: str) -> None:
        def done():
            states = self.states()
            return all(states.get(cp_id) in allowed for cp_id in cp_ids)

        try:
            wait_until(done, timeout, what, interval=0.2)
        except AssertionError:
            states = self.states()
            wrong = {cp_id: states.get(cp_id) for cp_id in cp_ids if states.get(cp_id) not in allowed}
            raise AssertionError(f"{what}: {len(wrong)} CP(s) not {allowed}: {dict(list(wrong.items())[:10])}") \
                from None


def _with_core(runner, system: "GatewaySystem"):
    """The system with drivers D001 and D002 and the core running; everything stopped after."""
    system.register_drivers("D001", "D002")
    system.start_core()
    yield system
    runner.stop_all()
    system.close()


@pytest.fixture
def gateway_system(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url):
    yield from _with_core(runner, GatewaySystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix))


@pytest.fixture
def secure_gateway_system(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url):
    """In secure mode: the core --secure, gateways --secure with its certificate, master key and
    database; every CP registered with a credential, its Monitor pinning the certificate."""
    yield from _with_core(runner, GatewaySystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix,
                                                secure=True))
