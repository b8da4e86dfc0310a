"""Ctrl+C in `make demo`: the terminal sends SIGINT to the whole foreground process group
(make and the demo); the demo stops its programs in order, quickly, and nothing logs an error."""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.e2e.test_demo import processes_mentioning
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = {  # the demo's groups, in the order they must stop, with the programs of each
    "drivers": ["driver-D001", "driver-D002"],
    "EV_W": ["EV_W"],
    "Monitors": ["CP001-monitor", "CP002-monitor", "CP003-monitor", "CP004-monitor"],
    "Engines": ["CP001-engine", "CP002-engine", "CP003-engine", "CP004-engine"],
    "Central": ["central"],
    "EV_Registry": [],  # writes to registry.log only
    "broker": [],  # writes to broker.log only
}


def load_demo():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Lines:
    """The lines of a process's output, read by a thread, waited for with a deadline."""

    def __init__(self, stream) -> None:
        self.all: list[str] = []
        self._new: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The next line (after those already waited for) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.all[-60:]))
            self.all.append(line)
            if match := re.search(pattern, line):
                return match

    def rest(self, timeout: float) -> list[str]:
        """Every line until the end of the output."""
        self._thread.join(timeout)
        while not self._new.empty():
            line = self._new.get()
            if line is not None:
                self.all.append(line)
        return self.all


def test_ctrl_c_stops_the_demo_in_order_in_a_second_or_two_without_errors(tmp_path):
    demo_dir = tmp_path / "demo"
    args = f"--ui log --pause 1 --dir {demo_dir}"  # the default supply length: the README's figures
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EV_", "MAKE"))}
    make = subprocess.Popen(["make", "-s", "demo", f"DEMO_ARGS={args}"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # a process group, as a terminal's foreground job
    try:
        out = Lines(make.stdout)
        out.wait_for(r"^\[demo\] running unattended", 60)
        # the first COMPLETED ticket, with the energy of a whole demo supply
        ticket = out.wait_for(r"^\[(driver-D00[12])\] .*TICKET of your supply at CP00[123]: COMPLETED", 60)
        energy = out.wait_for(rf"^\[{ticket[1]}\] +Energy +([0-9.]+) kWh", 10)
        started = time.monotonic()
        os.killpg(make.pid, signal.SIGINT)  # Ctrl+C
        make.wait(30)
        took = time.monotonic() - started
        lines = out.rest(10)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    text = "\n".join(lines[-80:])

    # the README: "a 10 s demo supply delivers about 1.8 kWh at the default 11 kW"
    assert "[demo] each supply lasts 10 s: about 1.8 kWh at 11 kW" in "\n".join(lines)
    assert Decimal("1.8") <= Decimal(energy[1]) <= Decimal("2.1"), energy[0]

    # make ends itself by the SIGINT it received, after the demo (its recipe) has ended
    assert make.returncode == -signal.SIGINT, text
    assert not [line for line in lines if line.startswith("make")], text
    assert took < 5, f"the stop took {took:.1f} s:\n{text}"
    assert [line for line in lines if re.search(r"ERROR|Traceback|WARNING", line)] == [], text
    # the last lines: the demo stopped, then the statement of the account whose tag charged at CP004
    stopped = next(i for i, line in enumerate(lines) if re.search(r"^\[demo\] stopped in [0-9.]+ s; nothing "
                                                                  r"left running$", line))
    assert lines[stopped + 1] == "[demo] the statement of account FLAT3B, whose tag charged at CP004 over MCSP:", text
    assert lines[stopped + 2].startswith("Statement of account FLAT3B") and lines[-1].startswith("Total: "), text

    # every group's lines end before the demo says it stopped, and that comes before the next group's last
    stopping = lines.index("[demo] stopping every program: drivers, EV_W, Monitors, Engines, Central, EV_Registry, "
                           "broker...")
    previous = stopping
    for group, programs in PROGRAMS.items():
        said = lines.index(f"[demo] {group} stopped")
        for program in programs:
            last = max(i for i, line in enumerate(lines) if line.startswith(f"[{program}] "))
            assert previous < last < said, f"{program}'s last line is out of order:\n{text}"
        previous = said
    for driver in ("D001", "D002"):  # the drivers' summaries, as at the end of their services files
        assert any(f"[driver-{driver}] " in line and f"Summary for driver {driver}" in line
                   for line in lines[stopping:]), text

    central_log = (demo_dir / "central.log").read_text()
    assert [line for line in central_log.splitlines() if "WARNING" in line] == [], central_log[-3000:]
    assert processes_mentioning(str(demo_dir)) == []


def test_a_program_that_ignores_sigint_is_killed_once_its_grace_has_passed(tmp_path, monkeypatch):
    demo = load_demo()
    monkeypatch.setattr(demo, "STOP_GRACE", 0.5)
    runner = demo.Demo(tmp_path, panel=True)  # output to files
    stubborn = runner.start("stubborn", "engine", [sys.executable, "-c",
                                                   "import signal, sys, time\n"
                                                   "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                                   "print('ready', flush=True)\n"
                                                   "time.sleep(60)\n"])
    polite = runner.start("polite", "central", [sys.executable, "-c",
                                                "import time\nprint('ready', flush=True)\n"
                                                "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass\n"])
    wait_until(lambda: all((tmp_path / f"{name}.log").read_text().startswith("ready")
                           for name in ("stubborn", "polite")), 20, "the programs to start", interval=0.05)
    started = time.monotonic()
    runner.stop_all()
    assert time.monotonic() - started < 10
    assert runner.killed == ["stubborn"]
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == 0  # asked after the Engines' group, and stopped by its SIGINT
