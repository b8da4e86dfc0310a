"""A small stand-in for Central's API, only the three calls EV_W makes (docs/weather.md), over
real HTTP on 127.0.0.1, in front of a real Central's weather office (``central.weather``):

    POST   /api/weather/reports        -> office.report(...)  204 (422 for a malformed report)
    PUT    /api/weather/alerts/{city}  -> office.alert(...)   200 with the AlertOutcome (422)
    DELETE /api/weather/alerts/{city}  -> office.clear(...)   200, 404 when there is no alert

Every call needs ``Authorization: Bearer <token>`` (401 otherwise). ``down`` makes it answer 503
to everything (as a Central without its weather office would); ``calls`` records what came.
The real API (ev_central/api) is tested with EV_W in test_ev_w_api.py."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from ev_central.weather import CityReport

TOKEN = "ev-w-token-0123456789abcdef"


def _json(value):
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


class FakeCentralAPI:
    def __init__(self, office, token: str = TOKEN, port: int = 0) -> None:
        self.office = office
        self.token = token
        self.down = False
        self.calls: list[tuple[str, str, object]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-central-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeCentralAPI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def of(self, method: str) -> list:
        with self._lock:
            return [c for c in self.calls if c[0] == method]

    def _handle(self, method: str, path: str, body: object, client: str) -> tuple[int, object]:
        with self._lock:
            self.calls.append((method, path, body))
        if self.down:
            return 503, {"error": "unavailable", "message": "Central runs no weather office"}
        try:
            if method == "POST" and path == "/api/weather/reports":
                reports = [CityReport(r["city"], None if r["temperature"] is None else Decimal(str(r["temperature"])),
                                      r["cp_ids"], r["error"], r["simulated"]) for r in body["reports"]]
                self.office.report(reports, source_ip=client)
                return 204, None
            if path.startswith("/api/weather/alerts/"):
                city = unquote(path[len("/api/weather/alerts/"):])
                if method == "PUT":
                    outcome = self.office.alert(city, Decimal(str(body["temperature"])), body["cp_ids"],
                                                source_ip=client)
                    return 200, asdict(outcome)
                if method == "DELETE":
                    try:
                        return 200, asdict(self.office.clear(city, source_ip=client))
                    except KeyError:
                        return 404, {"error": "not_found", "message": f"no weather alert for {city}"}
        except (ValueError, KeyError, TypeError) as exc:
            return 422, {"error": "invalid", "message": str(exc)}
        return 404, {"error": "not_found", "message": path}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    status, answer = 401, {"error": "unauthorized", "message": "wrong or missing bearer token"}
                else:
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        status, answer = 422, {"error": "invalid", "message": "not JSON"}
                    else:
                        status, answer = fake._handle(method, urlsplit(self.path).path, body, self.client_address[0])
                data = b"" if answer is None else json.dumps(answer, default=_json).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler
