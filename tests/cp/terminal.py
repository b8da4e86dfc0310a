"""A program on a pseudo-terminal (stdin, stdout and stderr), as a person runs it: what it
writes is kept, keys are pressed, the terminal's mode can be read."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from tests.support.processes import ROOT
from tests.support.waiting import wait_until


class OnTerminal:
    """``script`` (run from its folder) with a pseudo-terminal of 200 columns as stdin, stdout
    and stderr; what it writes is kept, and saved to ``log_dir`` at ``close``."""

    def __init__(self, script: str, args: list[str], log_dir: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # 200 columns
        self.master = master
        env = {k: v for k, v in os.environ.items() if not k.startswith("EV_")}
        env.update(PYTHONUNBUFFERED="1", EV_LOG_LEVEL="INFO", TERM="xterm")
        script = ROOT / script
        self.proc = subprocess.Popen([sys.executable, script.name, *args], cwd=script.parent, env=env, stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self._data = bytearray()
        self._lock = threading.Lock()
        self.log_path = log_dir / f"{script.stem}-pty.log"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child is gone (EIO)
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    def output(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 15.0, after: int = 0) -> int:
        """Wait until ``text`` is printed past offset ``after``; the offset after it."""
        def found():
            at = self.output().find(text, after)
            return at + len(text) if at >= 0 else None

        try:
            return wait_until(found, timeout, repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- output ---\n{self.output()[-3000:]}") from None

    def cbreak(self) -> bool:
        """The terminal reads single keys (no line editing, no echo)."""
        flags = termios.tcgetattr(self.master)[3]
        return not flags & termios.ICANON and not flags & termios.ECHO

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(2)
        self.log_path.write_text(self.output())
        os.close(self.master)
