"""Central's side of the Monitor sessions: frames in -> the CP network -> frames out.

One thread per Monitor session (``LinkServer``). A session must register first
(``REG`` -> ``AUTH``); afterwards its Monitor sends ``HB`` every second and
``AVR``/``REC`` when its Engine fails or recovers. A newer registration of the
same cp_id replaces (and closes) the older session. A sweeper closes sessions
that fall silent (see ``ChargingNetwork.expire_silent``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from ev_common.link import Link, LinkConfig, LinkError, LinkServer
from ev_common.protocol import Auth, Avr, Err, Hb, Message, MessageError, Rec, Reg, Stop, Sup, Supr

from .core.network import ChargingNetwork, StateChange

log = logging.getLogger(__name__)

REGISTRATION_TIMEOUT = 10.0  # a session that has not registered by then is closed
SWEEP_INTERVAL = 0.2


class CPUnreachable(Exception):
    """The CP cannot be asked now: no Monitor session, a broken link, or no answer in time."""


class MonitorSession:
    """The token of one Monitor connection (hashable, compared by identity)."""

    _ids = itertools.count(1)

    def __init__(self, link: Link) -> None:
        self.link = link
        self.number = next(self._ids)
        self.cp_id: str | None = None
        self.waiting: dict[str, Future] = {}  # session_id -> the SUPR answering our SUP

    def __repr__(self) -> str:
        return f"session#{self.number}({self.cp_id or 'unregistered'} from {self.link.peer})"


class MonitorServer:
    """Serves Monitor sessions on ``host:port`` and keeps the network up to date."""

    def __init__(self, network: ChargingNetwork, on_change: Callable[[StateChange], None],
                 host: str, port: int, *, config: LinkConfig = LinkConfig(),
                 max_sessions: int = 10_000, recv_timeout: float = 1.0) -> None:
        self.network = network
        self.on_change = on_change
        self.recv_timeout = recv_timeout
        self._server = LinkServer(host, port, self._serve, name="monitor", max_sessions=max_sessions,
                                  config=config)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def ask(self, cp_id: str, question: Sup, timeout: float) -> Supr:
        """Ask the CP (through its Monitor) to take a supply; raises ``CPUnreachable``."""
        session = self.network.owner(cp_id)
        if session is None:
            raise CPUnreachable(f"{cp_id} has no Monitor connected")
        answer: Future = Future()
        session.waiting[question.session_id] = answer
        try:
            session.link.send(question)
            return answer.result(timeout)
        except LinkError as exc:
            raise CPUnreachable(f"{cp_id}: link to its Monitor failed: {exc}") from None
        except FutureTimeout:
            raise CPUnreachable(f"{cp_id} did not answer within {timeout:g} s") from None
        finally:
            session.waiting.pop(question.session_id, None)

    def command(self, cp_id: str, message: Message) -> bool:
        """Push a command (STOP, RESUME) to the CP's Monitor; False when it cannot be delivered now."""
        session = self.network.owner(cp_id)
        if session is None:
            return False
        try:
            session.link.send(message)
            return True
        except LinkError as exc:
            log.warning("%s: %s not delivered: %s", cp_id, message.OPCODE, exc)
            return False

    def session_count(self) -> int:
        """Monitor sessions open now (registered or not)."""
        return self._server.session_count()

    def start(self) -> "MonitorServer":
        self._server.start()
        self._sweeper = threading.Thread(target=self._sweep, name="silence-sweeper", daemon=True)
        self._sweeper.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.stop("Central shutting down")
        if self._sweeper is not None:
            self._sweeper.join(2)

    # -- one session ------------------------------------------------------------------------

    def _serve(self, link: Link) -> None:
        session = MonitorSession(link)
        log.info("Monitor connected from %s", link.peer)
        cause = "Monitor closed its connection"
        try:
            if not self._register(session):
                return
            while not self._stop.is_set():
                try:
                    message = link.recv(timeout=self.recv_timeout)
                except MessageError as exc:
                    log.warning("%r sent a bad message: %s", session, exc)
                    link.send(Err.about(exc))
                    continue
                if message is not None and not self._handle(session, message):
                    cause = "session replaced or expired"
                    return
        except LinkError as exc:
            cause = f"Monitor connection lost: {exc}"
        finally:
            if session.cp_id is not None:
                self._changed(self.network.session_ended(session.cp_id, session, cause))
            link.close("session over")

    def _register(self, session: MonitorSession) -> bool:
        """Wait for a valid REG; answer AUTH. False when the session ends unregistered."""
        link = session.link
        deadline = time.monotonic() + REGISTRATION_TIMEOUT
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                message = link.recv(timeout=min(self.recv_timeout, max(0.0, deadline - time.monotonic())))
            except MessageError as exc:
                log.warning("refused registration from %s: %s", link.peer, exc)
                reply = Auth.refused(str(exc.args[0])) if exc.opcode == "REG" else Err.about(exc)
                link.send(reply)
                continue
            if message is None:
                continue
            if not isinstance(message, Reg):
                link.send(Err("NOT_REGISTERED", f"send REG before {message.OPCODE}"))
                continue
            self._accept_registration(session, message)
            return True
        log.warning("%s did not register within %.0f s; closing", link.peer, REGISTRATION_TIMEOUT)
        return False

    def _accept_registration(self, session: MonitorSession, reg: Reg) -> None:
        log.info("REG received from %s: %s", session.link.peer, reg.to_data().decode())
        session.cp_id = reg.cp_id
        change, replaced = self.network.register(reg.cp_id, reg.location, reg.price_eur_kwh, session)
        if replaced is not None:
            log.warning("%s: a newer Monitor session from %s replaces %r", reg.cp_id, session.link.peer, replaced)
            replaced.link.close("replaced by a newer session for the same CP")
        self._changed(change)  # queued for the DB before the Monitor hears AUTH#OK
        reply = Auth.accepted()
        session.link.send(reply)
        log.info("AUTH#OK sent to %s (%s)", reg.cp_id, reply.text)
        if change.stopped:  # the CP must know it is out of service, also after a restart
            session.link.send(Stop(reg.cp_id))

    def _handle(self, session: MonitorSession, message: Message) -> bool:
        """Serve one message of a registered session; False when the session must end."""
        cp_id = session.cp_id
        if isinstance(message, Reg):
            if message.cp_id != cp_id:
                session.link.send(Auth.refused(f"this session is registered as {cp_id}"))
                return True
            self._accept_registration(session, message)
            return True
        if getattr(message, "cp_id", cp_id) != cp_id:
            session.link.send(Err("UNEXPECTED", f"this session speaks for {cp_id}, not {message.cp_id}"))
            return True
        if isinstance(message, Hb):
            return self.network.heartbeat(cp_id, session)
        if isinstance(message, Supr):
            answer = session.waiting.get(message.session_id)
            if answer is None:
                log.warning("%s: answer for supply %s came too late; ignored", cp_id, message.session_id)
            else:
                answer.set_result(message)
            return True
        if isinstance(message, Avr):
            log.info("%s: fault reported by its Monitor: %s", cp_id, message.reason)
            self._changed(self.network.engine_fault(cp_id, session, message.reason))
            return self.network.owner(cp_id) is session
        if isinstance(message, Rec):
            log.info("%s: recovery reported by its Monitor", cp_id)
            self._changed(self.network.engine_ok(cp_id, session))
            return self.network.owner(cp_id) is session
        session.link.send(Err("UNEXPECTED", f"Central does not accept {message.OPCODE} from a Monitor"))
        return True

    def _changed(self, change: StateChange | None) -> None:
        if change is not None:
            self.on_change(change)

    # -- silence -------------------------------------------------------------------------------

    def _sweep(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            for session, change in self.network.expire_silent():
                log.warning("%s: %s; closing its session", change.cp_id, change.cause)
                self._changed(change)
                session.link.close("silent for too long")
