"""A scripted Central in secure mode for the Monitor's tests: a ``LinkReactor`` with TLS (a
self-signed certificate, pinned by the Monitor, or its own CA file) on a loopback port.

It answers a ``REG`` whose credential is ``credential`` with ``AUTH#OK`` (and the resumption ticket
``ticket<n>``) and ``KEY#<cp>#<n>#<key>`` (a new version and key at each registration), any other
``REG`` with ``AUTH#KO`` and a reason; ``revoke`` sends ``RVK`` and closes the session, as Central
does; ``drop`` closes it, as a Central that stops. Every message is recorded
(with the session it came on); waiting is on conditions with deadlines.
"""

from __future__ import annotations

import base64
import os
import threading
from decimal import Decimal
from pathlib import Path
from typing import Callable

from ev_common.protocol import Auth, Hb, Key, Message, MessageError, Reg, Rvk
from ev_common.reactor import LinkReactor
from ev_common.tls import ensure_certificate, server_context
from tests.cp.fakes import FAST, HOST, FakeEngine
from tests.support.waiting import wait_on

CREDENTIAL = "evc1_" + "Q" * 43  # the form EV_Registry gives (ev_common/credentials.py)
PRICE = Decimal("0.48")


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")


class SecureCentral:
    """Central's Monitor port in secure mode, scripted (see the module's docstring)."""

    def __init__(self, directory: Path, *, credential: str = CREDENTIAL, tls: bool = True,
                 refusal: str = "wrong credential for this CP") -> None:
        self.credential = credential
        self.refusal = refusal
        self.certificate = ensure_certificate(directory, "central", [HOST])
        self.received: list[tuple[int, Message]] = []  # (session number, message)
        self.keys: list[Key] = []  # every KEY sent, in order
        self.endings: list[str] = []
        self.links: list = []
        self._cond = threading.Condition()
        context = server_context(self.certificate.cert_path, self.certificate.key_path) if tls else None
        self.reactor = LinkReactor(HOST, 0, self, name="secure-central", config=FAST, tls=context)

    # -- the test's side --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.reactor.address[1]

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint

    def start(self) -> "SecureCentral":
        self.reactor.start()
        return self

    def stop(self) -> None:
        self.reactor.stop("test over", grace=2.0)

    def of(self, kind: type[Message]) -> list[Message]:
        with self._cond:
            return [m for _, m in self.received if isinstance(m, kind)]

    def wait(self, predicate: Callable[[], object], timeout: float, what: str):
        return wait_on(self._cond, predicate, timeout, what,
                       lambda: f"received {[m.OPCODE for _, m in self.received][-20:]}, endings {self.endings}")

    def wait_for(self, kind: type[Message], timeout: float, count: int = 1) -> Message:
        return self.wait(lambda: (lambda ms: ms[count - 1] if len(ms) >= count else None)(self.of(kind)),
                         timeout, f"{count} {kind.OPCODE}")

    def revoke(self, reason: str) -> None:
        """An operator's ``keys revoke``: RVK on the live session, then Central closes it."""
        with self._cond:
            link = self.links[-1]
        link.send(Rvk(self.of(Reg)[-1].cp_id, reason))
        link.close("keys revoked")

    def drop(self) -> None:
        """The live session closed, as by a Central that stops: the Monitor registers again."""
        with self._cond:
            link = self.links[-1]
        link.close("Central stopping")

    # -- the reactor's handler ------------------------------------------------------------------------

    def opened(self, link) -> int:
        with self._cond:
            self.links.append(link)
            self._cond.notify_all()
            return len(self.links)

    def inline(self, session: int, message) -> bool | None:
        if not isinstance(message, Hb):
            return None
        self._record(session, message)
        return True

    def message(self, session: int, message):
        if isinstance(message, MessageError):
            return True
        self._record(session, message)
        if not isinstance(message, Reg):
            return True
        if message.credential != self.credential:
            return Auth.refused(self.refusal if message.credential else "a credential is required (secure mode)")
        with self._cond:
            key = Key(message.cp_id, len(self.keys) + 1, new_key())
            self.keys.append(key)
        return [Auth.accepted(ticket=f"ticket{key.version}"), key]

    def closed(self, session: int, cause: str) -> None:
        with self._cond:
            self.endings.append(cause)
            self._cond.notify_all()

    def _record(self, session: int, message: Message) -> None:
        with self._cond:
            self.received.append((session, message))
            self._cond.notify_all()


class SessionEngine(FakeEngine):
    """A ``FakeEngine`` that also notes on which of its sessions each message came."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.by_session: list[tuple[int, Message]] = []

    def answer(self, link, message: Message) -> None:
        with self._cond:
            self.by_session.append((self.sessions, message))
        super().answer(link, message)

    def first_of_session(self, session: int) -> Message | None:
        with self._cond:
            return next((m for s, m in self.by_session if s == session), None)

    def restart(self) -> "SessionEngine":
        """Stopped and started again on the same port, as an Engine that crashed and came back."""
        port = self.port
        self.stop()
        again = SessionEngine(port)
        return again.start()

