"""The operator's commands, typed on Central's standard input (until the panel arrives).

    stop CP001 | stop all        out of service: ends any supply, the CP shows PARADO
    resume CP001 | resume all    back in service (ACTIVADO); a CP a weather alert holds stays
                                 PARADO until the alert clears (docs/weather.md)
    list                         every CP with its state
    keys revoke CP001            secure mode: delete the CP's keys; out of service until its
                                 Monitor authenticates again
    help

Answers go to Central's log, where the operator already watches.
"""

from __future__ import annotations

import logging
import threading
from typing import TextIO

from ev_common.words import PARADO

from . import audit as audited
from .app import Central
from .core.states import IllegalTransition
from .store.base import StoreError

log = logging.getLogger("ev_central.operator")

HELP = "commands: stop <CP|all>, resume <CP|all>, keys revoke <CP>, list, help"


def execute(central: Central, line: str) -> str:
    """Run one command line; returns the answer for the operator. Both are audited
    (``operator.command``: actor "operator", no source address: typed at Central)."""
    answer = _execute(central, line)
    if answer:
        audit = getattr(central, "audit", None) or audited.NO_AUDIT
        audit.record(audited.OPERATOR_COMMAND, audited.OPERATOR, f"{' '.join(line.split())} -> {answer}",
                     _outcome(line.split()[0].lower(), answer))
    return answer


def _outcome(verb: str, answer: str) -> str:
    """The audit's outcome of a command, read from its answer."""
    if "cannot be reached" in answer:
        return audited.FAILED
    if answer.startswith("unknown ") or not (verb in ("help", "list") or answer.startswith(f"{verb}: ")
                                             or "keys revoked;" in answer):
        return audited.REFUSED
    return audited.OK


def _execute(central: Central, line: str) -> str:
    words = line.split()
    if not words:
        return ""
    verb, args = words[0].lower(), words[1:]
    if verb == "help":
        return HELP
    if verb == "list":
        rows = central.network.snapshot()
        if not rows:
            return "no CPs yet"
        return "; ".join(f"{r.cp_id} {r.state}{' (stopped)' if r.stopped else ''}"
                         f"{' (weather alert)' if central.network.weather_held(r.cp_id) else ''}" for r in rows)
    if verb in ("stop", "resume") and len(args) == 1:
        action = central.stop_cp if verb == "stop" else central.resume_cp
        targets = central.cp_ids() if args[0].lower() == "all" else [args[0]]
        done = []
        for cp_id in targets:
            try:
                change = action(cp_id)
            except KeyError:
                return f"unknown CP {cp_id}"
            except IllegalTransition as exc:
                return f"{cp_id}: {exc}"
            held = (" (held by a weather alert until it clears)"
                    if verb == "resume" and change.weather and change.new.value == PARADO else "")
            done.append(f"{cp_id} {change.new}{held}")
        return f"{verb}: " + (", ".join(done) if done else "no CPs")
    if verb == "keys" and len(args) == 2 and args[0].lower() == "revoke":
        try:
            return central.revoke_keys(args[1])
        except KeyError:
            return f"unknown CP {args[1]}"
        except ValueError as exc:
            return f"keys revoke: {exc}"
        except StoreError as exc:
            return f"keys revoke {args[1]}: nothing revoked, the database cannot be reached ({exc}); try again"
    return f"unknown command {line.strip()!r}; {HELP}"


def run_console(central: Central, stop: threading.Event, stream: TextIO) -> None:
    """Read commands until ``stop`` or end of input."""
    log.info("operator commands on standard input (help lists them)")
    while not stop.is_set():
        line = stream.readline()
        if not line:
            return
        answer = execute(central, line)
        if answer:
            log.info("%s", answer)
