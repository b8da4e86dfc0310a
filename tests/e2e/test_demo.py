"""`make demo`, as the README documents it, for a bounded time without a terminal:
every program runs, tickets come out, the tag of account FLAT3B charges over MCSP, and the stop
(here: --seconds) shows the drivers' summaries and the account's statement and leaves nothing
running. Ctrl+C itself: test_demo_stop.py."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_make_demo_runs_unattended_and_stops_cleanly(tmp_path):
    demo_dir = tmp_path / "demo"
    args = f"--ui log --seconds 45 --auto-seconds 2 --pause 1 --dir {demo_dir}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EV_", "MAKE"))}
    result = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={args}"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for program in ("central", "CP001-engine", "CP002-monitor", "CP003-engine", "driver-D001", "driver-D002", "EV_W"):
        assert f"[{program}] " in out, f"no line from {program}:\n{out[-4000:]}"
    tickets = re.findall(r"\[driver-D00[12]\] .*TICKET of your supply at (CP00[123]): COMPLETED", out)
    assert len(tickets) >= 4, out[-4000:]
    for driver in ("D001", "D002"):
        assert f"Summary for driver {driver} =====" in out, out[-4000:]
    # the account's tag at CP004, over MCSP: sessions opened and ended, then the statement
    assert re.search(r"\[CP004-engine\] .*tag \.\.\.E73A: session \w+ opened", out), out[-4000:]
    assert re.search(r"\[CP004-engine\] .*tag \.\.\.E73A: session \w+ ended: [\d.]+ kWh", out), out[-4000:]
    assert re.search(r"\[central\] .*ticket \w+: tag \.\.\.E73A of account FLAT3B at CP004, .*COMPLETED", out)
    statement = out[out.index("[demo] the statement of account FLAT3B"):]
    assert re.search(r"^\w{32}  CP004  16AC936B1692E73A  -  .* COMPLETED$", statement, re.MULTILINE), statement
    assert re.search(r"^Total: \d+ sessions, [\d.]+ kWh, [\d.]+ EUR$", statement, re.MULTILINE), statement
    assert re.search(r"^\[demo\] stopped in [0-9.]+ s; nothing left running$", out, re.MULTILINE), out[-4000:]
    assert "Traceback" not in out and "ERROR" not in out, out[-4000:]
    assert processes_mentioning(str(demo_dir)) == []
