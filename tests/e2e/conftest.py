"""What the end-to-end tests share: a whole system of real processes on the real broker and MySQL."""

from __future__ import annotations

import pytest

from tests.support.system import EVSystem


@pytest.fixture
def system(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url):
    """Central on a new MySQL database with drivers D001 and D002 registered; CPs and drivers
    are started by the test."""
    system = EVSystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix)
    system.register_drivers("D001", "D002")
    system.start_central()
    yield system
    runner.stop_all()
    system.close()
