"""The Monitor's session with Central: register, a sign of life every second,
faults and recoveries once per change, reconnect by itself.

Runs in its own thread (``run``). The health-check loop hands it the Engine's
latest verdict with ``set_health``; the client reports it as soon as it sees a
change (within ``poll`` seconds), and again right after every registration.

Whatever needs the Engine runs on a second thread per session (``EngineRelay``),
so that waiting for a slow Engine never delays a sign of life: Central's
``SUP``, ``STOP``, ``RESUME`` and ``CAN`` are queued (bounded) and relayed one at
a time, in order, and their answers sent to Central when they come. The same
thread asks the Engine which supply it holds (``SQ``) after every registration
and after every new link to the Engine, and passes the ``SST`` on to Central;
an Engine that cannot answer is asked again, with backoff, while it is
reachable, and at once when a new link to it opens.

Secure mode (docs/security.md): the link is TLS (``tls``, Central's certificate verified)
and ``REG`` carries the CP's credential. Central answers ``AUTH#OK`` and then the CP's key
(``KEY``), which the client keeps in memory only and hands to the Engine (``EngineProbe.
set_keys``: before anything else, and again on every new Engine link). ``RVK`` (an operator
revoked the keys) is passed on the same way; the key is forgotten and the client does not
register again by itself: it waits (``halted``) until ``reauthenticate`` (the menu's [a]).
So does an ``AUTH#KO`` when a person can press [a] (``interactive``); otherwise the client
stops and the Monitor exits 1. Transient failures (Central unreachable, a lost session)
are retried with backoff. ``AUTH#OK`` may carry a resumption ticket: kept in memory and sent
with the next ``REG``, it spares Central an scrypt check of the credential, also after Central
restarts.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import (Auth, Avr, Can, Err, Fin, Hb, Key, Message, MessageError, Rec, Reg, Resume, Rvk,
                                Sq, Sst, Stop, Sup, Supr)
from ev_common.tls import TLSClient, fingerprint_of
from ev_common.retry import Backoff
from ev_common.words import CANNOT_CONNECT

from .engine_probe import EngineProbe, Verdict

log = logging.getLogger(__name__)

RELAY_QUEUE = 32  # Central's requests waiting for the Engine; beyond it a SUP is refused at once
SUP_TIMEOUT = 2.0  # the Engine's SUPR, within Central's 3 s
SQ_TIMEOUT = 1.0  # the Engine's SST
ENGINE_LATE = "the Engine did not answer"
BUSY = "the Monitor is busy with earlier requests"


AGAIN = "press [a] to authenticate again"
RESTART = "restart the Monitor to authenticate again"
REFUSED = "refused"
REVOKED = "keys revoked"


class RegistrationRefused(Exception):
    """Central answered AUTH#KO: retrying with the same data would not help."""


class KeysRevoked(Exception):
    """Central sent RVK: the CP is out of service until it authenticates again."""


@dataclass(frozen=True)
class Halt:
    """Why the client waits for a person instead of registering again: ``kind`` is REFUSED
    (AUTH#KO) or REVOKED (RVK), ``reason`` Central's text."""

    kind: str
    reason: str


@dataclass(frozen=True)
class CentralStatus:
    """What the client can tell about its link to Central, for the menu's [s] (never the key)."""

    address: str
    tls: bool
    tls_version: str | None
    fingerprint: str | None  # Central's certificate, as last seen (or the pinned one before)
    verified_by: str | None  # "pinned fingerprint" or "CA file"
    registered_since: datetime | None
    key_version: int | None  # None: no KEY held
    credential: bool  # REG carries one (secure mode)
    halted: Halt | None


class _SeenCertificate:
    """``Link.connect``'s ``tls``: the ``TLSClient``'s handshake, noting Central's certificate."""

    def __init__(self, client: TLSClient) -> None:
        self.client = client
        self.fingerprint: str | None = client.pinned

    def handshake(self, sock, server_hostname=None, **options):
        channel = self.client.handshake(sock, server_hostname, **options)
        self.fingerprint = fingerprint_of(channel.peer_certificate())
        return channel


class CentralClient:
    def __init__(self, host: str, port: int, registration: Reg, *, config: LinkConfig = LinkConfig(),
                 heartbeat: float = 1.0, poll: float = 0.1, auth_timeout: float = 5.0,
                 backoff: Backoff | None = None, say: Callable[[str], None] | None = None,
                 engine: EngineProbe | None = None, relay_queue: int = RELAY_QUEUE,
                 tls: TLSClient | None = None, interactive: bool = False,
                 now: Callable[[], datetime] = datetime.now) -> None:
        self.host, self.port = host, port
        self.engine = engine  # where Central's requests and commands are passed on
        self.registration = registration
        self.config = config
        self._tls = None if tls is None else _SeenCertificate(tls)
        self.interactive = interactive  # a person can press [a]: an AUTH#KO waits for it
        self._now = now
        self.heartbeat = heartbeat
        self.poll = poll
        self.auth_timeout = auth_timeout
        self._backoff = backoff or Backoff(initial=0.5, cap=5.0)
        self._say = say or (lambda text: log.info("%s", text))
        self._health: Verdict | None = None
        self._lock = threading.Lock()
        self.registered = threading.Event()
        self.refused: str | None = None  # AUTH#KO with nobody to press [a]: the client has stopped
        self._relay: EngineRelay | None = None
        self.relay_queue = relay_queue
        self._halted: Halt | None = None  # waiting for reauthenticate()
        self._again = threading.Event()  # reauthenticate() was asked: register now
        self._registered_since: datetime | None = None
        self._key: Key | None = None  # Central's last KEY, in memory only
        self._ticket = ""  # the resumption ticket of the last AUTH#OK, in memory only, sent with the next REG
        self._link: Link | None = None

    @property
    def secure(self) -> bool:
        """REG carries a credential: Central must answer AUTH#OK with the CP's KEY."""
        return bool(self.registration.credential)

    @property
    def halted(self) -> Halt | None:
        return self._halted

    def status(self) -> CentralStatus:
        link, tls, key = self._link, self._tls, self._key
        return CentralStatus(
            address=f"{self.host}:{self.port}", tls=tls is not None,
            tls_version=link.tls_version if link is not None else None,
            fingerprint=tls.fingerprint if tls is not None else None,
            verified_by=None if tls is None else "pinned fingerprint" if tls.client.pin is not None else "CA file",
            registered_since=self._registered_since if self.registered.is_set() else None,
            key_version=None if key is None else key.version, credential=self.secure, halted=self._halted)

    def reauthenticate(self, registration: Reg | None = None) -> None:
        """The menu's [a]: end the session if any and register again now (with ``registration``,
        e.g. a credential read again), whatever stopped the client from doing it by itself."""
        self._say("authenticating again at Central...")
        with self._lock:
            if registration is not None:
                self.registration = registration
                self._ticket = ""  # it vouched for the credential read before
            self._backoff.reset()
            self._again.set()  # (before the halt is lifted: the loop that sees it lifted sees this too)
            self._halted = None

    def set_health(self, verdict: Verdict) -> None:
        with self._lock:
            self._health = verdict

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set (or Central refuses the registration and nobody can press [a])."""
        down_said = False
        while not stop.is_set():
            if self._halted is not None:  # only a person's [a] registers again
                self._again.wait(self.poll)
                continue
            self._again.clear()
            try:
                link = Link.connect(self.host, self.port, self.config, tls=self._tls)
            except LinkError as exc:
                if not down_said:
                    self._say(f"{CANNOT_CONNECT} at {self.host}:{self.port} ({exc}); retrying")
                    down_said = True
                self._pause(stop, self._backoff.next())
                continue
            self._link = link
            why = "reconnecting"
            try:
                self._register(link)
                down_said = False
                self._backoff.reset()
                self._session(link, stop)
                why = "authenticating again"
            except RegistrationRefused as exc:
                why = "registration refused"
                if not self.interactive:
                    self.refused = str(exc)
                    self._say(f"Central refused the registration: {exc}")
                    return
                self._halt(Halt(REFUSED, str(exc)), f"Central refused the registration: {exc}; {AGAIN}")
            except KeysRevoked as exc:
                why = "keys revoked"
                self._halt(Halt(REVOKED, str(exc)),
                           f"keys revoked by Central: {exc}; {AGAIN if self.interactive else RESTART}")
            except LinkError as exc:
                self._say(f"{CANNOT_CONNECT}: session lost ({exc}); reconnecting")
                down_said = True
            finally:
                self.registered.clear()
                link.close("Monitor stopping" if stop.is_set() else why)  # EOT
                self._link = None
                if self._relay is not None:  # after the close: an answer it was sending fails at once
                    self._relay.join(SUP_TIMEOUT + 1.0)
                    self._relay = None
            if self._halted is not None and self._halted.kind == REVOKED and self.engine is not None:
                self.engine.deliver_keys()  # the RVK, if the relay did not pass it on before the session ended
            if self._halted is None:
                self._pause(stop, self._backoff.next())

    def _pause(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt; [a] or ``stop`` cut it short."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not self._again.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, self.poll))

    def _halt(self, halt: Halt, text: str) -> None:
        with self._lock:
            if self._again.is_set():  # [a] was pressed meanwhile: it wins
                return
            self._halted = halt
        self._say(text)

    def _register(self, link: Link) -> None:
        """REG, then AUTH; in secure mode also the KEY that follows AUTH#OK, so that the Engine
        has it before anything else is relayed."""
        with self._lock:
            registration = self.registration
            if self._ticket and registration.credential:
                registration = dataclasses.replace(registration, ticket=self._ticket)
        link.send(registration)
        deadline = time.monotonic() + self.auth_timeout
        authorised = False
        while True:
            try:
                answer = link.recv(timeout=max(0.0, deadline - time.monotonic()))
            except MessageError as exc:
                log.warning("Central sent a bad message while registering: %s", exc)
                continue
            if answer is None:
                raise LinkError(f"no {'KEY' if authorised else 'AUTH'} from Central within {self.auth_timeout:g} s")
            if isinstance(answer, Auth) and not authorised:
                if not answer.ok:
                    self._ticket = ""
                    raise RegistrationRefused(answer.text or "no reason given")
                self._ticket = answer.ticket
                self._registered_since = self._now()
                self.registered.set()
                self._say(f"Registered at Central as {registration.cp_id}: {answer.text}")
                if not registration.credential:  # open mode: a KEY#<cp>#0 may follow (or not, from an older Central)
                    return
                authorised = True
            elif isinstance(answer, Key) and authorised and answer.cp_id == registration.cp_id:
                self._take_key(answer)
                return
            elif isinstance(answer, Rvk) and answer.cp_id == registration.cp_id:
                self._revoked(answer)
            else:
                log.warning("Central sent %s while %s was awaited; ignored", answer.OPCODE,
                            "KEY" if authorised else "AUTH")

    def _session(self, link: Link, stop: threading.Event) -> None:
        self._relay = EngineRelay(link, self.engine, self.registration.cp_id, self._say, poll=self.poll,
                                  size=self.relay_queue).start()
        try:
            self._serve(link, stop)
        finally:
            self._relay.stop()

    def _serve(self, link: Link, stop: threading.Event) -> None:
        """Signs of life and state changes on time; Central's messages read and handed on."""
        cp_id = self.registration.cp_id
        reported_ok = True  # a fresh registration presumes the Engine healthy
        next_beat = time.monotonic()
        while not stop.is_set() and not self._again.is_set():
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
        """Serve one message from Central: requests and commands for the Engine go to the relay."""
        if isinstance(message, Err):
            log.warning("Central answered an error: %s %s", message.code, message.text)
        elif isinstance(message, (Key, Rvk)) and message.cp_id != self.registration.cp_id:
            log.warning("Central sent %s for %s, not this CP; ignored", message.OPCODE, message.cp_id)
            link.send(Err("UNEXPECTED", f"{message.OPCODE} for {message.cp_id} at the Monitor of "
                                        f"{self.registration.cp_id}"))
        elif isinstance(message, Key):
            self._take_key(message)
        elif isinstance(message, Rvk):
            self._revoked(message)
        elif isinstance(message, (Sup, Stop, Resume, Can, Fin)):
            if isinstance(message, Sup):
                self._say(f"Central asks to authorise a supply for driver {message.driver_id} "
                          f"(session {message.session_id[:8]})")
            elif isinstance(message, Can):
                self._say(f"Central cancels the supply of session {message.session_id[:8]}: {message.reason}")
            elif isinstance(message, Fin):
                self._say(f"Central ends the supply of session {message.session_id[:8]} (its tag was presented)")
            else:
                self._say(f"Central: {'STOP (out of service)' if isinstance(message, Stop) else 'RESUME'}")
            if self._relay.submit(message):
                return
            log.error("%s from Central not relayed: %d requests already wait for the Engine",
                      message.OPCODE, self.relay_queue)
            if isinstance(message, Sup):
                link.send(Supr(message.cp_id, message.session_id, "KO", BUSY))
        else:
            link.send(Err("UNEXPECTED", f"a Monitor does not accept {message.OPCODE}"))

    def _take_key(self, message: Key) -> None:
        """Central's KEY: kept in memory, handed to the Engine before anything else."""
        self._key = message
        if self.engine is not None:
            self.engine.set_keys(message)
            if self._relay is not None:
                self._relay.submit(message)  # at once (or before the next health check)
        if message.open_mode:
            log.info("Central: open mode, no key (the Engine's records travel in clear)")
        else:
            self._say(f"key version {message.version} from Central, passed to the Engine")

    def _revoked(self, message: Rvk) -> None:
        """Central's RVK: the key is forgotten, the Engine told (on every new link too, until a
        new KEY); the session ends and the client waits for [a]. (Passed on when the session
        is over: the relay's queue is dropped with it.)"""
        self._key = None
        if self.engine is not None:
            self.engine.set_keys(message)
        raise KeysRevoked(message.reason)


class EngineRelay:
    """One Central session's work with the Engine, on its own thread, one exchange at a time.

    ``submit`` queues a message from Central (never blocks; False when the queue is full).
    The thread relays each in order and sends the answer to Central on the session's link;
    between them it reports the Engine's supply (``SQ`` -> ``SST``) when one is due.
    """

    def __init__(self, link: Link, engine: EngineProbe | None, cp_id: str, say: Callable[[str], None], *,
                 poll: float = 0.1, size: int = RELAY_QUEUE, sup_timeout: float = SUP_TIMEOUT,
                 sq_timeout: float = SQ_TIMEOUT, backoff: Backoff | None = None) -> None:
        self.link, self.engine, self.cp_id = link, engine, cp_id
        self._say = say
        self.poll = poll
        self.sup_timeout, self.sq_timeout = sup_timeout, sq_timeout
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=size)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-relay", daemon=True)
        self._sq_backoff = backoff or Backoff(initial=0.5, cap=5.0)
        self._sst_due = True  # after every registration...
        self._sq_at = 0.0
        self._links_seen: int | None = None  # ...and after every new link to the Engine

    def start(self) -> "EngineRelay":
        self._thread.start()
        return self

    def submit(self, message: Message) -> bool:
        try:
            self._queue.put_nowait(message)
            return True
        except queue.Full:
            return False

    def stop(self) -> None:
        """Stop taking work; what is queued is dropped (Central repeats what matters)."""
        self._done.set()

    def join(self, timeout: float) -> None:
        self._done.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._done.is_set():
                self._report_supply_if_due()
                try:
                    message = self._queue.get(timeout=self.poll)
                except queue.Empty:
                    continue
                if not self._done.is_set():
                    self._relay(message)
        except LinkError as exc:  # the session with Central is over: its loop notices and reconnects
            log.info("relay to the Engine stopped: %s", exc)
        except Exception:
            log.exception("relaying to the Engine failed")

    def _relay(self, message: Message) -> None:
        engine = self.engine
        if isinstance(message, (Key, Rvk)):
            if engine is not None:  # what the probe holds, which is the newest (this may be older)
                engine.deliver_keys()
        elif isinstance(message, Sup):
            answer = None
            if engine is not None:
                answer = engine.relay(message, Supr, self.sup_timeout,
                                      match=lambda a: a.session_id == message.session_id)
            late = answer is None
            if late:
                answer = Supr(self.cp_id, message.session_id, "KO", ENGINE_LATE)
            self.link.send(answer)
            self._say(f"Engine {'accepted' if answer.ok else 'refused'} the supply"
                      + ("" if answer.ok else f": {answer.reason}"))
            if late and engine is not None:  # it may still accept late: it must not keep that supply
                engine.relay(Can(self.cp_id, message.session_id, f"{ENGINE_LATE} in time"))
        elif engine is not None:
            engine.relay(message)

    def _report_supply_if_due(self) -> None:
        engine = self.engine
        if engine is None or not engine.connected:
            return  # unreachable: asked again once a new link to it is open
        if engine.links_opened != self._links_seen:  # a new link: the Engine may have restarted
            self._links_seen = engine.links_opened
            self._sst_due, self._sq_at = True, 0.0
        if not self._sst_due or time.monotonic() < self._sq_at:
            return
        answer = engine.relay(Sq(self.cp_id), Sst, self.sq_timeout)
        if answer is None:  # nothing to Central: its AVR says the Engine is faulty
            self._sq_at = time.monotonic() + self._sq_backoff.next()
            log.info("the Engine did not tell its supply; asking again")
            return
        self.link.send(answer)
        self._sst_due = False
        self._sq_backoff.reset()
        log.info("told Central the supply at the CP: %s %s", answer.phase, answer.session_id or "-")
