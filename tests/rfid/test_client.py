"""StationClient against a fake Central's MCSP port on real loopback sockets."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from ev_common.mcsp import EndOk, EndRequest, ErrorAnswer, LocalProtocolError, StartOk, StartRequest
from ev_rfid.client import CentralUnreachable, StationClient
from tests.rfid.fake_mcsp import CLOSE, HOST, SILENT, FakeMCSP, Later, refused_port

KEY = "16AC936B1692E73A"


def central(request, connection, index):
    """A well-behaved Central: sessions S1, S2... and the figures of the spec's example."""
    if isinstance(request, StartRequest):
        return StartOk(f"S{index}")
    return EndOk(Decimal("2.75"), Decimal("1.32"))


def test_start_then_end_on_one_connection():
    with FakeMCSP(central) as server, StationClient(HOST, server.port, timeout=5) as client:
        started = client.start("CP001", "16:ac:93:6b:16:92:e7:3a")
        assert started == StartOk("S1")
        assert client.last_answer_bytes == b"MMETERING/1.0 OK\r\nContent-Length: 1\r\nSession-Id: S1\r\n"
        ended = client.end("CP001", started.session_id, KEY)
        assert ended == EndOk(Decimal("2.7500"), Decimal("1.32"))
        assert str(ended.energy_kwh) == "2.7500" and str(ended.amount_eur) == "1.32"
        assert client.start("CP001", KEY) == StartOk("S3")
        assert server.connections == 1
        assert [r for _, r in server.requests] == [StartRequest("CP001", KEY), EndRequest("CP001", "S1", KEY),
                                                    StartRequest("CP001", KEY)]


def test_a_refusal_is_an_answer_and_keeps_the_connection():
    def refusing(request, connection, index):
        return ErrorAnswer.for_code(401) if index == 1 else central(request, connection, index)

    with FakeMCSP(refusing) as server, StationClient(HOST, server.port, timeout=5) as client:
        assert client.start("CP001", KEY) == ErrorAnswer(401, "Key is not registered")
        assert client.last_answer_bytes.splitlines() == [b"MMETERING/1.0 ERROR", b"Content-Length: 2",
                                                         b"Message: Key is not registered", b"Code: 401"]
        assert client.start("CP001", KEY) == StartOk("S2")
        assert server.connections == 1


def test_after_a_400_the_next_request_goes_on_a_new_connection():
    def strict(request, connection, index):
        return ErrorAnswer.for_code(400, "repeated header Name") if index == 1 else central(request, connection, index)

    with FakeMCSP(strict) as server, StationClient(HOST, server.port, timeout=5) as client:
        assert client.start("CP001", KEY).code == 400
        assert not client.connected  # Central closes after a 400: the client does not wait for it
        assert client.start("CP001", KEY) == StartOk("S2")
        assert server.connections == 2


def test_a_connection_central_closed_while_idle_is_replaced():
    with FakeMCSP(central) as server, StationClient(HOST, server.port, timeout=5) as client:
        assert client.start("CP001", KEY) == StartOk("S1")
        server.close_connections()  # Central's idle timeout
        assert client.end("CP001", "S1", KEY) == EndOk(Decimal("2.75"), Decimal("1.32"))
        assert server.connections == 2
        assert len(server.requests) == 2  # sent once: the closed connection was seen before sending


def test_a_request_that_meets_the_close_of_a_kept_connection_is_sent_once_more():
    """The close races the request: Central read it but closed without a byte of answer.
    That happens only to a connection Central took for idle, so the request goes again, once."""

    def closing_the_second(request, connection, index):
        return CLOSE if index == 2 else central(request, connection, index)

    with FakeMCSP(closing_the_second) as server, StationClient(HOST, server.port, timeout=5) as client:
        assert client.start("CP001", KEY) == StartOk("S1")
        assert client.end("CP001", "S1", KEY) == EndOk(Decimal("2.75"), Decimal("1.32"))
        assert [(c, type(r).__name__) for c, r in server.requests] == [(1, "StartRequest"), (1, "EndRequest"),
                                                                       (2, "EndRequest")]


def test_only_one_retry_and_none_on_a_fresh_connection():
    def closing_after_the_first(request, connection, index):
        return CLOSE if index >= 2 else central(request, connection, index)

    with FakeMCSP(closing_after_the_first) as server, StationClient(HOST, server.port, timeout=5) as client:
        assert client.start("CP001", KEY) == StartOk("S1")
        with pytest.raises(CentralUnreachable, match="closed the connection without answering END"):
            client.end("CP001", "S1", KEY)
        assert len(server.requests) == 3  # the first try and one retry on a fresh connection
        with pytest.raises(CentralUnreachable, match="without answering START"):
            client.start("CP001", KEY)  # a fresh connection: not sent again
        assert len(server.requests) == 4


def test_no_answer_within_the_timeout_drops_the_connection_so_a_late_answer_is_never_taken():
    def slow_first(request, connection, index):
        return Later(1.0, StartOk("LATE")) if index == 1 else central(request, connection, index)

    with FakeMCSP(slow_first) as server, StationClient(HOST, server.port, timeout=0.5) as client:
        began = time.monotonic()
        with pytest.raises(CentralUnreachable, match="did not answer within 0.5 s"):
            client.start("CP001", KEY)
        assert 0.4 <= time.monotonic() - began < 3
        assert not client.connected
        assert client.start("CP001", KEY) == StartOk("S2")  # never the late answer to the first
        server.wait(lambda: server.closed_connections >= 1, 5, "the first connection to end")
        assert server.connections == 2


def test_a_server_that_never_answers():
    with FakeMCSP(lambda request, connection, index: SILENT) as server:
        with StationClient(HOST, server.port, timeout=0.5) as client:
            with pytest.raises(CentralUnreachable) as raised:
                client.end("CP001", "S1", KEY)
            assert isinstance(raised.value, ConnectionError)
        assert len(server.requests) == 1


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"MMETERING/1.0 OK\r\nContent-Length: 1\r\nSession-Id: two words\r\n",
    b"MMETERING/1.0 START\r\nContent-Length: 2\r\nName: CP001\r\nKey: 16AC936B\r\n",
    b"\xff\xfe\r\n",
], ids=["http", "bad value", "a request", "binary"])
def test_garbage_is_central_unreachable(garbage):
    with FakeMCSP(lambda request, connection, index: garbage if index == 1 else StartOk("S2")) as server:
        with StationClient(HOST, server.port, timeout=5) as client:
            with pytest.raises(CentralUnreachable, match="not an MCSP answer"):
                client.start("CP001", KEY)
            assert not client.connected
            assert client.start("CP001", KEY) == StartOk("S2")


def test_the_answer_to_the_other_request_is_garbage_too():
    with FakeMCSP(lambda request, connection, index: EndOk() if index == 1 else StartOk("S2")) as server:
        with StationClient(HOST, server.port, timeout=5) as client:
            with pytest.raises(CentralUnreachable, match="answer to an END"):
                client.start("CP001", KEY)
            assert client.start("CP001", KEY) == StartOk("S2")
            assert server.connections == 2


def test_an_answer_as_drawn_without_content_length():
    drawn = b"MMETERING/1.0 OK\nSession-Id: 23\n\n"
    with FakeMCSP(lambda request, connection, index: drawn if index == 1 else EndOk()) as server:
        with StationClient(HOST, server.port, timeout=5) as client:
            assert client.start("Tankstelle1", KEY) == StartOk("23")
            assert client.last_answer_bytes == drawn
            assert client.end("Tankstelle1", "23", KEY) == EndOk()
            assert server.connections == 1


def test_bytes_nobody_asked_for_drop_the_connection():
    extra = StartOk("S1").to_bytes() + StartOk("S9").to_bytes()
    with FakeMCSP(lambda request, connection, index: extra if index == 1 else StartOk("S2")) as server:
        with StationClient(HOST, server.port, timeout=5) as client:
            assert client.start("CP001", KEY) == StartOk("S1")
            assert client.start("CP001", KEY) == StartOk("S2")  # not the S9 nobody asked for
            assert server.connections == 2


def test_connection_refused():
    with StationClient(HOST, refused_port(), timeout=1, connect_timeout=1) as client:
        with pytest.raises(CentralUnreachable, match="cannot connect to Central's MCSP port"):
            client.start("CP001", KEY)


def test_bad_arguments_raise_before_anything_is_sent():
    with FakeMCSP(central) as server, StationClient(HOST, server.port, timeout=5) as client:
        for call in (lambda: client.start("CP 001", KEY), lambda: client.start("CP001", "16AC93"),
                     lambda: client.end("CP001", "", KEY), lambda: client.end("CP001", "S1", "0x16AC936B")):
            with pytest.raises(LocalProtocolError):
                call()
        assert server.connections == 0


def test_close_from_another_thread_ends_an_exchange_in_flight():
    with FakeMCSP(lambda request, connection, index: SILENT) as server:
        client = StationClient(HOST, server.port, timeout=30)
        failed = []

        def ask():
            try:
                client.start("CP001", KEY)
            except CentralUnreachable as exc:
                failed.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        server.wait(lambda: server.requests, 5, "the request")
        client.close()
        asking.join(5)
        assert not asking.is_alive() and failed and "closed" in str(failed[0])
        with pytest.raises(CentralUnreachable, match="closed"):
            client.start("CP001", KEY)
        assert len(server.requests) == 1
