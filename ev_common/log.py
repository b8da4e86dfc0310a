"""One log format for every program: time, program, thread, level, logger, message."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(program)s[%(threadName)s] %(levelname)s %(name)s: %(message)s"
# libraries that say too much at INFO (the MySQL connector: a line per connection): warnings and up only
QUIET_LIBRARIES = ("mysql.connector",)


class _ProgramFilter(logging.Filter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def filter(self, record: logging.LogRecord) -> bool:
        record.program = self.program
        return True


def setup_logging(program: str, level: str | int | None = None, stream=None) -> None:
    """Configure the root logger once for ``program``; level from arg or ``$EV_LOG_LEVEL`` (INFO).
    The loggers of ``QUIET_LIBRARIES`` pass warnings and errors only."""
    level = level or os.environ.get("EV_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ProgramFilter(program))
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def add_log_level_argument(parser) -> None:
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EV_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity (default: $EV_LOG_LEVEL or INFO)",
    )


class _AroundLiveLine(logging.Handler):
    """Wraps a handler: under ``lock``, ``before()`` runs, the record is written, ``after()`` runs."""

    def __init__(self, inner: logging.Handler, lock, before, after) -> None:
        super().__init__(inner.level)
        self.inner, self.lock, self.before, self.after = inner, lock, before, after

    def handle(self, record: logging.LogRecord) -> bool:
        with self.lock:
            self.before()
            try:
                return bool(self.inner.handle(record))
            finally:
                self.after()

    def emit(self, record: logging.LogRecord) -> None:  # not used: handle() delegates
        self.inner.emit(record)


def guard_live_line(lock, before, after=lambda: None) -> None:
    """A screen that redraws a line in place on the terminal calls this once: every log record
    then clears (``before``) and redraws (``after``) that line, under the screen's ``lock``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, _AroundLiveLine):
            root.removeHandler(handler)
            root.addHandler(_AroundLiveLine(handler, lock, before, after))


def shown(text: str, limit: int = 120) -> str:
    """``text`` fit for a log line or an audit entry: characters that are not printable become
    '?', and it is cut to ``limit`` characters (the last three then '...')."""
    text = "".join(c if c.isprintable() else "?" for c in str(text)[:limit + 1])
    return text if len(text) <= limit else text[:limit - 3] + "..."
