"""The benchmarks still run (tiny sizes); their figures are not checked here."""

from __future__ import annotations

import pytest

from benchmarks import bench_cp_link, bench_protocol, bench_telemetry


def test_protocol_benchmark_runs(capsys):
    assert bench_protocol.main(["--frames", "200", "--round-trips", "50", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "link round trip" in out and "encode+decode" in out


@pytest.mark.e2e
def test_cp_link_benchmark_runs(capsys, kafka_bootstrap):
    assert bench_cp_link.main(["--runs", "1", "--kafka", kafka_bootstrap]) == 0
    out = capsys.readouterr().out
    for line in ("Engine fault -> AVERIADO", "Monitor SIGKILL -> DESCONECTADO", "Monitor SIGSTOP -> DESCONECTADO"):
        assert line in out


@pytest.mark.e2e
def test_telemetry_benchmark_runs(capsys, kafka_bootstrap):
    assert bench_telemetry.main(["--cps", "1", "--seconds", "2", "--kafka", kafka_bootstrap]) == 0
    out = capsys.readouterr().out
    assert "Central applied" in out and "driver's consumer" in out


def test_signs_of_life_benchmark_runs(capsys):
    """A real Monitor side in a child process, 200 Monitors: every one registers, every sign of
    life is acknowledged in time, and the figures are printed."""
    import json

    from benchmarks import bench_signs_of_life

    assert bench_signs_of_life.main(["--monitors", "200", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["monitors"] == 200 and result["signs_of_life"] >= 200
    assert result["retransmits"] == 0 and result["false_disconnects"] == 0
    # (CPU is read in clock ticks of 10 ms: a run this small may measure none, so only its presence is checked)
    assert result["cpu_per_sign_of_life_us"] >= 0 and result["cpu_per_registration_us"] >= 0


@pytest.mark.e2e
def test_secure_storm_benchmark_runs(capsys, kafka_bootstrap):
    """A real secure Central, killed and started again between the phases: every CP is admitted
    in each phase, and the tickets Central gave are the HMAC the benchmark expects."""
    import json

    from benchmarks import bench_secure_storm

    assert bench_secure_storm.main(["--cps", "12", "--scrypt-cps", "4", "--threads", "3",
                                    "--kafka", kafka_bootstrap]) == 0
    out = capsys.readouterr().out
    phases = {row["phase"]: row for row in json.loads(out.strip().splitlines()[-1])["phases"]}
    assert [(name, row["cps"], row["failures"]) for name, row in phases.items()] == [
        ("scrypt", 4, 0), ("remembered", 4, 0), ("ticket", 12, 0)]
    assert "10,000 CPs after a restart" in out
