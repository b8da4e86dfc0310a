"""A Monitor that speaks only the seed's frames (STX DATA ETX LRC, no ENQ first) is served by
a real Central: its first frame is an implied ENQ. Anything else first is told NACK and EOT."""

from __future__ import annotations

import socket

import pytest

from ev_central.app import Central
from ev_central.store import open_store
from ev_common.protocol import ACK, EOT, MESSAGES, NACK, NEED_DATA, FrameDecoder, encode_frame
from tests.support.waiting import wait_until


@pytest.fixture
def central(tmp_path):
    central = Central(open_store(f"sqlite:///{tmp_path / 'c.db'}"), "127.0.0.1", 0).start()
    yield central
    central.stop()


def read_events(sock: socket.socket, count: int) -> list:
    """The next ``count`` bytes-or-frames Central sends."""
    decoder, events = FrameDecoder(), []
    sock.settimeout(3)
    while len(events) < count:
        data = sock.recv(4096)
        assert data, f"Central closed after {events}"
        decoder.feed(data)
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    return events


def test_a_first_frame_without_enq_registers_the_cp(central: Central) -> None:
    with socket.create_connection(central.address, timeout=3) as sock:
        sock.sendall(encode_frame(b"REG#CP009#Calle 9#0.40"))
        ack, auth = read_events(sock, 2)
        assert ack.byte == ACK
        assert MESSAGES.decode(auth.text).text == "Autenticacion exitosa"
        sock.sendall(bytes((ACK,)))  # for AUTH
        wait_until(lambda: central.network.get("CP009") is not None, 3, "CP009 registered")
        assert central.network.get("CP009").state == "ACTIVADO"


def test_anything_else_first_is_told_nack_and_eot(central: Central) -> None:
    with socket.create_connection(central.address, timeout=3) as sock:
        sock.sendall(bytes((ACK,)))
        nack, eot = read_events(sock, 2)
        assert (nack.byte, eot.byte) == (NACK, EOT)
        assert sock.recv(10) == b""  # then Central closes
