"""Where EV_W reads the temperature of a city: OpenWeather's current-weather API, or a local
simulation file (docs/weather.md).

``OpenWeather(url, key, timeout)`` asks ``GET url?q=City,CC&appid=KEY&units=metric`` and reads
``main.temp`` (°C). Every request is bounded: ``timeout`` seconds for the connection and for
each read and write, the whole answer within ``2 * timeout`` and at most 64 KiB. Whatever goes
wrong (no answer in time, a refused connection, an HTTP error such as 401 for a wrong key or
404 for an unknown city, an answer that is not JSON, has no ``main.temp``, or a value that is
not a temperature) raises ``SourceError`` with a short reason for people; EV_W shows it and
tries again at its next cycle. The key travels in the query string, as OpenWeather wants it:
it is never put in a message (``SourceError`` texts are scrubbed of it), and httpx's own
request lines (which hold the URL) are kept out of the log.

``Simulation(path)`` reads the temperatures from a file the user edits while EV_W runs, one
city a line, ``City,CC temperature``:

    Alicante,ES -2.5
    Madrid,ES 14

It is read again whenever it changes; a city it does not list is an error for that city.
Everything read from it is labelled simulated, on EV_W's screen and at Central.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx

from .locations import city_of

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.openweathermap.org/data/2.5/weather"
MAX_ANSWER = 64 * 1024
COLDEST, HOTTEST = Decimal(-100), Decimal(70)  # °C: a value outside is not a reading of this planet
HUNDREDTH = Decimal("0.01")  # °C: what EV_W keeps of a reading (Central takes at most 2 decimal places)
REASON_MAX = 200

# httpx logs each request at INFO with its URL, which holds the key: never let it through.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class SourceError(Exception):
    """The temperature of a city could not be read now; ``str()`` says why, for people."""


def temperature(value: object) -> Decimal:
    """A reading as a Decimal in °C; ``SourceError`` when it is not a plausible temperature."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise SourceError(f"the temperature is not a number ({str(value)[:40]!r})")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise SourceError(f"the temperature is not a number ({str(value)[:40]!r})") from None
    if not number.is_finite() or not COLDEST <= number <= HOTTEST:
        raise SourceError(f"{value} is not a temperature in °C")
    return hundredths(number)


def hundredths(degrees: Decimal) -> Decimal:
    """``degrees`` rounded to 0.01 °C, half up (a tie away from zero: -2.555 is -2.56), as EV_W
    keeps, shows, decides on and sends every reading; a value with fewer places keeps them
    (-2.5 stays -2.5), and a reading that rounds to zero is 0.00, never -0.00."""
    if degrees.as_tuple().exponent >= -2:  # type: ignore[operator]  (finite: an int exponent)
        return degrees
    rounded = degrees.quantize(HUNDREDTH, rounding=ROUND_HALF_UP)
    return rounded if rounded else abs(rounded)


class OpenWeather:
    """OpenWeather's current-weather API (or anything that answers like it) at ``url``."""

    simulated = False

    def __init__(self, url: str, key: str, *, timeout: float = 3.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the weather URL must start with http:// or https://, not {url!r}")
        if not key or not key.strip() or any(c.isspace() for c in key.strip()):
            raise ValueError("the OpenWeather API key is empty or holds white space")
        if not timeout > 0:
            raise ValueError("the timeout must be positive")
        self.url = url
        self._key = key.strip()
        self.timeout = timeout
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), trust_env=False, follow_redirects=False,
                                  headers={"Accept": "application/json", "User-Agent": "EV_W"},
                                  limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))

    def describe(self) -> str:
        return f"OpenWeather at {self.url}"

    def __repr__(self) -> str:  # never the key
        return f"OpenWeather({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def check(self, city: str) -> Decimal:
        """The temperature at ``city`` (°C) now; ``SourceError`` otherwise."""
        deadline = time.monotonic() + 2 * self.timeout
        try:
            with self._http.stream("GET", self.url, params={"q": city, "appid": self._key, "units": "metric"}) \
                    as answer:
                body = bytearray()
                for chunk in answer.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER:
                        raise SourceError(f"the answer is larger than {MAX_ANSWER // 1024} KiB")
                    if time.monotonic() > deadline:
                        raise SourceError(f"the answer did not end within {2 * self.timeout:g} s")
                status = answer.status_code
        except httpx.TimeoutException as exc:
            raise SourceError(f"no answer within {self.timeout:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise SourceError(self._scrub(f"cannot reach the weather service: {exc or type(exc).__name__}")) from None
        if status != 200:
            raise SourceError(self._refusal(status, bytes(body)))
        try:
            data = json.loads(body, parse_float=Decimal)
        except ValueError:
            raise SourceError(f"the answer is not JSON ({self._scrub(repr(bytes(body[:40])))})") from None
        main = data.get("main") if isinstance(data, dict) else None
        if not isinstance(main, dict) or "temp" not in main:
            raise SourceError("the answer has no main.temp")
        return temperature(main["temp"])

    def _refusal(self, status: int, body: bytes) -> str:
        said = ""
        try:
            data = json.loads(body)
            if isinstance(data, dict) and isinstance(data.get("message"), str):
                said = ": " + self._scrub(" ".join(data["message"].split()))[:REASON_MAX]
        except ValueError:
            pass
        why = {401: "the API key was refused", 404: "city not found", 429: "too many requests for this key"}.get(
            status, "the weather service refused")
        return f"{why} (HTTP {status}){said}"

    def _scrub(self, text: str) -> str:
        for form in {self._key, quote(self._key, safe=""), quote_plus(self._key)}:
            text = text.replace(form, "***")
        return text[:REASON_MAX * 2]


class Simulation:
    """Temperatures from the file at ``path``, lines ``City,CC temperature`` (see the module doc)."""

    simulated = True

    def __init__(self, path: str | os.PathLike[str], *, say=lambda text: log.warning("%s", text)) -> None:
        self.path = Path(path).expanduser()
        self._say = say
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._temperatures: dict[str, Decimal] = {}
        self._error: str | None = None

    def describe(self) -> str:
        return f"SIMULATED temperatures from {self.path}"

    def close(self) -> None:
        pass

    def check(self, city: str) -> Decimal:
        with self._lock:
            self._reload()
            if self._error is not None:
                raise SourceError(self._error)
            found = self._temperatures.get(city.casefold())
        if found is None:
            raise SourceError(f"{city} is not in the simulation file {self.path}")
        return found

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            signature = ("missing", str(exc))
        if signature == self._signature:
            return
        self._signature = signature
        if signature[0] == "missing":
            self._error, self._temperatures = f"the simulation file {self.path} cannot be read", {}
            return
        try:
            text = self.path.read_bytes()[:1024 * 1024].decode("utf-8", errors="replace")
        except OSError as exc:
            self._error = f"the simulation file {self.path} cannot be read ({exc.strerror or exc})"
            return
        temperatures, problems = {}, []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            city, _, degrees = line.rpartition(" ")
            try:
                temperatures[city_of(city).casefold()] = temperature(degrees.strip())
            except (ValueError, SourceError) as exc:
                problems.append(f"line {number}: {exc}")
        self._temperatures, self._error = temperatures, None
        for problem in problems[:10]:
            self._say(f"simulation file {self.path}, {problem}: 'City,CC temperature' expected; skipped")
