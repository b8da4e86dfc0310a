"""EV_W's locations: a file of lines ``CP_ID City,CC`` (docs/weather.md).

    # CPs by city: the city as OpenWeather names it, a comma, its country code
    CP001 Alicante,ES
    CP002 Alicante,ES
    CP003 San Vicente del Raspeig,ES

``#`` starts a comment (a whole line, or the end of one); blank lines are ignored. A line that
is not a CP id (1-64 characters from ``A-Z a-z 0-9 _ -``), white space and ``City,CC`` is
reported and skipped, and so is a CP listed a second time. ``LocationsFile`` reads the file
again whenever its modification time, size or inode change (an editor that replaces the file
is seen too), and its ``add`` and ``remove`` edit it in place: written whole to a new file in
the same folder, then renamed over it, so a reader never sees half a file and a restart of
EV_W keeps what was added or removed at run time.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

CP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CITY_MAX = 100
MAX_BYTES = 1024 * 1024  # a larger file is refused (a mistake, not a list of locations)
MAX_LINE = 500
MAX_CITIES = 200  # cities checked per cycle; those after are reported and left out
PROBLEMS_SHOWN = 20


def city_of(text: str) -> str:
    """``City,CC`` as EV_W sends it: spaces trimmed and single, the country code in capitals
    (``  san vicente  del raspeig , es`` is ``san vicente del raspeig,ES``). ``ValueError``
    otherwise."""
    name, comma, country = text.rpartition(",")
    name, country = " ".join(name.split()), country.strip()
    if not comma or not name or not re.fullmatch(r"[A-Za-z]{2}", country):
        raise ValueError(f"{text.strip()!r} is not 'City,CC' (a city, a comma, a two-letter country code, such "
                         f"as Alicante,ES)")
    if "," in name or "#" in name or not name.isprintable() or len(name) + 3 > CITY_MAX:
        raise ValueError(f"{text.strip()!r} is not a city name (at most {CITY_MAX - 3} printable characters, no "
                         f"',' nor '#')")
    return f"{name},{country.upper()}"


def parse_line(line: str) -> tuple[str, str] | None:
    """(cp_id, city) of one line, None for a blank or comment line; ``ValueError`` otherwise."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    if len(line) > MAX_LINE:
        raise ValueError(f"longer than {MAX_LINE} characters")
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not 'CP_ID City,CC'")
    cp_id, city = parts
    if not CP_ID.fullmatch(cp_id):
        raise ValueError(f"{cp_id!r} is not a CP id (1-64 characters from A-Z a-z 0-9 _ -)")
    return cp_id, city_of(city)


@dataclass(frozen=True)
class Locations:
    """The CPs of each city, cities and CPs in the file's order, and the lines skipped."""

    cities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def cp_count(self) -> int:
        return sum(len(cps) for cps in self.cities.values())

    def city_of(self, cp_id: str) -> str | None:
        return next((city for city, cps in self.cities.items() if cp_id in cps), None)


def parse(text: str) -> Locations:
    cities: dict[str, list[str]] = {}
    where: dict[str, tuple[str, int]] = {}  # cp_id -> (city, line)
    keys: dict[str, str] = {}  # city, case folded -> as first written
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed = parse_line(line)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}; skipped")
            continue
        if parsed is None:
            continue
        cp_id, city = parsed
        city = keys.setdefault(city.casefold(), city)
        if cp_id in where:
            first, at = where[cp_id]
            problems.append(f"line {number}: {cp_id} is listed at line {at} already"
                            f"{'' if first == city else f' (at {first})'}; skipped")
            continue
        if city not in cities and len(cities) >= MAX_CITIES:
            problems.append(f"line {number}: more than {MAX_CITIES} cities; {city} left out")
            continue
        where[cp_id] = (city, number)
        cities.setdefault(city, []).append(cp_id)
    return Locations({city: tuple(cps) for city, cps in cities.items()}, tuple(problems))


class LocationsFile:
    """The locations file at ``path``: read when it changes, edited by ``add`` and ``remove``
    (thread-safe; the file need not exist yet)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._signature: tuple | None = None
        self._current = Locations()

    @property
    def current(self) -> Locations:
        with self._lock:
            return self._current

    def reload_if_changed(self) -> tuple[Locations, str | None] | None:
        """(the locations now, why the file cannot be read or None) when the file changed since
        the last read, or at the first call; None when it did not change. A missing file is no
        location; one that cannot be read keeps the locations last read."""
        with self._lock:
            signature = self._stat()
            if self._signature is not None and signature == self._signature:
                return None
            self._signature = signature
            text, error = self._read()
            if error is None:
                self._current = parse(text)
            elif signature == ("missing",):
                self._current = Locations()
            return self._current, error

    def add(self, line: str) -> str:
        """Add ``CP_ID City,CC``; the answer for people. ``ValueError`` when the line is not one,
        or the CP is listed already."""
        parsed = parse_line(line)
        if parsed is None:
            raise ValueError("give 'CP_ID City,CC', such as 'CP001 Alicante,ES'")
        cp_id, city = parsed
        with self._lock:
            text, error = self._read()
            if error is not None and self._stat() != ("missing",):
                raise ValueError(f"cannot read {self.path}: {error}")
            at = parse(text).city_of(cp_id)
            if at is not None:
                raise ValueError(f"{cp_id} is listed already (at {at}); remove it first")
            if text and not text.endswith("\n"):
                text += "\n"
            self._write(text + f"{cp_id} {city}\n")
        return f"added {cp_id} at {city} to {self.path}"

    def remove(self, what: str) -> str:
        """Remove a CP (``CP001``) or a whole city (``Alicante,ES``); the answer for people.
        ``ValueError`` when nothing matches."""
        what = what.split("#", 1)[0].strip()
        if not what:
            raise ValueError("give a CP id (CP001) or a city (Alicante,ES)")
        target_city = city_of(what).casefold() if "," in what else None
        with self._lock:
            text, error = self._read()
            if error is not None:
                raise ValueError(f"cannot read {self.path}: {error}")
            kept, removed = [], []
            for line in text.splitlines(keepends=True):
                try:
                    parsed = parse_line(line)
                except ValueError:
                    parsed = None
                if parsed is not None and (parsed[0] == what if target_city is None
                                           else parsed[1].casefold() == target_city):
                    removed.append(parsed[0])
                else:
                    kept.append(line)
            if not removed:
                raise ValueError(f"no location {what!r} in {self.path}")
            self._write("".join(kept))
        return f"removed {', '.join(removed)}{f' ({what})' if target_city else ''} from {self.path}"

    def lines(self) -> list[str]:
        """What ``l`` lists: each city with its CPs, and the lines skipped."""
        current = self.current
        lines = [f"{city}: {', '.join(cps)}" for city, cps in current.cities.items()] or [
            f"no locations in {self.path}: add one with 'CP_ID City,CC'"]
        return lines + [f"skipped: {problem}" for problem in current.problems[:PROBLEMS_SHOWN]]

    # -- the file

    def _stat(self) -> tuple:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ("missing",)
        except OSError as exc:
            return ("error", str(exc))
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> tuple[str, str | None]:
        try:
            with open(self.path, "rb") as stream:
                data = stream.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return "", f"{self.path} does not exist (add a location to create it)"
        except OSError as exc:
            return "", f"cannot read {self.path}: {exc.strerror or exc}"
        if len(data) > MAX_BYTES:
            return "", f"{self.path} is larger than {MAX_BYTES // 1024} KiB: not a list of locations"
        return data.decode("utf-8", errors="replace"), None

    def _write(self, text: str) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            try:
                os.chmod(temporary, self.path.stat().st_mode & 0o777)
            except FileNotFoundError:
                os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
