"""Two Centrals on one broker and topic prefix would split the drivers' requests between them
without a word: the second one refuses to start and names the first when the broker names the
group's members (Apache Kafka), and says so loudly when it cannot tell (the test broker does not
name members). Real processes; the refusal itself: tests/central/test_another_central.py."""

from __future__ import annotations

import signal

import pytest

from ev_common.bus import group_members
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def start_second(runner, system, prefix: str, name: str, tmp_path):
    return runner.start(name, ["--port", str(free_port()), "--kafka", system.kafka, "--db",
                               f"sqlite:///{tmp_path / (name + '.db')}", "--topic-prefix", prefix, "--ui", "log"],
                        script="ev_central/EV_Central.py")


def test_a_second_central_on_the_same_broker_and_prefix_refuses_to_start(system, runner, tmp_path):
    system.start_cp("CP001")
    group = system.prefix + "ev-central-requests"
    wait_until(lambda: group_members(system.kafka, group).active, 30, "the first Central to consume requests")
    second = start_second(runner, system, system.prefix, "central-2", tmp_path)
    if group_members(system.kafka, group).members:  # a broker that names the members (Apache Kafka)
        assert second.wait_exit(40) == 1, second.output()
        assert "another Central is running on Kafka" in second.output()
    else:  # the test broker names nobody, even a member that died: a loud warning, and it starts
        second.wait_for_output(r"ERROR .*another Central may be running on Kafka", timeout=40)
    assert "--topic-prefix" in second.output()
    assert system.central.proc.poll() is None  # the first one goes on
    other = start_second(runner, system, system.prefix + "other-", "central-3", tmp_path)
    other.wait_for_output(r"Central system status OK", timeout=30)  # another prefix: another system
    assert other.stop(signal.SIGINT) == 0


def test_a_central_restarted_after_a_clean_stop_starts_at_once(system):
    system.start_cp("CP001")
    assert system.central.stop(signal.SIGTERM) == 0
    central = system.start_central()
    central.wait_for_output(r"Central system status OK", timeout=20)
    assert "another Central" not in central.output()
