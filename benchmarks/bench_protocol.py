"""Protocol benchmark: frames/s for encode+decode, and link round trips/s over loopback.

Run: ``python benchmarks/bench_protocol.py`` (or ``make bench``). Prints a table; asserts nothing.
A round trip is REQUEST -> ACK -> ANSWER -> ACK between two real sockets on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from decimal import Decimal

from ev_common.link import Link, LinkServer
from ev_common.protocol import MESSAGES, NEED_DATA, Auth, FrameDecoder, Reg, encode_frame

MESSAGE = Reg("CP001", "C/Mayor, 45", Decimal("0.48"))


def bench_codec(n: int) -> float:
    """Messages/s through to_data + encode_frame + FrameDecoder + registry decode."""
    decoder = FrameDecoder()
    started = time.perf_counter()
    for _ in range(n):
        decoder.feed(encode_frame(MESSAGE.to_data()))
        frame = decoder.next_event()
        MESSAGES.decode(frame.text)
        assert decoder.next_event() is NEED_DATA
    return n / (time.perf_counter() - started)


def bench_framing_stream(n: int) -> float:
    """Frames/s decoding a stream of n frames fed in 64 KiB chunks (framing only)."""
    wire = encode_frame(MESSAGE.to_data()) * n
    decoder = FrameDecoder()
    count = 0
    started = time.perf_counter()
    for i in range(0, len(wire), 65536):
        decoder.feed(wire[i : i + 65536])
        while decoder.next_event() is not NEED_DATA:
            count += 1
    elapsed = time.perf_counter() - started
    assert count == n
    return n / elapsed


def bench_link(n: int) -> tuple[float, float, float]:
    """Round trips/s and p50/p99 latency (ms) of REQUEST -> ACK -> ANSWER -> ACK."""

    def handler(link: Link) -> None:
        while True:
            msg = link.recv(timeout=5)
            if msg is None:
                return
            link.send(Auth("OK", msg.cp_id))

    server = LinkServer("127.0.0.1", 0, handler, name="bench").start()
    latencies = []
    try:
        with Link.connect(*server.address) as link:
            started = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                link.send(MESSAGE)
                link.recv(timeout=5)
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - started
    finally:
        server.stop()
    latencies.sort()
    return n / elapsed, statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000, help="messages for the codec runs")
    parser.add_argument("--round-trips", type=int, default=5_000, help="link round trips")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the table shows the best and median")
    args = parser.parse_args(argv)
    rows = []
    codec = [bench_codec(args.frames) for _ in range(args.repeat)]
    rows.append(("encode+decode (message <-> frame)", "msg/s", max(codec), statistics.median(codec)))
    stream = [bench_framing_stream(args.frames) for _ in range(args.repeat)]
    rows.append(("framing only, streamed 64 KiB chunks", "frames/s", max(stream), statistics.median(stream)))
    links = [bench_link(args.round_trips) for _ in range(args.repeat)]
    rates = [r for r, _, _ in links]
    rows.append(("link round trip REQ->ACK->ANS->ACK", "rt/s", max(rates), statistics.median(rates)))
    print(f"EVCharging protocol benchmark  python {platform.python_version()}  {platform.machine()}  "
          f"frames={args.frames} round_trips={args.round_trips} repeat={args.repeat}")
    print(f"{'measure':40} {'unit':9} {'best':>12} {'median':>12}")
    for name, unit, best, median in rows:
        print(f"{name:40} {unit:9} {best:12,.0f} {median:12,.0f}")
    p50 = statistics.median(p for _, p, _ in links)
    p99 = statistics.median(p for _, _, p in links)
    print(f"{'link round-trip latency':40} {'ms':9} {'p50':>8} {p50:.3f}  {'p99':>5} {p99:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
