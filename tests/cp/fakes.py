"""Scripted peers of a Monitor on real loopback sockets: a fake Central and a fake Engine.

Each is a real ``LinkServer``; it records every message it receives with its arrival time
(``time.monotonic()``) and answers as its script says. Waiting is on conditions with deadlines.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Callable

from ev_common.link import Link, LinkClosed, LinkConfig, LinkError, LinkServer
from ev_common.protocol import Auth, Chk, Health, Message, MessageError, Reg, Sq, Sst, Sup, Supr
from tests.support.waiting import wait_on

HOST = "127.0.0.1"
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.3, max_retries=3, write_timeout=1.0)


class _Recorder:
    def __init__(self, name: str, port: int, config: LinkConfig) -> None:
        self.received: list[tuple[float, Message]] = []
        self.endings: list[str] = []  # how each session ended: "EOT" or the error
        self.sessions = 0
        self.link: Link | None = None
        self._cond = threading.Condition()
        self._done = threading.Event()
        self.server = LinkServer(HOST, port, self._serve, name=name, config=config)

    @property
    def port(self) -> int:
        return self.server.address[1]

    def start(self):
        self.server.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self.server.stop("test over", grace=2.0)

    def _serve(self, link: Link) -> None:
        with self._cond:
            self.sessions += 1
            self.link = link
            self._cond.notify_all()
        while not self._done.is_set():
            try:
                message = link.recv(timeout=0.2)
            except MessageError:
                continue
            except LinkClosed:
                self._ended("EOT")
                return
            except LinkError as exc:
                self._ended(f"broken: {exc}")
                return
            if message is None:
                continue
            with self._cond:
                self.received.append((time.monotonic(), message))
                self._cond.notify_all()
            try:
                self.answer(link, message)
            except LinkError as exc:
                self._ended(f"broken: {exc}")
                return

    def _ended(self, how: str) -> None:
        with self._cond:
            self.endings.append(how)
            self._cond.notify_all()

    def answer(self, link: Link, message: Message) -> None:
        raise NotImplementedError

    def of(self, kind: type[Message]) -> list[Message]:
        with self._cond:
            return [m for _, m in self.received if isinstance(m, kind)]

    def times(self, kind: type[Message]) -> list[float]:
        with self._cond:
            return [t for t, m in self.received if isinstance(m, kind)]

    def wait(self, predicate: Callable[[], object], timeout: float, what: str):
        return wait_on(self._cond, predicate, timeout, what,
                       lambda: f"received {[m.to_data() for _, m in self.received][-20:]}")

    def wait_for(self, kind: type[Message], timeout: float, count: int = 1,
                 where: Callable[[Message], bool] = lambda m: True) -> Message:
        found = self.wait(lambda: (lambda ms: ms[count - 1] if len(ms) >= count else None)(
            [m for m in self.of(kind) if where(m)]), timeout, f"{count} {kind.OPCODE}")
        return found


class FakeCentral(_Recorder):
    """Answers every REG with AUTH#OK; the test pushes messages with ``send``."""

    def __init__(self, port: int = 0, config: LinkConfig = FAST) -> None:
        super().__init__("fake-central", port, config)

    def answer(self, link: Link, message: Message) -> None:
        if isinstance(message, Reg):
            link.send(Auth.accepted())

    def send(self, message: Message) -> None:
        self.wait(lambda: self.link is not None, 5.0, "a Monitor's session")
        self.link.send(message)

    def drop_session(self) -> None:
        """Close the current session (EOT), as Central does when it replaces or drops one."""
        link, self.link = self.link, None
        link.close("dropped by the test")


class FakeEngine(_Recorder):
    """HEALTH#OK to CHK; SST to SQ (unless ``answer_sq`` is False); SUPR OK to SUP after
    ``sup_delay`` seconds, sent from another thread while the session goes on being read."""

    def __init__(self, port: int = 0, *, sup_delay: float = 0.0, answer_sq: bool = True,
                 config: LinkConfig = FAST) -> None:
        super().__init__("fake-engine", port, config)
        self.sup_delay = sup_delay
        self.answer_sq = answer_sq
        self.sst = lambda cp_id: Sst.idle(cp_id)

    def answer(self, link: Link, message: Message) -> None:
        if isinstance(message, Chk):
            link.send(Health("OK", ""))
        elif isinstance(message, Sq) and self.answer_sq:
            link.send(self.sst(message.cp_id))
        elif isinstance(message, Sup):
            answer = Supr(message.cp_id, message.session_id, "OK", "")
            if self.sup_delay <= 0:
                link.send(answer)
            else:
                threading.Thread(target=self._late, args=(link, answer), daemon=True).start()

    def _late(self, link: Link, answer: Message) -> None:
        if self._done.wait(self.sup_delay):  # the scripted delay of a slow Engine
            return
        try:
            link.send(answer)
        except LinkError:
            pass


PRICE = Decimal("0.48")


class MonitorThread:
    """A real Monitor (EngineProbe + CentralClient + Monitor) in a thread, with what it said."""

    def __init__(self, central_port: int, engine_port: int, cp_id: str = "CP001", *, heartbeat: float = 1.0,
                 interval: float = 0.2, **client_options) -> None:
        from ev_common.protocol import Reg
        from ev_common.retry import Backoff
        from ev_cp_monitor.central_client import CentralClient
        from ev_cp_monitor.engine_probe import EngineProbe
        from ev_cp_monitor.monitor import Monitor

        self.lines: list[str] = []
        self.probe = EngineProbe(HOST, engine_port, cp_id, backoff=Backoff(initial=0.05, cap=0.2))
        self.client = CentralClient(HOST, central_port, Reg(cp_id, "C/Mayor, 45", PRICE), config=FAST,
                                    heartbeat=heartbeat, poll=0.05, auth_timeout=2.0,
                                    backoff=Backoff(initial=0.05, cap=0.2), say=self.lines.append,
                                    engine=self.probe, **client_options)
        self.monitor = Monitor(self.probe, self.client, interval=interval, say=self.lines.append)
        self.stop_event = threading.Event()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"monitor-{cp_id}", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.monitor.run(self.stop_event)

    def start(self) -> "MonitorThread":
        self.thread.start()
        return self

    def stop(self, timeout: float = 8.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the Monitor did not stop"
