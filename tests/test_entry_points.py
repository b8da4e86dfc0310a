"""Every program runs as the seed says (from its own folder), as ``python -m``, and as a console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = [
    ("ev_central", "EV_Central", ["--port", "--kafka", "--db"]),
    ("ev_cp_engine", "EV_CP_E", ["--port", "--kafka"]),
    ("ev_cp_monitor", "EV_CP_M", ["--cp_id", "--central_ip", "--central_port", "--engine_ip", "--engine_port",
                                  "--location", "--price"]),
    ("ev_driver", "EV_Driver", ["--kafka", "--driver_id", "--file", "--cp"]),
    ("ev_rfid", "EV_RFID", ["start", "end", "--central", "--station", "--key", "--session", "--timeout"]),
    ("ev_registry", "EV_Registry", ["--port", "--host", "--db", "--cert", "--key", "--admin-token-file"]),
    ("ev_weather", "EV_W", ["--locations", "--central-api", "--token-file", "--central-ca", "--central-fingerprint",
                            "--weather-url", "--api-key-file", "--simulate", "--every", "--timeout"]),
]


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("package,program,flags", PROGRAMS, ids=[p[1] for p in PROGRAMS])
def test_help_from_the_program_folder(package, program, flags):
    result = run([sys.executable, f"{program}.py", "--help"], ROOT / package)
    assert result.returncode == 0, result.stderr
    assert f"usage: {program}" in result.stdout
    for flag in flags:
        assert flag in result.stdout


@pytest.mark.parametrize("package,program,flags", PROGRAMS, ids=[p[1] for p in PROGRAMS])
def test_python_dash_m_and_console_script(package, program, flags, tmp_path):
    assert run([sys.executable, "-m", package, "--help"], tmp_path).returncode == 0
    script = Path(sys.executable).parent / program
    if not script.exists():
        script = shutil.which(program)
    assert script, f"console script {program} is not installed"
    assert run([str(script), "--help"], tmp_path).returncode == 0


@pytest.mark.parametrize("package,program,flags", PROGRAMS, ids=[p[1] for p in PROGRAMS])
def test_missing_required_flags_exit_non_zero_with_usage(package, program, flags, tmp_path):
    result = run([sys.executable, "-m", package], tmp_path)
    assert result.returncode == 2
    assert "required" in result.stderr


def test_monitor_refuses_invalid_registration_data(tmp_path):
    args = ["--central_ip", "127.0.0.1", "--central_port", "1", "--engine_ip", "127.0.0.1", "--engine_port", "1"]
    bad_id = run([sys.executable, "-m", "ev_cp_monitor", "--cp_id", "CP 1", *args], tmp_path)
    assert bad_id.returncode == 2 and "cp_id" in bad_id.stderr
    bad_price = run([sys.executable, "-m", "ev_cp_monitor", "--cp_id", "CP1", "--price", "-1", *args], tmp_path)
    assert bad_price.returncode == 2 and "below 0" in bad_price.stderr
