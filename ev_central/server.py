"""Central's side of the Monitor sessions: frames in -> the CP network -> frames out.

Every idle session waits in one selector (``LinkReactor``), so thousands of Monitors
cost no thread each (see docs/performance.md): signs of life are served on the reactor
thread, registrations one at a time on a lane of their own, everything else by a few
workers, one per session at a time. A session must register first
(``REG`` -> ``AUTH``); afterwards its Monitor sends ``HB`` every second and
``AVR``/``REC`` when its Engine fails or recovers. A newer registration of the
same cp_id replaces (and closes) the older session. A sweeper closes sessions
that fall silent (see ``ChargingNetwork.expire_silent``).
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from ev_common.bounded import keep_newest
from ev_common.link import LinkConfig
from ev_common.reactor import LinkReactor, ReactorLink
from ev_common.words import some_of
from ev_common.protocol import Auth, Avr, Can, Err, Hb, Message, MessageError, Rec, Reg, Rvk, Sst, Stop, Sup, Supr

from .auth import OpenDoor, Refused
from .core.network import ChargingNetwork, StateChange

log = logging.getLogger(__name__)

REGISTRATION_TIMEOUT = 10.0  # a session that has not registered by then is closed
SWEEP_INTERVAL = 0.2
ANSWERS_KEPT = 64  # per session: supplies already answered or given up on, to tell a repeat from a late answer
GAVE_UP = "Central gave up waiting for the CP's answer"
LOUD_BATCH = 8  # registrations served together up to this many are logged one by one at INFO


class CPUnreachable(Exception):
    """The CP cannot be asked now: no Monitor session, a broken link, or no answer in time."""


class MonitorSession:
    """The token of one Monitor connection (hashable, compared by identity)."""

    _ids = itertools.count(1)

    def __init__(self, link: ReactorLink) -> None:
        self.link = link
        self.number = next(self._ids)
        self.cp_id: str | None = None
        self.opened = time.monotonic()
        self.waiting: dict[str, Future] = {}  # session_id -> the SUPR answering our SUP
        # session_id -> True (answered: a repeat of its SUPR is ignored) or False (Central gave up:
        # a late SUPR#OK is cancelled with CAN). Insertion-ordered, the oldest dropped first.
        self.settled: OrderedDict[str, bool] = OrderedDict()
        self._settle_lock = threading.Lock()

    def settle(self, session_id: str, answered: bool) -> None:
        with self._settle_lock:
            keep_newest(self.settled, session_id, answered, ANSWERS_KEPT)

    def __repr__(self) -> str:
        return f"session#{self.number}({self.cp_id or 'unregistered'} from {self.link.peer})"


class MonitorServer:
    """Serves Monitor sessions on ``host:port`` and keeps the network up to date."""

    def __init__(self, network: ChargingNetwork, on_change: Callable[[StateChange], None],
                 host: str, port: int, *, config: LinkConfig = LinkConfig(),
                 max_sessions: int = 10_000, workers: int = 4, tls: ssl.SSLContext | None = None,
                 authenticator=None, reuse_port: bool = False) -> None:
        """``tls``: serve TLS on the port (``ev_common.tls.server_context``); None, plaintext.
        ``authenticator``: who may register (``ev_central.auth``: ``OpenDoor`` by default,
        ``CPAuthenticator`` in secure mode)."""
        self.network = network
        self.authenticator = authenticator or OpenDoor()
        self.on_change = on_change
        self._server = LinkReactor(host, port, self, name="monitor", max_sessions=max_sessions, config=config,
                                   workers=workers, tls=tls, reuse_port=reuse_port)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._unregistered: set[MonitorSession] = set()
        self._lock = threading.Lock()
        self._stopping = False  # a clean stop: closing sessions is not the CPs' failure
        # what a CP reports of its supply after registering (SST): answered with the messages returned
        self.on_supply_state: Callable[[str, Sst], list[Message]] = lambda cp_id, report: []
        # many changes at once (a batch of registrations); None: ``on_change`` for each
        self.on_changes: Callable[[list[StateChange]], None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def ask(self, cp_id: str, question: Sup, timeout: float) -> Supr:
        """Ask the CP (through its Monitor) to take a supply; raises ``CPUnreachable``.

        The reactor sends the question (no thread here waits on a socket); this thread waits
        for the answer only, which fails at once if the link ends before the question was ACKed."""
        session = self.network.owner(cp_id)
        if session is None:
            raise CPUnreachable(f"{cp_id} has no Monitor connected")
        answer: Future = Future()
        session.waiting[question.session_id] = answer

        def delivered(ok: bool) -> None:  # (on the reactor thread)
            if not ok:
                try:
                    answer.set_exception(CPUnreachable(f"{cp_id}: link to its Monitor failed before it took "
                                                       f"{question.OPCODE}"))
                except InvalidStateError:  # answered or given up already
                    pass

        try:
            if not self._server.send(session.link, question, delivered):
                raise CPUnreachable(f"{cp_id}: its Monitor's session is closed or has too much queued")
            return answer.result(timeout)
        except FutureTimeout:
            raise CPUnreachable(f"{cp_id} did not answer within {timeout:g} s") from None
        finally:
            session.waiting.pop(question.session_id, None)
            if not answer.done():  # a SUPR#OK arriving from now on is cancelled (CAN)
                answer.cancel()
                session.settle(question.session_id, False)

    def command(self, cp_id: str, message: Message) -> bool:
        """Push a command (STOP, RESUME) to the CP's Monitor: queued, never waits (the reactor
        sends it behind the frame in flight); False when it cannot be queued now."""
        session = self.network.owner(cp_id)
        if session is None:
            return False
        if self._server.send(session.link, message):
            return True
        log.warning("%s: %s not delivered: its Monitor's session is closed or has too much queued", cp_id,
                    message.OPCODE)
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
        """A clean stop: sessions close with EOT, but no CP is marked or published DESCONECTADO
        for it (its Monitor registers again when Central is back; supplies go on at the CPs)."""
        self._stopping = True
        self._stop.set()
        self._server.stop("Central shutting down")
        if self._sweeper is not None:
            self._sweeper.join(2)

    # -- one session (LinkReactor's handler) ------------------------------------------------

    def opened(self, link: ReactorLink) -> MonitorSession:
        session = MonitorSession(link)
        with self._lock:
            self._unregistered.add(session)
        log.debug("Monitor connected from %s", link.peer)
        return session

    def inline(self, session: MonitorSession, message) -> bool | None:
        """Signs of life are served on the reactor thread: no waiting, no sending."""
        if isinstance(message, Hb) and session.cp_id is not None and message.cp_id == session.cp_id:
            return self.network.heartbeat(session.cp_id, session)
        return None

    def batch(self, items: list[tuple[MonitorSession, object]]) -> list:
        """(the register lane) The first messages of many sessions at once, one per session:
        their registrations are served together (``_accept_registrations``); anything else as
        ``message`` serves it. Returns each one's answer, in order."""
        answers: list = [False] * len(items)
        registrations: list[tuple[int, MonitorSession, Reg]] = []
        for index, (session, message) in enumerate(items):
            if session.cp_id is None and isinstance(message, Reg):
                registrations.append((index, session, message))
                continue
            try:
                answers[index] = self.message(session, message)
            except Exception:
                log.exception("serving %r failed", session)
        if registrations:
            with self._lock:
                self._unregistered.difference_update(session for _, session, _ in registrations)
            replies = self._accept_registrations([(session, reg) for _, session, reg in registrations])
            for (index, _, _), reply in zip(registrations, replies):
                answers[index] = reply
        return answers

    def acked(self, session: MonitorSession) -> None:
        """The Monitor acknowledged a frame (AUTH, a command): a sign of life too. So a CP's
        silence is counted from when its Monitor had its AUTH, not from when Central decided
        it: in a storm, AUTH may wait for the reactor, and the Monitor's first sign of life
        comes a second after it hears AUTH."""
        if session.cp_id is not None:
            self.network.heartbeat(session.cp_id, session)

    def lane(self, session: MonitorSession, message) -> str:
        """Registrations go to the register lane, one thread serving them in batches (``batch``,
        see LinkReactor); the rest to the main workers."""
        return "register" if session.cp_id is None else "main"

    def message(self, session: MonitorSession, message) -> bool | list[Message]:
        """Serve one message (or the MessageError of a bad one): the replies, which the reactor
        sends in order, or False to end the session."""
        link = session.link
        if session.cp_id is None:  # first a valid REG
            if isinstance(message, MessageError):
                log.warning("refused registration from %s: %s", link.peer, message)
                return [Auth.refused(str(message.args[0])) if message.opcode == "REG" else Err.about(message)]
            if not isinstance(message, Reg):
                return [Err("NOT_REGISTERED", f"send REG before {message.OPCODE}")]
            with self._lock:
                self._unregistered.discard(session)
            return self._accept_registration(session, message)
        if isinstance(message, MessageError):
            log.warning("%r sent a bad message: %s", session, message)
            return [Err.about(message)]
        return self._handle(session, message)

    def closed(self, session: MonitorSession, cause: str) -> None:
        with self._lock:
            self._unregistered.discard(session)
        if session.cp_id is not None and not self._stopping:
            self._changed(self.network.session_ended(session.cp_id, session, f"Monitor connection lost: {cause}"))

    def revoke(self, cp_id: str, reason: str) -> bool:
        """The CP's keys were revoked: it is out of service at once (DESCONECTADO, ``reason``);
        its Monitor is told (``RVK``) and its session closed. True if a session was open."""
        session = self.network.owner(cp_id)
        if session is None:
            return False
        self._changed(self.network.session_ended(cp_id, session, reason))
        link = session.link
        if not self._server.send(link, Rvk(cp_id, reason), lambda ok: link.close(reason)):
            link.close(reason)
        return True

    def _accept_registration(self, session: MonitorSession, reg: Reg) -> list[Message]:
        return self._accept_registrations([(session, reg)])[0]

    def _accept_registrations(self, pairs: list[tuple[MonitorSession, Reg]]) -> list:
        """Registrations, many at once: each is authenticated, then every admitted one enters the
        network under one taking of its lock and their changes go to the core together. Each
        answer is the replies to send (``AUTH``, the key, ``STOP`` if the CP is stopped), or
        False when serving it failed. A batch of a few logs each step of each CP, as one does; a
        storm's batch logs them at DEBUG and says at INFO how many registered."""
        loud = len(pairs) <= LOUD_BATCH
        say = log.info if loud else log.debug
        answers: list = [False] * len(pairs)
        admitted_ones: list[tuple[int, MonitorSession, Reg, object]] = []
        for session, reg in pairs:
            say("REG received from %s: %s", session.link.peer, reg.redacted())
        outcomes = self.authenticator.authenticate_many([(reg, session.link.peer) for session, reg in pairs])
        for index, ((session, reg), admitted) in enumerate(zip(pairs, outcomes)):
            if admitted is None:  # serving it failed (logged): its session ends
                continue
            if isinstance(admitted, Refused):
                log.info("AUTH#KO sent to %s from %s (%s)", reg.cp_id, session.link.peer, admitted.reason)
                answers[index] = [Auth.refused(admitted.reason)]
                continue
            session.cp_id = reg.cp_id
            admitted_ones.append((index, session, reg, admitted))
        if not admitted_ones:
            return answers
        results = self.network.register_many([(reg.cp_id, admitted.location, admitted.price_eur_kwh, session)
                                              for _, session, reg, admitted in admitted_ones])
        changes = []
        for (index, session, reg, admitted), (change, replaced) in zip(admitted_ones, results):
            if replaced is not None:
                log.warning("%s: a newer Monitor session from %s replaces %r", reg.cp_id, session.link.peer,
                            replaced)
                replaced.link.close("replaced by a newer session for the same CP")
            changes.append(change)
            reply = Auth.accepted(ticket=admitted.ticket)  # returned: the reactor sends it, then the key, then STOP
            say("AUTH#OK sent to %s (%s)", reg.cp_id, reply.text)
            replies: list[Message] = [reply, admitted.key]  # KEY#cp#0 in open mode: records in clear
            if change.stopped or change.weather:  # the CP must know it is out of service, also after a restart
                replies.append(Stop(reg.cp_id))
            answers[index] = replies
        self._changed_many(changes)  # queued for the DB before the Monitors hear AUTH#OK
        if not loud:
            names = [reg.cp_id for _, _, reg, _ in admitted_ones]
            log.info("AUTH#OK sent to %d CPs registering at once: %s", len(names), some_of(names))
        return answers

    def _handle(self, session: MonitorSession, message: Message) -> bool | list[Message]:
        """Serve one message of a registered session: its replies, or False when the session must end."""
        cp_id = session.cp_id
        if isinstance(message, Reg):
            if message.cp_id != cp_id:
                return [Auth.refused(f"this session is registered as {cp_id}")]
            replies = self._accept_registration(session, message)
            if replies is False:
                return False
            if isinstance(replies[0], Auth) and not replies[0].ok:  # refused now: the session ends
                self._changed(self.network.session_ended(cp_id, session, f"registration refused: {replies[0].text}"))
                session.link.close("registration refused")
            return replies
        if getattr(message, "cp_id", cp_id) != cp_id:
            return [Err("UNEXPECTED", f"this session speaks for {cp_id}, not {message.cp_id}")]
        if not self.network.heartbeat(cp_id, session):  # every message is a sign of life
            return False  # a newer session owns the CP: this one ends
        if isinstance(message, Hb):
            return True
        if isinstance(message, Supr):
            return self._answer(session, message)
        if isinstance(message, Sst):
            return list(self.on_supply_state(cp_id, message))
        if isinstance(message, Avr):
            log.info("%s: fault reported by its Monitor: %s", cp_id, message.reason)
            self._changed(self.network.engine_fault(cp_id, session, message.reason))
            return self.network.owner(cp_id) is session
        if isinstance(message, Rec):
            log.info("%s: recovery reported by its Monitor", cp_id)
            self._changed(self.network.engine_ok(cp_id, session))
            return self.network.owner(cp_id) is session
        return [Err("UNEXPECTED", f"Central does not accept {message.OPCODE} from a Monitor")]

    def _answer(self, session: MonitorSession, answer: Supr) -> list[Message]:
        """A SUPR: the answer awaited by ``ask``, a repeat of one (ignored: every message is
        idempotent), or one that came after Central gave up (an OK is cancelled at the CP)."""
        waiting = session.waiting.get(answer.session_id)
        if waiting is not None:
            try:
                waiting.set_result(answer)
                session.settle(answer.session_id, True)
                return []
            except InvalidStateError:  # answered already (this is a repeat), or given up just now
                pass
        if session.settled.get(answer.session_id) or (waiting is not None and not waiting.cancelled()):
            log.debug("%s: repeated answer for supply %s ignored", session.cp_id, answer.session_id)
        elif answer.ok:
            log.warning("%s accepted supply %s after Central gave up on it: cancelling it at the CP",
                        session.cp_id, answer.session_id[:8])
            return [Can(session.cp_id, answer.session_id, GAVE_UP)]
        else:
            log.info("%s: late refusal of supply %s ignored", session.cp_id, answer.session_id[:8])
        return []

    def _changed(self, change: StateChange | None) -> None:
        if change is not None:
            self.on_change(change)

    def _changed_many(self, changes: list[StateChange]) -> None:
        if self.on_changes is not None:
            self.on_changes(changes)
        else:
            for change in changes:
                self.on_change(change)

    # -- silence -------------------------------------------------------------------------------

    def _sweep(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            for session, change in self.network.expire_silent():
                log.warning("%s: %s; closing its session", change.cp_id, change.cause)
                self._changed(change)
                session.link.close("silent for too long")
            deadline = time.monotonic() - REGISTRATION_TIMEOUT
            with self._lock:
                late = [s for s in self._unregistered if s.opened < deadline]
                self._unregistered.difference_update(late)
            for session in late:
                log.warning("%s did not register within %.0f s; closing", session.link.peer, REGISTRATION_TIMEOUT)
                session.link.close("no registration")
