"""What the benchmarks that run the real programs share: a scratch directory, a ``ProgramRunner``
and a broker (the one given, or a Tansu broker started for the run), all stopped at the end;
an ``AssertionError`` inside says which programs' output ended how."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from tests.support.processes import ProgramRunner
from tests.support.services import TansuBroker


@contextlib.contextmanager
def programs(kafka: str | None, tail: int = 2000) -> Iterator[tuple[Path, ProgramRunner, str]]:
    """(scratch directory, runner, Kafka bootstrap) for one benchmark run."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        runner = ProgramRunner(directory)
        broker = None if kafka else TansuBroker(log_path=directory / "tansu.log").start()
        try:
            yield directory, runner, kafka or broker.bootstrap
        except AssertionError as exc:  # say why, while the programs' logs are still there
            tails = "\n".join(f"--- {program.name} ---\n{program.output()[-tail:]}" for program in runner.programs)
            raise AssertionError(f"{exc}\n{tails}") from None
        finally:
            runner.stop_all()
            if broker is not None:
                broker.kill()
