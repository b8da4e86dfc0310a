"""The Monitor's channel to its Engine, over a link it keeps open.

``check()`` sends ``CHK#<cp_id>`` and waits (less than a second) for ``HEALTH``;
it never raises: every outcome is a ``Verdict``. ``relay()`` carries Central's
requests (``SUP``, answered ``SUPR``) and commands (``STOP``, ``RESUME``, ``CAN``)
to the Engine, and the Monitor's own ``SQ`` (answered ``SST``). One exchange at a
time (a lock), so answers never cross; an answer that arrives after its exchange
gave up is skipped by the next one (``match`` tells a late ``SUPR`` from the right
one). A broken link is dropped and reopened on a later call, after a capped,
jittered backoff; on every new link the Engine is told again if Central has
stopped the CP, and ``links_opened`` counts up (the Engine may have restarted).

The CP's keys: ``set_keys`` takes Central's last ``KEY`` (or ``RVK``) from any thread; it
goes to the Engine before the next message on the link, and first on every new link (the
Engine may have restarted), before anything else. The key is kept in memory only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ev_common.link import Link, LinkConfig, LinkError, SessionRefused
from ev_common.protocol import Chk, Health, Key, Message, MessageError, Resume, Rvk, Stop
from ev_common.retry import Backoff

log = logging.getLogger(__name__)

ENGINE_LINK = LinkConfig(connect_timeout=0.5, handshake_timeout=0.5, ack_timeout=0.2, max_retries=3,
                         write_timeout=1.0)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # for people: "OK", "Engine reports KO", "Engine unreachable: ..."


class EngineProbe:
    def __init__(self, host: str, port: int, cp_id: str, *, answer_timeout: float = 0.8,
                 config: LinkConfig = ENGINE_LINK, backoff: Backoff | None = None,
                 clock=time.monotonic) -> None:
        self.host, self.port, self.cp_id = host, port, cp_id
        self.answer_timeout = answer_timeout
        self.config = config
        self._backoff = backoff or Backoff(initial=0.25, cap=1.0)
        self._clock = clock
        self._link: Link | None = None
        self._lock = threading.RLock()
        self.stopped = False  # Central's Stop, replayed to every new Engine link
        self._retry_at = 0.0
        self._last_failure = Verdict(False, "Engine not checked yet")
        self.links_opened = 0  # how many links to the Engine were opened so far
        self._keys: Key | Rvk | None = None  # what the Engine must know of its keys (Central's last word)
        self._keys_due = False  # not told on this link yet
        self._keys_lock = threading.Lock()  # (set_keys never waits for an exchange under way)

    @property
    def connected(self) -> bool:
        """True while a link to the Engine is open (it was reachable at its last exchange)."""
        return self._link is not None

    def set_keys(self, message: Key | Rvk) -> None:
        """Central's ``KEY`` (or ``RVK``: the key is forgotten): for the Engine before the next
        message, and on every new link."""
        with self._keys_lock:
            self._keys, self._keys_due = message, True

    def deliver_keys(self) -> None:
        """Tell the Engine its keys now, if it has not been told on this link."""
        with self._lock:
            link = self._connected()
            if isinstance(link, Verdict):
                return
            try:
                self._tell_keys(link)
            except LinkError as exc:
                self._drop(f"Engine link lost: {exc}")

    def _tell_keys(self, link: Link) -> None:
        """(Holding the lock.) Send the keys' news, once per link and change."""
        with self._keys_lock:
            message, due = self._keys, self._keys_due
            self._keys_due = False
        if due and message is not None:  # (a failed send drops the link: a new one tells it again)
            link.send(message)
            log.info("told the Engine its keys: %s", _keys_text(message))

    def check(self) -> Verdict:
        with self._lock:
            link = self._connected()
            if isinstance(link, Verdict):
                return link
            try:
                self._tell_keys(link)
                answer = self._exchange(link, Chk(self.cp_id), Health, self.answer_timeout)
            except (LinkError, MessageError) as exc:
                return self._drop(f"Engine link lost: {exc}")
            if answer is None:
                return self._drop(f"Engine did not answer within {self.answer_timeout:g} s")
            return Verdict(True, "OK") if answer.ok else Verdict(False, f"Engine answers KO ({answer.detail or 'no detail'})")

    def relay(self, message: Message, answer_type: type[Message] | None = None,
              timeout: float = 2.0, match: Callable[[Message], bool] | None = None) -> Message | None:
        """Pass a message to the Engine; its answer (``answer_type``, and ``match`` if given) or None."""
        with self._lock:
            if isinstance(message, (Stop, Resume)):
                self.stopped = isinstance(message, Stop)
            link = self._connected()
            if isinstance(link, Verdict):
                log.warning("%s not passed to the Engine: %s", message.OPCODE, link.reason)
                return None
            try:
                self._tell_keys(link)
                if answer_type is None:
                    link.send(message)
                    return None
                return self._exchange(link, message, answer_type, timeout, match)
            except (LinkError, MessageError) as exc:
                self._drop(f"Engine link lost: {exc}")
                return None

    def _exchange(self, link: Link, message: Message, answer_type: type[Message], timeout: float,
                  match: Callable[[Message], bool] | None = None):
        link.send(message)
        deadline = self._clock() + timeout
        while True:
            answer = link.recv(timeout=max(0.0, deadline - self._clock()))
            if answer is None or (isinstance(answer, answer_type) and (match is None or match(answer))):
                return answer
            log.warning("Engine sent %s while %s was awaited (a late answer?); ignored",
                        answer.OPCODE, answer_type.OPCODE)

    def close(self) -> None:
        with self._lock:  # waits for an exchange under way (bounded by its timeout)
            if self._link is not None:
                self._link.close("Monitor stopping")
                self._link = None

    def _connected(self) -> Link | Verdict:
        if self._link is not None:
            return self._link
        if self._clock() < self._retry_at:
            return self._last_failure  # still waiting to retry: same verdict as the last attempt
        try:
            self._link = Link.connect(self.host, self.port, self.config)
        except SessionRefused as exc:
            return self._unreachable(f"Engine refused the Monitor (another Monitor is connected?): {exc}")
        except LinkError as exc:
            return self._unreachable(f"Engine unreachable: {exc}")
        self._backoff.reset()
        self.links_opened += 1
        log.info("connected to Engine at %s:%d", self.host, self.port)
        with self._keys_lock:
            self._keys_due = self._keys is not None
        try:
            self._tell_keys(self._link)  # before anything else: the Engine may have restarted
            if self.stopped:
                self._link.send(Stop(self.cp_id))
        except LinkError as exc:
            return self._drop(f"Engine link lost: {exc}")
        return self._link

    def _unreachable(self, reason: str) -> Verdict:
        self._retry_at = self._clock() + self._backoff.next()
        self._last_failure = Verdict(False, reason)
        return self._last_failure

    def _drop(self, reason: str) -> Verdict:
        self.close()
        return Verdict(False, reason)


def _keys_text(message: Key | Rvk) -> str:
    """For the log: never the key itself."""
    if isinstance(message, Rvk):
        return f"revoked ({message.reason})"
    return "open mode, no key" if message.open_mode else f"key version {message.version}"
