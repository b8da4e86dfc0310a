"""Run the real programs as processes, read what they print, signal and kill them.

``ProgramRunner`` starts programs exactly as users do (``python EV_Central.py ...``
from the program's folder, or ``python -m package``), sends their output to a log
file per process, and stops every one it started at the end of the test.
Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Program:
    """One running program; its combined stdout/stderr goes to ``log_path``."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Program":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_output(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match:
        """Wait until ``pattern`` (regex) appears in the output past offset ``after``."""
        regex = re.compile(pattern)

        def found():
            if self.proc is not None and self.proc.poll() is not None:
                match = regex.search(self.output(), after)
                if match:
                    return match
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                                     f"{self.output()[-3000:]}")
            return regex.search(self.output(), after)

        try:
            return wait_until(found, timeout, f"{self.name} to print {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} output ---\n{self.output()[-3000:]}") from None

    def mark(self) -> int:
        """The current end of the output, to wait for what comes after it."""
        return len(self.output())

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash or a closed window."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """Ask it to stop (Ctrl+C by default) and return its exit code; SIGKILL if it does not."""
        assert self.proc is not None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a frozen process cannot stop
            except ProcessLookupError:
                pass
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} did not stop within {timeout:g} s of {signal.Signals(sig).name}:\n"
                                     f"{self.output()[-3000:]}")
        return self.proc.returncode

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


class ProgramRunner:
    """Starts programs for one test and stops them all afterwards."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.programs: list[Program] = []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EV_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["EV_LOG_LEVEL"] = "INFO"
        return env

    def start(self, name: str, args: list[str], *, script: str | None = None, package: str | None = None,
              env: dict[str, str] | None = None) -> Program:
        """``script="ev_central/EV_Central.py"`` runs it from its folder, as the seed does;
        ``package="ev_central"`` runs ``python -m ev_central``."""
        if script is not None:
            path = ROOT / script
            argv, cwd = [sys.executable, path.name, *args], path.parent
        else:
            argv, cwd = [sys.executable, "-m", package, *args], self.log_dir
        full_env = self._env()
        full_env.update(env or {})
        program = Program(name, argv, cwd, self.log_dir / f"{name}.log", full_env).start()
        self.programs.append(program)
        return program

    def stop_all(self) -> None:
        for program in reversed(self.programs):
            if program.proc is not None and program.proc.poll() is None:
                try:
                    program.stop(signal.SIGKILL, timeout=5)
                except AssertionError:
                    pass
