"""Fixtures of EV_W's tests: the fake OpenWeather (a real HTTP server on 127.0.0.1), a real Central
in this process (SQLite, no Kafka) with fake Monitors, the stand-in for Central's API in front
of its weather office, and EV_W started as a real process."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ev_central.app import Central
from ev_central.store import open_store
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Message, Reg, Resume, Stop
from tests.support.processes import Program, ProgramRunner
from tests.support.waiting import wait_until
from tests.weather.fake_api import TOKEN, FakeCentralAPI
from tests.weather.openweather import KEY, FakeOpenWeather

HOST = "127.0.0.1"
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.5, max_retries=3, write_timeout=1.0)
QUIET = 3600.0  # the fake Monitors send no heartbeats
WAIT = 10.0
EVERY = "0.3"  # EV_W's cycle in these tests (4 s in use)


class FakeMonitor:
    """A CP's Monitor reduced to its link: registers, records STOP and RESUME."""

    def __init__(self, central: Central, cp_id: str, location: str = "C/Mayor 1") -> None:
        self.cp_id = cp_id
        self.received: list[Message] = []
        self.link = Link.connect(*central.address, FAST)
        self.link.send(Reg(cp_id, location, Decimal("0.48")))
        self._auth = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"monitor-{cp_id}", daemon=True)
        self._thread.start()
        assert self._auth.wait(5), "no AUTH"

    def _read(self) -> None:
        try:
            while not self.link.closed:
                message = self.link.recv(timeout=0.1)
                if message is not None:
                    self.received.append(message)
                    if isinstance(message, Auth):
                        self._auth.set()
        except LinkError:
            pass

    def commands(self) -> list[str]:
        return [m.OPCODE for m in list(self.received) if isinstance(m, (Stop, Resume))]

    def close(self) -> None:
        self.link.close("test over")
        self._thread.join(2)


def state(central: Central, cp_id: str) -> str | None:
    row = central.network.get(cp_id)
    return row.state if row else None


def wait_state(central: Central, cp_id: str, expected: str, timeout: float = WAIT) -> None:
    wait_until(lambda: state(central, cp_id) == expected, timeout, f"{cp_id} {expected} (is {state(central, cp_id)})")


def city(central: Central, name: str):
    return next((c for c in central.weather.snapshot().cities if c.city == name), None)


@pytest.fixture
def weather() -> Iterator[FakeOpenWeather]:
    with FakeOpenWeather() as fake:
        yield fake


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    store = open_store(f"sqlite:///{tmp_path}/central.db")
    started = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST).start()
    yield started
    started.stop()


@pytest.fixture
def monitors(central) -> Iterator[Callable[..., dict[str, FakeMonitor]]]:
    """``monitors("CP001", "CP002")``: each registered and ACTIVADO at Central."""
    opened: list[FakeMonitor] = []

    def connect(*cp_ids: str) -> dict[str, FakeMonitor]:
        made = {cp_id: FakeMonitor(central, cp_id) for cp_id in cp_ids}
        opened.extend(made.values())
        for cp_id in cp_ids:
            wait_state(central, cp_id, "ACTIVADO")
        return made

    yield connect
    for monitor in opened:
        monitor.close()


@pytest.fixture
def api(central) -> Iterator[FakeCentralAPI]:
    fake = FakeCentralAPI(central.weather).start()
    yield fake
    fake.stop()


@pytest.fixture
def files(tmp_path: Path):
    """Write a file of EV_W's folder: ``files("locations.txt", "CP001 Alicante,ES\\n")`` -> its path."""
    folder = tmp_path / "ev_w"
    folder.mkdir()

    def write(name: str, text: str, mode: int = 0o600) -> Path:
        path = folder / name
        path.write_text(text)
        path.chmod(mode)
        return path

    write.folder = folder
    return write


@pytest.fixture
def start_ev_w(runner: ProgramRunner, files, weather) -> Callable[..., Program]:
    """``start_ev_w(central_url, locations_text, *more_args)``: EV_W as a real process (``python
    -m ev_weather``), plain lines, checking every 0.3 s the fake OpenWeather with its key."""
    key_file = files("openweather.key", KEY + "\n")
    token_file = files("ev_w.token", TOKEN + "\n")
    started = [0]

    def start(central_url: str, locations: str | None = None, *more: str, name: str | None = None,
              key: bool = True, env: dict[str, str] | None = None) -> Program:
        started[0] += 1
        if locations is not None:
            files("locations.txt", locations, 0o644)
        args = ["--locations", str(files.folder / "locations.txt"), "--central-api", central_url,
                "--token-file", str(token_file), "--weather-url", weather.url, "--every", EVERY,
                "--timeout", "1", "--ui", "plain", *more]
        if key:
            args += ["--api-key-file", str(key_file)]
        return runner.start(name or f"EV_W-{started[0]}", args, package="ev_weather",
                            env={"OPENWEATHER_API_KEY": "", **(env or {})})

    return start


def send(program: Program, line: str) -> None:
    """A command line on EV_W's standard input."""
    assert program.proc is not None and program.proc.stdin is not None
    program.proc.stdin.write(line.encode() + b"\n")
    program.proc.stdin.flush()
