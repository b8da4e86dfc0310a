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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import (Auth, Avr, Can, Err, Fin, Hb, Message, MessageError, Rec, Reg, Resume, Sq, Sst,
                                Stop, Sup, Supr)
from ev_common.retry import Backoff
from ev_common.words import CANNOT_CONNECT

from .engine_probe import EngineProbe, Verdict

log = logging.getLogger(__name__)

RELAY_QUEUE = 32  # Central's requests waiting for the Engine; beyond it a SUP is refused at once
SUP_TIMEOUT = 2.0  # the Engine's SUPR, within Central's 3 s
SQ_TIMEOUT = 1.0  # the Engine's SST
ENGINE_LATE = "the Engine did not answer"
BUSY = "the Monitor is busy with earlier requests"


class RegistrationRefused(Exception):
    """Central answered AUTH#KO: retrying with the same data would not help."""


class CentralClient:
    def __init__(self, host: str, port: int, registration: Reg, *, config: LinkConfig = LinkConfig(),
                 heartbeat: float = 1.0, poll: float = 0.1, auth_timeout: float = 5.0,
                 backoff: Backoff | None = None, say: Callable[[str], None] | None = None,
                 engine: EngineProbe | None = None, relay_queue: int = RELAY_QUEUE) -> None:
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
        self._relay: EngineRelay | None = None
        self.relay_queue = relay_queue

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
                link.close("Monitor stopping" if stop.is_set() else "reconnecting")  # EOT
                if self._relay is not None:  # after the close: an answer it was sending fails at once
                    self._relay.join(SUP_TIMEOUT + 1.0)
                    self._relay = None
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
        """Serve one message from Central: requests and commands for the Engine go to the relay."""
        if isinstance(message, Err):
            log.warning("Central answered an error: %s %s", message.code, message.text)
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
        if isinstance(message, Sup):
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
