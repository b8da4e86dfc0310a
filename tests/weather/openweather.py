"""A real HTTP server on 127.0.0.1 that answers like OpenWeather's current-weather API
(``GET /data/2.5/weather?q=City,CC&appid=KEY&units=metric``), with temperatures the test sets
and changes, and faults on demand: a delay, a body that drips, garbage, an answer without
``main.temp``, any status. A wrong key gets OpenWeather's 401, an unknown city its 404.

    with FakeOpenWeather(key="k" * 32) as weather:
        weather.set("Alicante,ES", "12.5")
        weather.url             # http://127.0.0.1:PORT/data/2.5/weather
        weather.fault("Alicante,ES", delay=5)     # or garbage=True, no_temp=True, status=500, drip=True
        weather.requests("Alicante,ES")           # how many times it was asked
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATH = "/data/2.5/weather"
KEY = "0123456789abcdef0123456789abcdef"  # the shape of an OpenWeather key (32 hex digits)


@dataclass
class Fault:
    delay: float = 0.0  # seconds before answering
    garbage: bool = False  # a body that is not JSON
    no_temp: bool = False  # JSON without main.temp
    status: int | None = None  # this status instead
    drip: bool = False  # the body a byte at a time, slowly


class FakeOpenWeather:
    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._temperatures: dict[str, Decimal] = {}
        self._faults: dict[str, Fault] = {}
        self._requests: dict[str, int] = {}
        self.queries: list[dict[str, list[str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openweather", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    def start(self) -> "FakeOpenWeather":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeOpenWeather":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what the test sets

    def set(self, city: str, temperature: str | Decimal) -> None:
        with self._lock:
            self._temperatures[city.casefold()] = Decimal(str(temperature))

    def remove(self, city: str) -> None:
        with self._lock:
            self._temperatures.pop(city.casefold(), None)

    def fault(self, city: str, **fault) -> None:
        with self._lock:
            self._faults[city.casefold()] = Fault(**fault)

    def heal(self, city: str) -> None:
        with self._lock:
            self._faults.pop(city.casefold(), None)

    def requests(self, city: str) -> int:
        with self._lock:
            return self._requests.get(city.casefold(), 0)

    # -- the server

    def _answer(self, query: dict[str, list[str]]) -> tuple[Fault, int, bytes]:
        city = (query.get("q") or [""])[0]
        with self._lock:
            self.queries.append(query)
            self._requests[city.casefold()] = self._requests.get(city.casefold(), 0) + 1
            fault = self._faults.get(city.casefold(), Fault())
            temperature = self._temperatures.get(city.casefold())
        if (query.get("appid") or [""])[0] != self.key:
            return fault, 401, json.dumps({"cod": 401, "message": "Invalid API key. Please see "
                                           "https://openweathermap.org/faq#error401 for more info."}).encode()
        if (query.get("units") or [""])[0] != "metric":
            return fault, 400, json.dumps({"cod": "400", "message": "this fake answers units=metric only"}).encode()
        if fault.status is not None:
            return fault, fault.status, json.dumps({"cod": str(fault.status), "message": "something failed"}).encode()
        if fault.garbage:
            return fault, 200, b"<html><body>502 Bad Gateway</body></html>"
        if temperature is None:
            return fault, 404, json.dumps({"cod": "404", "message": "city not found"}).encode()
        name, _, country = city.partition(",")
        main = {"feels_like": float(temperature) - 1, "pressure": 1015, "humidity": 60}
        if not fault.no_temp:  # a JSON number as OpenWeather writes it: 0, 12.5, -2.31
            main["temp"] = int(temperature) if temperature == temperature.to_integral() else float(temperature)
        body = {"coord": {"lon": -0.4815, "lat": 38.3452},
                "weather": [{"id": 800, "main": "Clear", "description": "clear sky", "icon": "01d"}],
                "base": "stations", "main": main, "visibility": 10000, "wind": {"speed": 3.6, "deg": 90},
                "clouds": {"all": 0}, "dt": int(time.time()), "sys": {"country": country.strip().upper()},
                "timezone": 3600, "id": 2521978, "name": name.strip(), "cod": 200}
        return fault, 200, json.dumps(body).encode()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != PATH:
                    self._send(404, b'{"cod": "404", "message": "Internal error"}')
                    return
                fault, status, body = fake._answer(parse_qs(parts.query))
                if fault.delay:
                    time.sleep(fault.delay)
                self._send(status, body, drip=fault.drip)

            def _send(self, status: int, body: bytes, drip: bool = False) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if drip:
                        for byte in body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.2)
                    else:
                        self.wfile.write(body)
                except OSError:  # the client gave up
                    pass

        return Handler
