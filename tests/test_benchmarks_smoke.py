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
