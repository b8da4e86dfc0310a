"""An MCSP station on a raw socket for tests: it sends any bytes and reads the answers with the
codec, so that tests can send what a well-behaved client never would."""

from __future__ import annotations

import socket
import time

from ev_common.mcsp import CLOSED, NEED_DATA, AnswerReceiver, EndOk, ErrorAnswer, ReceiveError, StartOk

ANSWER_TIMEOUT = 20.0  # more than Central's wait for an END's figures (10 s)


class Station:
    """A station on a raw socket: sends bytes, reads answers with the codec."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=ANSWER_TIMEOUT)
        self.receiver = AnswerReceiver()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, timeout: float = ANSWER_TIMEOUT):
        """The next answer, or CLOSED when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.receiver.next_event()
            if event is not NEED_DATA:
                assert not isinstance(event, ReceiveError), event
                return event
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise AssertionError(f"no answer within {timeout:g} s") from None
            except ConnectionResetError:
                data = b""
            self.receiver.feed(data)

    def ask(self, request) -> StartOk | EndOk | ErrorAnswer:
        self.send(request.to_bytes())
        return self.answer()

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        return self.answer(timeout) is CLOSED

    def close(self) -> None:
        self.sock.close()


__all__ = ["Station", "CLOSED"]
