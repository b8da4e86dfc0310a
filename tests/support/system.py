"""A whole EVCharging system of real processes for end-to-end tests and benchmarks:
one Central, any number of CPs (Engine + Monitor), any number of drivers."""

from __future__ import annotations

from dataclasses import dataclass

from ev_central.store import open_store

from .processes import Program, ProgramRunner
from .services import free_port, port_open
from .waiting import wait_until


@dataclass
class CP:
    cp_id: str
    engine: Program
    monitor: Program
    engine_port: int
    engine_argv: list[str]


class EVSystem:
    """``secure=True``: Central runs ``--secure`` (its certificate made beforehand in its data
    directory, so that the Monitors can pin it), and each CP is registered (its credential's
    hash in the database, as EV_Registry does) with a 0600 credentials file for its Monitor."""

    def __init__(self, runner: ProgramRunner, kafka: str, db_url: str, prefix: str, *, secure: bool = False) -> None:
        self.runner = runner
        self.kafka = kafka
        self.db_url = db_url
        self.prefix = prefix
        self.secure = secure
        self.central_port = free_port()
        self.central: Program | None = None
        self.store = open_store(db_url)
        self.cps: dict[str, CP] = {}
        self.central_data = runner.log_dir / "central-data"
        self.fingerprint: str | None = None
        if secure:
            from ev_common.tls import ensure_certificate

            self.fingerprint = ensure_certificate(self.central_data, "ev_central", ["127.0.0.1"]).fingerprint

    def close(self) -> None:
        self.store.close()

    def register_drivers(self, *driver_ids: str) -> None:
        for driver_id in driver_ids:
            self.store.add_driver(driver_id)

    def start_central(self, *extra: str) -> Program:
        self.central = self.runner.start("central", [
            "--port", str(self.central_port), "--kafka", self.kafka, "--db", self.db_url,
            "--topic-prefix", self.prefix, *(["--secure"] if self.secure else []), *extra],
            script="ev_central/EV_Central.py", env={"EV_DATA_DIR": str(self.central_data)})
        wait_until(lambda: port_open("127.0.0.1", self.central_port) or self.central.proc.poll() is not None, 20,
                   "Central to listen")
        assert self.central.proc.poll() is None, f"Central exited:\n{self.central.output()[-3000:]}"
        return self.central

    def start_cp(self, cp_id: str, *engine_args: str, price: str = "0.50", location: str = "Calle Mayor 1",
                 central_port: int | None = None) -> CP:
        """Start an Engine and its Monitor; ``central_port`` points the Monitor elsewhere than
        Central's port (a proxy that cuts the link)."""
        port = free_port()
        argv = ["--port", str(port), "--host", "127.0.0.1", "--kafka", self.kafka, "--topic-prefix", self.prefix,
                "--data-dir", str(self.runner.log_dir / cp_id), *engine_args]
        engine = self.start_engine(cp_id, argv)
        monitor = self.runner.start(f"monitor-{cp_id}", [
            "--cp_id", cp_id, "--central_ip", "127.0.0.1", "--central_port", str(central_port or self.central_port),
            "--engine_ip", "127.0.0.1", "--engine_port", str(port), "--location", location, "--price", price,
            *self.credentials_args(cp_id, location, price)], script="ev_cp_monitor/EV_CP_M.py")
        self.cps[cp_id] = cp = CP(cp_id, engine, monitor, port, argv)
        self.wait_cp_state(cp_id, "ACTIVADO", 10)
        return cp

    def credentials_args(self, cp_id: str, location: str, price: str) -> list[str]:
        """Secure mode: register ``cp_id`` (once) and give its Monitor the credential and Central's pin."""
        if not self.secure:
            return []
        from ev_common.credentials import hash_credential, new_credential

        path = self.runner.log_dir / f"{cp_id}.credential"
        if not path.exists():
            credential = new_credential()
            self.store.register_cp(cp_id, location, price, hash_credential(credential))
            path.touch(mode=0o600)
            path.write_text(credential + "\n")
        return ["--credentials", str(path), "--central-fingerprint", self.fingerprint]

    def start_engine(self, cp_id: str, argv: list[str]) -> Program:
        """Start (or restart, with the same arguments) the Engine of ``cp_id``."""
        port = int(argv[argv.index("--port") + 1])
        engine = self.runner.start(f"engine-{cp_id}", argv, script="ev_cp_engine/EV_CP_E.py")
        wait_until(lambda: port_open("127.0.0.1", port) or engine.proc.poll() is not None, 20, "the Engine to listen")
        assert engine.proc.poll() is None, f"Engine exited:\n{engine.output()[-3000:]}"
        if cp_id in self.cps:
            self.cps[cp_id].engine = engine
        return engine

    def start_driver(self, driver_id: str, *args: str, name: str | None = None) -> Program:
        return self.runner.start(name or f"driver-{driver_id}", [
            "--kafka", self.kafka, "--driver_id", driver_id, "--topic-prefix", self.prefix, *args],
            script="ev_driver/EV_Driver.py")

    def operator(self, command: str) -> None:
        """Type a command at Central's console."""
        self.central.proc.stdin.write(command.encode() + b"\n")
        self.central.proc.stdin.flush()

    def cp_state(self, cp_id: str) -> str | None:
        rows = {row.cp_id: row for row in self.store.load_charging_points()}
        return rows[cp_id].state if cp_id in rows else None

    def wait_cp_state(self, cp_id: str, state: str, timeout: float) -> None:
        wait_until(lambda: self.cp_state(cp_id) == state, timeout,
                   f"{cp_id} to be {state} in the DB (now {self.cp_state(cp_id)})", interval=0.05)

    def sessions(self, driver_id: str | None = None, cp_id: str | None = None):
        return self.store.list_sessions(cp_id=cp_id, driver_id=driver_id, limit=1000)
