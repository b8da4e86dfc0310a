"""The Monitor's session with Central: register, a sign of life every second,
faults and recoveries once per change, reconnect by itself.

Runs in its own thread (``run``). The health-check loop hands it the Engine's
latest verdict with ``set_health``; the client reports it as soon as it sees a
change (within ``poll`` seconds), and again right after every registration.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Avr, Err, Hb, Message, MessageError, Rec, Reg, Resume, Stop, Sup, Supr
from ev_common.retry import Backoff
from ev_common.words import CANNOT_CONNECT

from .engine_probe import EngineProbe, Verdict

log = logging.getLogger(__name__)



class RegistrationRefused(Exception):
    """Central answered AUTH#KO: retrying with the same data would not help."""


class CentralClient:
    def __init__(self, host: str, port: int, registration: Reg, *, config: LinkConfig = LinkConfig(),
                 heartbeat: float = 1.0, poll: float = 0.1, auth_timeout: float = 5.0,
                 backoff: Backoff | None = None, say: Callable[[str], None] | None = None,
                 engine: EngineProbe | None = None) -> None:
        self.host, self.port = host, port
        self.engine = engine  # where Central's requests and commands are passed on
        self.registration = registration
        self.config = config
        self.heartbeat = heartbeat
        self.poll = poll
        self.auth_timeout = auth_timeout
        self._backoff = backoff or Backoff(initial=0.5, cap=5.0)
        self._say = say or (lambda text: log.info("%s", text))
        self._health: Verdict | None = None
        self._lock = threading.Lock()
        self.registered = threading.Event()
        self.refused: str | None = None

    def set_health(self, verdict: Verdict) -> None:
        with self._lock:
            self._health = verdict

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set (or Central refuses the registration)."""
        down_said = False
        while not stop.is_set():
            try:
                link = Link.connect(self.host, self.port, self.config)
            except LinkError as exc:
                if not down_said:
                    self._say(f"{CANNOT_CONNECT} at {self.host}:{self.port} ({exc}); retrying")
                    down_said = True
                stop.wait(self._backoff.next())
                continue
            try:
                self._register(link)
                down_said = False
                self._backoff.reset()
                self._session(link, stop)
            except RegistrationRefused as exc:
                self.refused = str(exc)
                self._say(f"Central refused the registration: {exc}")
                link.close("registration refused")
                return
            except LinkError as exc:
                self._say(f"{CANNOT_CONNECT}: session lost ({exc}); reconnecting")
                down_said = True
            finally:
                self.registered.clear()
                link.close("Monitor stopping" if stop.is_set() else "reconnecting")
            stop.wait(self._backoff.next())

    def _register(self, link: Link) -> None:
        link.send(self.registration)
        deadline = time.monotonic() + self.auth_timeout
        while True:
            try:
                answer = link.recv(timeout=max(0.0, deadline - time.monotonic()))
            except MessageError as exc:
                log.warning("Central sent a bad message while registering: %s", exc)
                continue
            if answer is None:
                raise LinkError(f"no AUTH from Central within {self.auth_timeout:g} s")
            if isinstance(answer, Auth):
                if not answer.ok:
                    raise RegistrationRefused(answer.text)
                self.registered.set()
                self._say(f"Registered at Central as {self.registration.cp_id}: {answer.text}")
                return
            log.warning("Central sent %s before AUTH; ignored", answer.OPCODE)

    def _session(self, link: Link, stop: threading.Event) -> None:
        cp_id = self.registration.cp_id
        reported_ok = True  # a fresh registration presumes the Engine healthy
        next_beat = time.monotonic()
        while not stop.is_set():
            with self._lock:
                health = self._health
            if health is not None and health.ok != reported_ok:
                link.send(Rec(cp_id) if health.ok else Avr(cp_id, health.reason[:200]))
                reported_ok = health.ok
                self._say(f"reported to Central: {'recovery' if health.ok else 'fault: ' + health.reason}")
            if time.monotonic() >= next_beat:
                link.send(Hb(cp_id))
                next_beat += self.heartbeat
                if next_beat < time.monotonic():  # we fell behind (paused process): do not burst
                    next_beat = time.monotonic() + self.heartbeat
            try:
                message = link.recv(timeout=self.poll)
            except MessageError as exc:
                log.warning("Central sent a bad message: %s", exc)
                link.send(Err.about(exc))
                continue
            if message is not None:
                self._from_central(link, message)

    def _from_central(self, link: Link, message: Message) -> None:
        """Serve one message from Central: pass requests and commands on to the Engine."""
        cp_id = self.registration.cp_id
        if isinstance(message, Err):
            log.warning("Central answered an error: %s %s", message.code, message.text)
        elif isinstance(message, Sup):
            self._say(f"Central asks to authorise a supply for driver {message.driver_id} "
                      f"(session {message.session_id[:8]})")
            answer = self.engine.relay(message, Supr) if self.engine is not None else None
            if answer is None:
                answer = Supr(cp_id, message.session_id, "KO", "the Engine did not answer")
            link.send(answer)
            self._say(f"Engine {'accepted' if answer.ok else 'refused'} the supply"
                      + ("" if answer.ok else f": {answer.reason}"))
        elif isinstance(message, (Stop, Resume)):
            self._say(f"Central: {'STOP (out of service)' if isinstance(message, Stop) else 'RESUME'}")
            if self.engine is not None:
                self.engine.relay(message)
        else:
            link.send(Err("UNEXPECTED", f"a Monitor does not accept {message.OPCODE}"))
