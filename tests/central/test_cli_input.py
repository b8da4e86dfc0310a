"""Central's command line checks what it is given against the database's limits."""

from __future__ import annotations

import pytest


def test_the_drivers_command_checks_its_input_against_the_tables_limits(tmp_path, capsys):
    from ev_central.cli import main

    db = f"sqlite:///{tmp_path / 'c.db'}"
    for argv in (["drivers", "add", "D 1", "--db", db], ["drivers", "add", "D1", "--name", "x" * 101, "--db", db],
                 ["drivers", "add", "D1", "--name", "line\nbreak", "--db", db]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert main(["drivers", "add", "D1", "--name", "Ana", "--db", db]) == 0
    assert "driver D1 registered" in capsys.readouterr().out
