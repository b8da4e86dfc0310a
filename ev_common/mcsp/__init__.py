"""MCSP/1.0, the RFID charging-station protocol: a sans-I/O codec (docs/mcsp.md).

Wire format (ASCII; lines end in CRLF when sent, LF or CRLF when received)::

    MMETERING/1.0 START          MMETERING/1.0 OK
    Content-Length: 2            Content-Length: 1
    Name: Tankstelle1            Session-Id: 23
    Key: 16AC936B1692E73A

    MMETERING/1.0 END            MMETERING/1.0 OK
    Content-Length: 3            Content-Length: 2
    Name: Tankstelle1            Energy-kWh: 2.7500
    Session-Id: 23               Amount-EUR: 1.32
    Key: 16AC936B1692E73A
                                 MMETERING/1.0 ERROR
                                 Content-Length: 2
                                 Message: Key is not registered
                                 Code: 401

``Content-Length`` counts the header lines that follow it, not bytes. Messages are
frozen dataclasses with ``to_bytes()``; ``RequestReceiver`` and ``AnswerReceiver`` turn
bytes into them (``feed``/``next_event``), or into a ``ReceiveError`` to answer.
"""

from .errors import DEFAULT_MESSAGES, ErrorCode, LocalProtocolError, ReceiveError
from .fields import KEY_BYTES, check_key, masked
from .messages import (
    Answer,
    EndOk,
    EndRequest,
    ErrorAnswer,
    Message,
    Request,
    StartOk,
    StartRequest,
)
from .receiver import (
    CLOSED,
    MAX_HEADERS,
    MAX_LINE,
    MAX_MESSAGE,
    NEED_DATA,
    AnswerReceiver,
    RequestReceiver,
)

__all__ = [
    "CLOSED",
    "DEFAULT_MESSAGES",
    "KEY_BYTES",
    "MAX_HEADERS",
    "MAX_LINE",
    "MAX_MESSAGE",
    "NEED_DATA",
    "Answer",
    "AnswerReceiver",
    "EndOk",
    "EndRequest",
    "ErrorAnswer",
    "ErrorCode",
    "LocalProtocolError",
    "Message",
    "ReceiveError",
    "Request",
    "RequestReceiver",
    "StartOk",
    "StartRequest",
    "check_key",
    "masked",
]
