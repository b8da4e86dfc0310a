"""Single keys from a program's terminal, or letters from a pipe: the Engine's keys when its
menu is not on screen, the Monitor's menu.

On a terminal each key acts at once (cbreak mode, restored on exit); on a pipe
the same letters act as they are read. A key bound to a *prompt* collects a line
(echoed on a terminal) and hands it to its action, e.g. the Engine's ``r`` then a
driver id (each program binds its keys in its ``cli.py``). ``on_terminal`` tells
whether a person is at a terminal (stdin and stdout both are one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """A key that asks for a line of text first."""

    question: str
    action: Callable[[str], object]


Action = Callable[[], object] | Prompt


def on_terminal(stdin=None, stdout=None) -> bool:
    """Both stdin and stdout are a terminal (not a pipe, a file, or closed)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        return stdin is not None and stdout is not None and stdin.isatty() and stdout.isatty()
    except (AttributeError, OSError, ValueError):  # closed, or no such stream
        return False


@contextlib.contextmanager
def _cbreak(stream):
    if not stream.isatty():
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_keyboard(actions: dict[str, Action], stop: threading.Event, stream=None, echo=None) -> None:
    """Read keys until ``stop`` or end of input; run ``actions[key]`` for each known key."""
    stream = stream or sys.stdin
    if stream is None or stream.closed:
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    with _cbreak(stream) as terminal:
        show = echo or ((lambda text: (sys.stdout.write(text), sys.stdout.flush())) if terminal else (lambda text: None))
        prompt: Prompt | None = None
        line = ""
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd, 64)
            if not data:
                return  # end of input: keep running without a keyboard
            for char in data.decode(errors="ignore"):
                if prompt is not None:
                    if char in "\r\n":
                        show("\n")
                        prompt.action(line.strip())
                        prompt, line = None, ""
                    elif char in "\x7f\b":
                        line = line[:-1]
                    else:
                        line += char
                        show(char)
                    continue
                action = actions.get(char.lower())
                if isinstance(action, Prompt):
                    prompt = action
                    show(action.question)
                elif action is not None:
                    action()
