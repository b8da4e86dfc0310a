"""The Engine's socket: one Monitor at a time: health checks, supplies to accept or cancel, the
supply it holds (``SQ`` -> ``SST``), Stop and Resume, the CP's key (``KEY``) and its revocation
(``RVK``), both answered by the ACK only. A key is never logged.

A second Monitor is refused at session opening (NACK). A Monitor silent for
``silence_timeout`` seconds is considered lost and its session closed.
"""

from __future__ import annotations

import base64
import binascii
import logging

from ev_common.link import Link, LinkConfig, LinkError, LinkServer
from ev_common.protocol import (Can, Chk, Err, Fin, Health, Key, MessageError, Resume, Rvk, Sq, Sst, Stop, Sup,
                                Supr)

from .engine import Engine

log = logging.getLogger(__name__)

MONITOR_SILENCE_TIMEOUT = 3.0


class HealthServer:
    def __init__(self, engine: Engine, host: str, port: int, *,
                 silence_timeout: float = MONITOR_SILENCE_TIMEOUT, config: LinkConfig = LinkConfig()) -> None:
        self.engine = engine
        self.silence_timeout = silence_timeout
        self._server = LinkServer(host, port, self._serve, name="engine", max_sessions=1,
                                  busy_reason="another Monitor is connected to this Engine", config=config)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def start(self) -> "HealthServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop("Engine shutting down")

    def _serve(self, link: Link) -> None:
        self.engine.monitor_connected(link.peer)
        why = "session ended"
        try:
            while True:
                try:
                    message = link.recv(timeout=self.silence_timeout)
                except MessageError as exc:
                    link.send(Err.about(exc))
                    continue
                if message is None:
                    why = f"no health check for {self.silence_timeout:g} s"
                    return
                if isinstance(message, Chk):
                    ok, detail = self.engine.health(message.cp_id)
                    link.send(Health("OK" if ok else "KO", detail))
                elif isinstance(message, Sup):
                    ok, reason = self.engine.authorise(message.session_id, message.driver_id,
                                                       message.price_eur_kwh)
                    link.send(Supr(message.cp_id, message.session_id, "OK" if ok else "KO", reason[:200]))
                elif isinstance(message, Sq):
                    phase, session_id, seq, kwh = self.engine.supply_state()
                    link.send(Sst(message.cp_id, phase, session_id, seq, kwh))
                elif isinstance(message, Can):
                    self.engine.cancel(message.session_id, message.reason)
                elif isinstance(message, Fin):
                    self.engine.finish(message.session_id)
                elif isinstance(message, Stop):
                    self.engine.stop()
                elif isinstance(message, Resume):
                    self.engine.resume()
                elif isinstance(message, Key):
                    self._take_key(message)
                elif isinstance(message, Rvk):
                    self.engine.revoke(message.reason)
                else:
                    link.send(Err("UNEXPECTED", f"the Engine does not accept {message.OPCODE}"))
        except LinkError as exc:
            why = str(exc)
        finally:
            self.engine.monitor_lost(why)

    def _take_key(self, message: Key) -> None:
        """``KEY``: open mode, or the CP's key (43 base64url characters: 32 bytes)."""
        if message.open_mode:
            self.engine.set_key(0, None, cp_id=message.cp_id)
            return
        try:
            key = base64.urlsafe_b64decode(message.key + "=")
            self.engine.set_key(message.version, key, cp_id=message.cp_id)
        except (ValueError, binascii.Error):  # the text names no key
            log.error("KEY#%s#%d#***: not a usable key (32 bytes in base64url); ignored", message.cp_id,
                      message.version)
