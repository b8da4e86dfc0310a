"""The load generator, small: 50 Monitors and 5 supplies for a few seconds, so that it cannot rot.

A real Central (its own process) on a fresh MySQL database and the test broker. The figures
are not judged here (benchmarks print them; docs/performance.md reports them); what is
judged is that every part ran and the run was clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.kafka, pytest.mark.mysql]


@pytest.mark.timeout(180)
def test_loadgen_small_run_is_clean(kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix, tmp_path):
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--monitors", "50", "--supplies", "5", "--seconds", "4",
            "--storm", "--faults-per-second", "2", "--kafka", kafka_bootstrap, "--db", fresh_mysql_url,
            "--topic-prefix", kafka_topic_prefix, "--keep-logs", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])  # the last line is the JSON summary
    assert "Registration p50 / p99" in done.stdout  # and the human table before it
    for key in ("monitors", "supplies", "registration_p50_ms", "registration_p99_ms", "storm_seconds",
                "fault_detect_p50_ms", "fault_detect_p99_ms", "telemetry_p99_ms", "false_disconnects",
                "central_cpu_pct", "central_rss_mb"):
        assert key in result, key
    central_log = (tmp_path / "central.log").read_text(errors="replace")
    assert result["registered"] == 50, central_log[-3000:]
    assert result["authorised"] == 5 and result["tickets"] == 5, done.stderr + central_log[-3000:]
    assert result["telemetry_seen"] > 0 and result["telemetry_p99_ms"] is not None
    assert result["faults_seen"] >= 1 and result["fault_detect_p99_ms"] is not None
    assert result["false_disconnects"] == 0 and result["links_broken"] == 0
    assert result["central_rss_mb"] > 0 and result["central_cpu_pct"] is not None


@pytest.mark.timeout(180)
def test_loadgen_through_two_gateways_is_clean(kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix, tmp_path):
    """``--gateways 2``: a core and two gateway processes on one shared port; every Monitor
    registers through them, every supply gets its ticket, and each gateway is measured."""
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--monitors", "60", "--supplies", "4", "--seconds", "4",
            "--storm", "--faults-per-second", "2", "--gateways", "2", "--kafka", kafka_bootstrap,
            "--db", fresh_mysql_url, "--topic-prefix", kafka_topic_prefix, "--keep-logs", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    logs = "".join((tmp_path / name).read_text(errors="replace")[-2000:]
                   for name in ("central.log", "gateway-G1.log", "gateway-G2.log"))
    assert result["gateways"] == 2 and result["registered"] == 60, logs
    assert result["authorised"] == 4 and result["tickets"] == 4, done.stderr + logs
    assert result["faults_seen"] >= 1 and result["false_disconnects"] == 0, logs
    assert result["gateway_G1_cpu_pct"] is not None and result["gateway_G2_rss_mb"] > 0
