"""EV_W command line: the weather office (docs/weather.md).

    EV_W --locations locations.txt --central-api http://central:8000 --token-file ev_w.token \\
         --api-key-file openweather.key
    EV_W --locations locations.txt --central-api http://central:8000 --token-file ev_w.token \\
         --simulate temperatures.txt          # no internet: a local file, labelled SIMULATED

Every ``--every`` seconds (4) it checks each city of the locations file at the source and
reports to Central's API; below 0 °C it sends an alert (Central takes the city's CPs out of
service), at or above 0 °C again it clears it. On a terminal its menu shows the cities and
takes [a] add, [r] remove, [l] list, [q] quit; otherwise it prints lines, and reads the same
commands as lines on its standard input (``a CP001 Alicante,ES``, ``r CP001``, ``l``, ``q``).
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import threading
from pathlib import Path

from ev_common.config import env
from ev_common.lifecycle import Shutdown
from ev_common.log import add_log_level_argument, setup_logging

log = logging.getLogger(__name__)

KEYS_HELP = "On a terminal: [a] add a location, [r] remove one, [l] list them, [q] quit."
COMMANDS_HELP = ("commands: a CP_ID City,CC (add a location), r CP_ID|City,CC (remove), l (list), "
                 "q (quit), h (help)")
NO_KEY = ("no OpenWeather API key: give --api-key-file FILE (a file holding the key, chmod 600) or set "
          "$OPENWEATHER_API_KEY (a free key: https://openweathermap.org/api); or, without internet, check "
          "a local source with --simulate FILE (lines 'City,CC temperature' that you edit while EV_W runs: "
          "its temperatures are labelled SIMULATED)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .source import DEFAULT_URL

    parser = argparse.ArgumentParser(
        prog="EV_W",
        description="EVCharging weather office: checks the temperature at the CPs' locations every few seconds "
                    "and reports to Central's API; below 0 °C Central takes a location's CPs out of service "
                    "until it clears.",
        epilog=f"{KEYS_HELP} Without a terminal: {COMMANDS_HELP}. See docs/weather.md.")
    parser.add_argument("--locations", metavar="FILE", required=True,
                        help="the locations: lines 'CP_ID City,CC' (e.g. 'CP001 Alicante,ES'), '#' comments; read "
                             "again when it changes; the menu's add and remove edit it")
    parser.add_argument("--central-api", metavar="URL", default=env("EV_CENTRAL_API"),
                        help="Central's API, http://HOST:PORT or https://HOST:PORT (default: $EV_CENTRAL_API)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="a file (chmod 600) holding EV_W's bearer token for Central's API, the one Central "
                             "has in --weather-token-file (default: the token in $EV_WEATHER_TOKEN)")
    parser.add_argument("--central-ca", metavar="FILE",
                        help="with an https:// API: verify Central's certificate (its --api-cert) against these "
                             "CA certificates (PEM) and its host name (default: $EV_CENTRAL_API_CA)")
    parser.add_argument("--central-fingerprint", metavar="SHA256:AB:CD:...",
                        help="with an https:// API: accept only the certificate with this SHA-256 fingerprint "
                             "(default: $EV_CENTRAL_API_FINGERPRINT); neither: the system's CAs")
    source = parser.add_argument_group("the source of the weather")
    source.add_argument("--weather-url", metavar="URL", default=DEFAULT_URL,
                        help="OpenWeather's current-weather API, or anything answering like it "
                             "(default: %(default)s)")
    source.add_argument("--api-key-file", metavar="FILE",
                        help="a file (chmod 600) holding the OpenWeather API key (default: the key in "
                             "$OPENWEATHER_API_KEY); never put it in the code or on the command line")
    source.add_argument("--simulate", metavar="FILE",
                        help="read the temperatures from FILE instead, lines 'City,CC temperature' (e.g. "
                             "'Alicante,ES -2.5') edited while EV_W runs; shown and reported as SIMULATED")
    parser.add_argument("--every", type=_positive, default=4.0, metavar="SECONDS",
                        help="seconds between checks (default: %(default)g)")
    parser.add_argument("--timeout", type=_positive, default=3.0, metavar="SECONDS",
                        help="the limit of each request to the source and to Central (default: %(default)g)")
    parser.add_argument("--ui", choices=["auto", "menu", "plain"], default=env("EV_UI", "auto"),
                        type=str.lower,
                        help="the menu (a terminal) or plain lines (default: $EV_UI or auto: the menu when "
                             "standard input and output are a terminal)")
    add_log_level_argument(parser)
    return parser


def read_secret(path: str, what: str, say=None) -> str:
    """The first line of the file at ``path``, stripped; ``ValueError`` when it cannot be read or
    is empty. A file that group or others may read is said (never the secret itself)."""
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8", errors="replace")[:4096]
    except FileNotFoundError:
        raise ValueError(f"{what} file {file} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {file}: {exc.strerror or exc}") from None
    lines = text.strip().splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ValueError(f"{what} file {file} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and say is not None:
        say(f"{what} file {file} may be read by others: chmod 600 {file}")
    return secret


class Redact(logging.Filter):
    """Takes the given secrets out of every log record that reaches a handler."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.msg, record.args = text, ()
        return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.central_api:
        parser.error("--central-api URL is required (or $EV_CENTRAL_API): Central's API, e.g. http://central:8000")
    early: list[str] = []
    try:
        token = read_secret(args.token_file, "EV_W's token", early.append) if args.token_file else env(
            "EV_WEATHER_TOKEN")
    except ValueError as exc:
        parser.error(f"--token-file: {exc}")
    if not token:
        parser.error("EV_W's token is required: --token-file FILE, or $EV_WEATHER_TOKEN (Central's "
                     "--weather-token-file holds the same token)")
    key = None
    if args.simulate is None:
        try:
            key = read_secret(args.api_key_file, "the OpenWeather API key", early.append) if args.api_key_file \
                else env("OPENWEATHER_API_KEY")
        except ValueError as exc:
            parser.error(f"--api-key-file: {exc}")
        if not key:
            print(f"EV_W: {NO_KEY}", file=sys.stderr)
            return 2
    if args.central_ca is None and args.central_fingerprint is None and args.central_api.startswith("https://"):
        args.central_ca, args.central_fingerprint = env("EV_CENTRAL_API_CA"), env("EV_CENTRAL_API_FINGERPRINT")
    if args.central_ca is not None and args.central_fingerprint is not None:
        parser.error("give only one of --central-ca and --central-fingerprint")

    from .central import CentralAPI
    from .locations import LocationsFile
    from .office import WeatherWatch
    from .screen import Messages, PlainScreen
    from .source import OpenWeather, Simulation

    try:
        central = CentralAPI(args.central_api, token, ca_file=args.central_ca, fingerprint=args.central_fingerprint,
                             timeout=args.timeout)
    except (ValueError, OSError) as exc:
        parser.error(f"--central-api: {exc}")
    setup_logging("EV_W", args.log_level)
    redact = Redact([token, key or ""])
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    from ev_common.keyboard import on_terminal

    menu = args.ui == "menu" or (args.ui == "auto" and on_terminal())
    plain = PlainScreen()
    messages = Messages(plain)
    for text in early:
        messages(text)
    try:
        source = Simulation(args.simulate, say=messages) if args.simulate else OpenWeather(
            args.weather_url, key, timeout=args.timeout)
    except ValueError as exc:
        central.close()
        parser.error(f"--weather-url: {exc}")
    if args.simulate:
        messages(f"no OpenWeather: temperatures are SIMULATED, read from {args.simulate} (lines 'City,CC "
                 f"temperature'; edit it while EV_W runs)")
    shutdown = Shutdown().install()
    locations = LocationsFile(args.locations)
    watch = WeatherWatch(locations, source, central, every=args.every, say=messages,
                         after_cycle=None if menu else plain.show)
    over = " (certificate pinned)" if central.pinned else (" (CA file)" if args.central_ca else "")
    messages(f"EV_W: the weather every {args.every:g} s from {source.describe()} for the locations in "
             f"{args.locations}; reporting to Central's API at {central.url}{over}"
             f" ({'keys: [a] add, [r] remove, [l] list, [q] quit' if menu else COMMANDS_HELP})")
    try:
        if menu:
            from .menu import run_menu

            worker = threading.Thread(target=watch.run, args=(shutdown.event,), name="weather", daemon=True)
            worker.start()
            run_menu(watch.view, locations, messages, shutdown.event, subtitle=f"every {args.every:g} s",
                     filters=(redact,))
            worker.join(args.timeout * 3 + 2)
        else:
            threading.Thread(target=read_commands, args=(locations, messages, shutdown), name="commands",
                             daemon=True).start()
            watch.run(shutdown.event)
    finally:
        watch.close()
        source.close()
        central.close()
    messages("EV_W stopped" + (f" ({shutdown.signal_name})" if shutdown.signal_name else ""))
    return 0


def command(line: str, locations, say) -> bool:
    """One command line (plain mode); False for quit."""
    verb, _, rest = line.strip().partition(" ")
    verb = verb.lower()
    if not verb:
        return True
    try:
        if verb in ("a", "add"):
            say(locations.add(rest) + "; the next check takes it")
        elif verb in ("r", "remove"):
            say(locations.remove(rest) + "; the next check takes it")
        elif verb in ("l", "list"):
            for text in locations.lines():
                say(text)
        elif verb in ("q", "quit"):
            return False
        else:
            say(COMMANDS_HELP)
    except (ValueError, OSError) as exc:
        say(f"not done: {exc}")
    return True


def read_commands(locations, say, shutdown: Shutdown, stream=None) -> None:
    """Command lines from standard input until its end (EV_W goes on) or ``q`` (EV_W stops)."""
    stream = stream or sys.stdin
    if stream is None:
        return
    try:
        for line in stream:
            if not command(line, locations, say):
                shutdown.request()
                return
    except (OSError, ValueError):  # standard input closed or unreadable: no commands
        return


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
