"""A TCP proxy on loopback that a test can cut and restore: a real network outage.

While cut, it drops every open connection and closes each new one at once, so the
client sees exactly what a dead server or network looks like.

While frozen, it keeps every connection open (and accepts new ones) but forwards
nothing, as a hung server or a silent network does: the client waits until its own
timeouts fire. Thawed, it forwards again, what it held first.
"""

from __future__ import annotations

import socket
import threading


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        self._up.set()

    def freeze(self) -> None:
        """Stop forwarding, in both directions, keeping the connections open."""
        self._thawed.clear()

    def thaw(self) -> None:
        """Forward again (what was held while frozen first)."""
        self._thawed.set()

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def close(self) -> None:
        self._closed.set()
        self.thaw()
        self.cut()
        self._thread.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._up.is_set():
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(None)  # already closed if the proxy was cut meanwhile
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._thawed.wait()  # held while frozen
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
