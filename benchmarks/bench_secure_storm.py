"""Secure-mode registration storm: how long Central takes to authenticate N CPs, with and
without resumption tickets (docs/performance.md "Secure mode").

Starts a real Central with ``--secure`` (TLS, credentials checked against the database) as a
process, N CPs registered in its database, and N Monitor links from ``--threads`` threads of
this process: each connects over TLS (Central's certificate pinned), sends ``REG`` with its
credential (and its ticket, if it has one), reads ``AUTH`` and ``KEY``, and closes. Phases:

1. ``scrypt``: the first ``--scrypt-cps`` CPs after Central starts: each costs an scrypt check.
2. ``remembered``: the same CPs again, the same Central: each check is remembered in memory.
3. ``ticket``: Central killed (SIGKILL) and started again; all N CPs come back with tickets.

The CPs share one credential and its stored hash (an scrypt check costs the same whatever the
credential; hashing N credentials first would cost N checks of setup). Each CP is given its key
before Central first starts, as after its first authentication. CPs that were not in phase 1
get their tickets from this program, with Central's master key: the same HMAC Central computes
(ev_central/tickets.py), as if they had authenticated before the restart; phase 1's tickets,
which Central gave, are checked to be equal to those this program computes.

Run from the project root: ``python -m benchmarks.bench_secure_storm [--cps N] [--db URL]``.
Without --db it uses a fresh SQLite file; without --kafka it starts a Tansu broker. Prints a
table and a JSON line; asserts only that every CP was admitted.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from benchmarks.programs import programs
from ev_central.keys import MASTER_KEY_FILE, KeyRing, load_or_make_master_key
from ev_central.store import open_store
from ev_central.tickets import TicketBox
from ev_common.credentials import hash_credential, new_credential
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Key, Reg
from ev_common.tls import client_context, ensure_certificate
from tests.support.processes import ProgramRunner
from tests.support.services import free_port, port_open
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
LINK = LinkConfig(connect_timeout=10.0, handshake_timeout=30.0, ack_timeout=10.0, max_retries=3, write_timeout=10.0)
ANSWER_TIMEOUT = 120.0  # for AUTH then KEY


@dataclass
class Phase:
    name: str
    cps: int
    seconds: float
    latencies: list[float]
    failures: list[str]

    @property
    def per_second(self) -> float:
        return self.cps / self.seconds if self.seconds else 0.0

    def row(self) -> dict:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
        return {"phase": self.name, "cps": self.cps, "seconds": round(self.seconds, 3),
                "per_second": round(self.per_second, 1),
                "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else 0.0,
                "p99_ms": round(p99 * 1000, 1), "failures": len(self.failures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time for a secure Central to authenticate N CPs, with and "
                                                 "without resumption tickets.")
    parser.add_argument("--cps", type=int, default=1000, help="CPs in the ticket phase (default 1000)")
    parser.add_argument("--scrypt-cps", type=int, default=200,
                        help="CPs in the scrypt and remembered phases (default 200; at most --cps)")
    parser.add_argument("--threads", type=int, default=16, help="Monitor links at once (default 16)")
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--kafka", help="bootstrap of a running broker (default: start a Tansu broker)")
    args = parser.parse_args(argv)
    if not 1 <= args.scrypt_cps <= args.cps or args.threads < 1:
        parser.error("need 1 <= --scrypt-cps <= --cps and --threads >= 1")
    with programs(args.kafka) as (directory, runner, kafka):
        db = args.db or f"sqlite:///{directory / 'bench.db'}"
        phases = run(runner, directory, db, kafka, args.cps, args.scrypt_cps, args.threads)
    print(f"EVCharging secure registration storm  db={'SQLite' if not args.db else args.db.split(':')[0]}  "
          f"threads={args.threads}")
    print(f"{'phase':12} {'CPs':>6} {'seconds':>8} {'CPs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    rows = [phase.row() for phase in phases]
    for row in rows:
        print(f"{row['phase']:12} {row['cps']:6d} {row['seconds']:8.2f} {row['per_second']:8.1f} "
              f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['failures']:7d}")
    scrypt, ticket = phases[0], phases[2]
    if scrypt.per_second and ticket.per_second:
        print(f"10,000 CPs after a restart: {10_000 / scrypt.per_second:,.0f} s without tickets, "
              f"{10_000 / ticket.per_second:,.1f} s with them")
    print(json.dumps({"bench": "secure_storm", "threads": args.threads, "phases": rows}))
    failures = [failure for phase in phases for failure in phase.failures]
    for failure in failures[:10]:
        print("FAILED:", failure)
    return 1 if failures else 0


def run(runner: ProgramRunner, directory: Path, db: str, kafka: str, cps: int, scrypt_cps: int,
        threads: int) -> list[Phase]:
    data = directory / "central-data"
    fingerprint = ensure_certificate(data, "ev_central", [HOST]).fingerprint
    master = load_or_make_master_key(data / MASTER_KEY_FILE)  # Central takes this one
    credential = new_credential()
    stored = hash_credential(credential)
    cp_ids = [f"SEC{n:05d}" for n in range(1, cps + 1)]
    store = open_store(db)
    try:
        keys = KeyRing(store, master)
        for cp_id in cp_ids:
            store.register_cp(cp_id, f"Calle {cp_id}", "0.40", stored)
            keys.issue(cp_id)  # each CP holds its key already, as after its first authentication
    finally:
        store.close()
    port = free_port()

    def start_central():
        central = runner.start("central", ["--port", str(port), "--kafka", kafka, "--db", db, "--secure",
                                           "--log-level", "WARNING"],
                               package="ev_central", env={"EV_DATA_DIR": str(data)})
        wait_until(lambda: port_open(HOST, port) or central.proc.poll() is not None, 60, "Central to listen")
        assert central.proc.poll() is None, f"Central exited:\n{central.output()[-3000:]}"
        return central

    tls = client_context(fingerprint=fingerprint)
    central = start_central()
    tickets: dict[str, str] = {}
    phases = [storm("scrypt", [(cp, "") for cp in cp_ids[:scrypt_cps]], credential, port, tls, threads, tickets)]
    phases.append(storm("remembered", [(cp, "") for cp in cp_ids[:scrypt_cps]], credential, port, tls, threads,
                        tickets))
    box = TicketBox(master)
    for cp_id in cp_ids:
        computed = box.issue(cp_id, credential, stored)
        assert tickets.setdefault(cp_id, computed) == computed, f"{cp_id}: Central's ticket is not the HMAC expected"
    central.send_signal(signal.SIGKILL)
    central.wait_exit(10)
    start_central()
    phases.append(storm("ticket", [(cp, tickets[cp]) for cp in cp_ids], credential, port, tls, threads, tickets))
    return phases


def storm(name: str, cps: list[tuple[str, str]], credential: str, port: int, tls, threads: int,
          tickets: dict[str, str]) -> Phase:
    """Every CP of ``cps`` (id, ticket) registers once, ``threads`` at a time."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    for item in cps:
        work.put(item)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker():
        while True:
            try:
                cp_id, ticket = work.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            try:
                new_ticket, failure = register(cp_id, credential, ticket, port, tls)
            except (LinkError, OSError, ValueError) as exc:
                new_ticket, failure = "", f"{cp_id}: {exc}"
            with lock:
                if failure:
                    failures.append(failure)
                else:
                    latencies.append(time.monotonic() - started)
                    tickets[cp_id] = new_ticket

    started = time.monotonic()
    pool = [threading.Thread(target=worker, name=f"monitor-{n}", daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return Phase(name, len(cps), time.monotonic() - started, latencies, failures)


def register(cp_id: str, credential: str, ticket: str, port: int, tls) -> tuple[str, str]:
    """One Monitor's registration: (the ticket of its AUTH#OK, "") or ("", what went wrong)."""
    link = Link.connect(HOST, port, LINK, tls=tls)
    try:
        link.send(Reg(cp_id, f"Calle {cp_id}", Decimal("0.40"), credential, ticket))
        deadline = time.monotonic() + ANSWER_TIMEOUT
        auth = None
        while time.monotonic() < deadline:
            message = link.recv(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(message, Auth):
                if not message.ok:
                    return "", f"{cp_id}: AUTH#KO {message.text}"
                auth = message
            elif isinstance(message, Key) and auth is not None:
                return auth.ticket, ""
        return "", f"{cp_id}: no AUTH and KEY within {ANSWER_TIMEOUT:g} s"
    finally:
        link.close("registered")


if __name__ == "__main__":
    raise SystemExit(main())
