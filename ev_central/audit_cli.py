"""``EV_Central audit``: print the audit log, or check its chain (``audit verify``).

    EV_Central audit [--since T] [--action A] [--limit N] [--json] [--db URL]
    EV_Central audit verify [--db URL]

Entries are printed oldest first (the order of the chain), read from the database a batch
at a time: as aligned columns, or with ``--json`` one JSON object per line with exactly the
keys ``at``, ``actor``, ``source_ip``, ``action``, ``details`` and ``outcome``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date, datetime, time, timezone

from ev_common.config import env

from .core.entities import AUDIT_ACTION_MAX

READ_BATCH = 1000
EXIT_BROKEN = 1  # audit verify: the chain is not intact
EXIT_CANNOT_CHECK = 3  # audit verify: the database could not be read
JSON_KEYS = ("at", "actor", "source_ip", "action", "details", "outcome")
COLUMNS = ("seq", "at (UTC)", "actor", "source_ip", "action", "outcome", "details")
_ACTION = re.compile(r"[A-Za-z0-9_.-]+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _db_help() -> str:
    from .cli import DB_HELP

    return DB_HELP


def since_time(text: str) -> datetime:
    """argparse type: an ISO 8601 date or date and time; UTC unless it names its zone."""
    text = text.strip()
    try:
        if _DATE.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), time(), timezone.utc)
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}.*", text):
            raise ValueError(text)
        at = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or a time: YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS[.ffffff]] with an optional "
            "zone (Z, +02:00); UTC when it has none") from None
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def action_name(text: str) -> str:
    """argparse type: an action (``supply.start``) or a family ending in "." (``key.``)."""
    if not _ACTION.fullmatch(text) or len(text) > AUDIT_ACTION_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an action: up to {AUDIT_ACTION_MAX} characters from A-Z a-z 0-9 _ . - (such as "
            "supply.start), or a family ending in '.' (such as key.)")
    return text


def build_audit_parser() -> argparse.ArgumentParser:
    from .audit import ACTIONS

    parser = argparse.ArgumentParser(
        prog="EV_Central audit",
        usage="EV_Central audit [--since T] [--action A] [--limit N] [--json] [--db URL]\n"
              "       EV_Central audit verify [--db URL]",
        description="Print the audit log oldest first (the order of its chain), or with 'verify' check that its "
                    "hash chain is intact: that no entry was changed, removed or moved. Times are UTC.",
        epilog="Columns: seq, at (UTC), actor, source_ip ('-' when none), action, outcome, details. With --json, "
               "one JSON object per line with the keys " + ", ".join(JSON_KEYS) + " ('at' in ISO 8601 UTC). "
               "Actions: " + ", ".join(ACTIONS) + " (docs/security.md, 'Audit'). Exit status: 0 done (audit "
               f"verify: the chain is intact); {EXIT_BROKEN} a database error (audit verify: the chain is NOT "
               f"intact); 2 bad arguments; {EXIT_CANNOT_CHECK} (audit verify) the database could not be read.",
    )
    parser.add_argument("command", nargs="?", choices=("verify",), metavar="verify",
                        help="check the chain instead of printing entries: 'audit log intact: N entries', or what "
                             "is wrong")
    parser.add_argument("--since", type=since_time, metavar="T",
                        help="only entries at or after T: YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], UTC unless a zone "
                             "is given (Z, +02:00)")
    parser.add_argument("--action", type=action_name, metavar="A",
                        help="only this action (supply.start), or a family ending in '.' (key., supply.)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N entries, the oldest (default: all)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: " + ", ".join(JSON_KEYS))
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=_db_help())
    return parser


def audit_main(argv: list[str]) -> int:
    parser = build_audit_parser()
    args = parser.parse_args(argv)
    if args.command == "verify":
        given = [flag for flag, value in (("--since", args.since), ("--action", args.action),
                                          ("--limit", args.limit), ("--json", args.json)) if value]
        if given:
            parser.error(f"verify checks the whole chain; {', '.join(given)} goes with printing entries")
    elif args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    from .cli import _open_for_command

    store = _open_for_command("EV_Central audit", args.db)
    if store is None:
        return EXIT_CANNOT_CHECK if args.command == "verify" else 1
    from .store import StoreError

    try:
        if args.command == "verify":
            return _verify(store)
        return _print(store, args)
    except StoreError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK if args.command == "verify" else 1
    finally:
        store.close()


def _verify(store) -> int:
    from .audit import verify

    check = verify(store)
    if check.ok:
        print(f"audit log intact: {check.checked} entries")
        return 0
    print(f"audit log NOT intact: {check.problem} (the {check.checked} entries before it are intact)")
    return EXIT_BROKEN


def _print(store, args) -> int:
    from .cli import _shown

    left = args.limit
    after, printed, widths = 0, 0, [len(c) for c in COLUMNS[:-1]]
    while left is None or left > 0:
        batch = READ_BATCH if left is None else min(READ_BATCH, left)
        rows = store.list_audit(since=args.since, action=args.action, after_seq=after, limit=batch)
        if not rows:
            break
        after = rows[-1].seq
        left = None if left is None else left - len(rows)
        if args.json:
            for row in rows:
                e = row.entry
                print(json.dumps({"at": _iso(e.at), "actor": e.actor, "source_ip": e.source_ip, "action": e.action,
                                  "details": e.details, "outcome": e.outcome}, ensure_ascii=False))
        else:
            lines = [(str(row.seq), _iso(row.entry.at), _shown(row.entry.actor), _shown(row.entry.source_ip) or "-",
                      _shown(row.entry.action), _shown(row.entry.outcome), _shown(row.entry.details))
                     for row in rows]
            widths = [max(width, *(len(line[i]) for line in lines)) for i, width in enumerate(widths)]
            if not printed:
                print(_aligned(COLUMNS, widths))
            for line in lines:
                print(_aligned(line, widths))
        printed += len(rows)
        if len(rows) < batch:
            break
    if not printed and not args.json:
        print("no audit entries" + (" match" if args.since or args.action else ""))
    return 0


def _aligned(values, widths: list[int]) -> str:
    """The columns padded to ``widths`` (grown as wider values come, a batch at a time); the
    last one (details) as it is."""
    return "  ".join([value.rjust(widths[0]) if i == 0 else value.ljust(widths[i])
                      for i, value in enumerate(values[:-1])] + [values[-1]]).rstrip()


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
