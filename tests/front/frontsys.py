"""A real EVCharging system with Central's API on, and Debian's Chromium driven by Playwright:
what the browser tests (tests/front) and ``scripts/screenshots.py`` share.

``FrontSystem`` wraps ``tests.support.system.EVSystem``: Central runs as a process with
``--api-port`` on 127.0.0.1 and the operator's and EV_W's tokens in 0600 files; Central can be
killed and started again on the same ports (its page then reconnects by itself).
``launch_chromium`` starts /usr/bin/chromium with the flags of TEST-SERVICES.md (no background
networking: the browser itself asks no other machine for anything).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from tests.support.processes import Program, ProgramRunner
from tests.support.services import free_port, port_open
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

CHROMIUM = os.environ.get("EV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
OPERATOR_TOKEN = "front-operator-token-0123456789abcdef"
WEATHER_TOKEN = "front-weather-token-0123456789abcdef"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright for Python is not installed ({exc}): pip install -r requirements-dev.txt"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
    return None


def launch_chromium(playwright, **options):
    """Debian's Chromium (never a browser Playwright would download)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, **options)


def write_secret(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text + "\n")
    return path


class FrontSystem:
    """Central (with its API on 127.0.0.1), its CPs and drivers, as real processes."""

    def __init__(self, runner: ProgramRunner, kafka: str, db_url: str, prefix: str, *, secure: bool = False,
                 drivers: tuple[str, ...] = ("D001", "D002")) -> None:
        self.runner = runner
        self.system = EVSystem(runner, kafka, db_url, prefix, secure=secure)
        self.system.register_drivers(*drivers)
        self.api_port = free_port()
        folder = runner.log_dir
        self.token_file = write_secret(folder / "operator.token", OPERATOR_TOKEN)
        self.weather_token_file = write_secret(folder / "ev_w.token", WEATHER_TOKEN)
        self.ev_w: Program | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/"

    @property
    def central(self) -> Program:
        assert self.system.central is not None
        return self.system.central

    def start_central(self) -> Program:
        central = self.system.start_central(
            "--api-port", str(self.api_port), "--api-host", "127.0.0.1", "--api-token-file", str(self.token_file),
            "--weather-token-file", str(self.weather_token_file))
        wait_until(lambda: port_open("127.0.0.1", self.api_port) or central.proc.poll() is not None, 20,
                   "Central's API to listen")
        assert central.proc.poll() is None, f"Central exited:\n{central.output()[-3000:]}"
        return central

    def kill_central(self) -> None:
        """SIGKILL, as a crash: the page's stream breaks at once."""
        self.central.stop(signal.SIGKILL, timeout=10)
        wait_until(lambda: not port_open("127.0.0.1", self.api_port), 10, "Central's API to be gone")

    def start_cp(self, cp_id: str, *engine_args: str, **options):
        return self.system.start_cp(cp_id, *engine_args, **options)

    def start_driver(self, driver_id: str, *args: str, name: str | None = None) -> Program:
        return self.system.start_driver(driver_id, *args, name=name)

    def fault(self, cp_id: str) -> None:
        """The Engine's KO key (its stdin is a pipe: one key per read), as a person presses 'f'."""
        engine = self.system.cps[cp_id].engine
        engine.proc.stdin.write(b"f")
        engine.proc.stdin.flush()

    def start_ev_w(self, locations: dict[str, str], temperatures: dict[str, float], every: float = 1.0) -> Program:
        """EV_W with a simulation file (no internet here): ``locations`` CP id -> City,CC."""
        folder = self.runner.log_dir
        (folder / "locations.txt").write_text("".join(f"{cp} {city}\n" for cp, city in locations.items()))
        (folder / "temperatures.txt").write_text("".join(f"{city} {t}\n" for city, t in temperatures.items()))
        self.ev_w = self.runner.start("ev_w", [
            "--locations", str(folder / "locations.txt"), "--central-api", f"http://127.0.0.1:{self.api_port}",
            "--token-file", str(self.weather_token_file), "--simulate", str(folder / "temperatures.txt"),
            "--every", f"{every:g}", "--ui", "plain"], script="ev_weather/EV_W.py")
        return self.ev_w

    def close(self) -> None:
        self.runner.stop_all()
        self.system.close()
