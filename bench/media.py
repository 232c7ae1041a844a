#!/usr/bin/env python3
"""RTP relay cost: pbxwarden's relay against rtpengine (userspace), same load, same run.

For each target the script anchors --calls calls (one audio stream each), then a load
generator plays both phones of every call: a 172-byte RTP packet (G.711, 20 ms) every
20 ms from each phone to the relay port its SDP answer named, for --seconds. It counts
what arrives at the other phone, and how late (the send time travels in the payload).
Reported per target, median of --runs: server CPU per relayed packet (user+system of
its process tree over the measured window, from /proc), loss, one-way latency through
the relay (p50, p99), and the ratio of CPU per packet. A third row, "direct", sends the
same load from phone to phone with no relay: its latency is the generator's own (one
Python process sending 2 x --calls packets each 20 ms), so what a relay adds is its
latency minus that row's.

- pbxwarden: ``pbxwarden.transport.rtp.MediaRelay`` in its own process on the event loop
  ``pbxwarden serve`` uses (uvloop when installed), anchored with the same call the
  B2BUA makes (``anchor(token, leg, sdp, host)``), driven over a small loopback control
  socket of this script.
- rtpengine (Debian ``rtpengine-daemon``): userspace forwarding (no kernel module,
  ``--table=-1``), ``--num-threads=1`` like the single event loop it is compared with,
  anchored with NG protocol offer/answer (bencode over UDP).

Everything listens on 127.0.0.1; every process started here is stopped before the
script exits. Needs: ``rtpengine`` on PATH; pbxwarden importable (the project's venv).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import BenchError, median_or_none, process_tree_cpu_seconds

LOOPBACK = "127.0.0.1"
PACKET = 172  # RTP header (12) + 160 bytes of G.711: 20 ms of audio
INTERVAL = 0.020


def log(message: str) -> None:
    print(f"[media {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def sdp(port: int) -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )


def sdp_port(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise BenchError(f"no audio port in {text!r}")


# ------------------------------------------------------------------ relay host mode


def serve_relay(control_port: int, port_min: int, port_max: int) -> None:
    """The pbxwarden side: MediaRelay on the event loop, anchoring on request."""
    import asyncio

    from pbxwarden.transport.rtp import MediaRelay

    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        relay = MediaRelay(LOOPBACK, port_min, port_max)
        relay.attach(loop)
        done = loop.create_future()

        class Control(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                request = json.loads(data)
                if request.get("cmd") == "stop":
                    done.set_result(None)
                    return
                body = relay.anchor(
                    request["token"], request["leg"], request["sdp"].encode(), LOOPBACK
                )
                self.transport.sendto(json.dumps({"sdp": body.decode()}).encode(), addr)  # type: ignore[attr-defined]

        await loop.create_datagram_endpoint(Control, local_addr=(LOOPBACK, control_port))
        print("ready", flush=True)
        await done
        relay.close()

    asyncio.run(main())


# ------------------------------------------------------------------------- targets


def bencode(value: object) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"
    raise TypeError(type(value))


@dataclass
class Target:
    name: str
    version: str
    proc: subprocess.Popen[bytes] | None  # None: "direct", phones sending to each other
    control: tuple[str, int]
    sock: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )

    def __post_init__(self) -> None:
        self.sock.settimeout(5)
        self.seq = 0

    def anchor(self, call: int, alice: int, bob: int) -> tuple[int, int]:
        """Ports alice and bob must send to, after offer (alice) and answer (bob)."""
        if self.proc is None:
            return bob, alice
        if self.name == "pbxwarden":
            to_bob = self._ask({"token": call, "leg": "a", "sdp": sdp(alice)})["sdp"]
            to_alice = self._ask({"token": call, "leg": "b", "sdp": sdp(bob)})["sdp"]
        else:
            ids = {"call-id": f"bench-{call}", "from-tag": f"a{call}"}
            to_bob = self._ng({"command": "offer", "sdp": sdp(alice), **ids})
            to_alice = self._ng({"command": "answer", "sdp": sdp(bob), "to-tag": f"b{call}", **ids})
        return sdp_port(to_alice), sdp_port(to_bob)

    def _ask(self, request: dict[str, object]) -> dict[str, str]:
        self.sock.sendto(json.dumps(request).encode(), self.control)
        return dict(json.loads(self.sock.recv(65535)))

    def _ng(self, command: dict[str, object]) -> str:
        self.seq += 1
        cookie = b"c%d " % self.seq
        self.sock.sendto(cookie + bencode(command), self.control)
        reply = self.sock.recv(65535)
        if not reply.startswith(cookie) or b"6:result2:ok" not in reply:
            raise BenchError(f"rtpengine refused {command['command']}: {reply[:200]!r}")
        text = reply[len(cookie) :].decode(errors="replace")
        start = text.index("3:sdp") + 5
        length, _, rest = text[start:].partition(":")
        return rest[: int(length)]

    def stop(self) -> None:
        if self.proc is None:
            self.sock.close()
            return
        with contextlib.suppress(OSError):
            if self.name == "pbxwarden":
                self.sock.sendto(b'{"cmd": "stop"}', self.control)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close()


def start_pbxwarden(port_min: int, workdir: Path) -> Target:
    control = free_port()
    out = (workdir / "pbxwarden.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-relay",
            str(control),
            str(port_min),
            str(port_min + 9999),
        ],
        stdout=subprocess.PIPE,
        stderr=out,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise BenchError(
            f"pbxwarden relay did not start: {(workdir / 'pbxwarden.log').read_text()}"
        )
    from importlib.metadata import version

    return Target("pbxwarden", f"pbxwarden {version('pbxwarden')}", proc, (LOOPBACK, control))


def start_rtpengine(binary: str, port_min: int, workdir: Path) -> Target:
    control = free_port()
    args = [
        binary,
        "--config-file=none",
        "--foreground",
        "--log-stderr",
        "--log-level=3",
        "--table=-1",
        f"--interface={LOOPBACK}",
        f"--listen-ng={LOOPBACK}:{control}",
        f"--port-min={port_min}",
        f"--port-max={port_min + 9999}",
        "--num-threads=1",
        "--timeout=600",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "rtpengine.log").open("wb"),
        start_new_session=True,
    )
    target = Target("rtpengine", rtpengine_version(binary), proc, (LOOPBACK, control))
    deadline = time.monotonic() + 10
    while True:
        try:
            target.sock.settimeout(0.5)
            target.sock.sendto(b"p1 " + bencode({"command": "ping"}), target.control)
            if b"pong" in target.sock.recv(1000):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise BenchError(
                f"rtpengine did not answer: {(workdir / 'rtpengine.log').read_text()[-2000:]}"
            )
    target.sock.settimeout(5)
    return target


def rtpengine_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    text = (out.stdout + out.stderr).strip().splitlines()
    return f"rtpengine {text[0].split()[-1]}" if text else "rtpengine"


# -------------------------------------------------------------------------- load


@dataclass
class Result:
    target: str
    sent: int
    received: int
    cpu_seconds: float
    seconds: float
    latencies_us: list[float]

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 1.0

    @property
    def cpu_us_per_packet(self) -> float:
        return 1e6 * self.cpu_seconds / max(1, self.received)

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_load(target: Target, calls: int, seconds: float) -> Result:
    """Both phones of every call send every 20 ms; each packet carries its send time."""
    phones: list[tuple[socket.socket, tuple[str, int]]] = []
    for call in range(calls):
        alice, bob = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for s in (alice, bob):
            s.bind((LOOPBACK, 0))
            s.setblocking(False)
        alice_to, bob_to = target.anchor(call + 1, alice.getsockname()[1], bob.getsockname()[1])
        phones += [(alice, (LOOPBACK, alice_to)), (bob, (LOOPBACK, bob_to))]
    header = struct.pack("!BBHII", 0x80, 0, 0, 0, 0x5EED)  # V=2, PCMU, SSRC
    pad = bytes(PACKET - 12 - 8 - 4)
    sent = received = 0
    latencies: list[float] = []
    selector = selectors.DefaultSelector()  # epoll: a packet is read as soon as it lands
    for sock, _ in phones:
        selector.register(sock, selectors.EVENT_READ)
    pid = target.proc.pid if target.proc is not None else None
    cpu_start = process_tree_cpu_seconds(pid) if pid else 0.0
    start = time.perf_counter()
    stop_sending = start + seconds
    tick = start
    try:
        while True:
            now = time.perf_counter()
            if tick <= now < stop_sending:
                for index, (sock, dest) in enumerate(phones):
                    stamp = time.perf_counter_ns()
                    with contextlib.suppress(BlockingIOError):
                        sock.sendto(header + struct.pack("!QI", stamp, index) + pad, dest)
                        sent += 1
                tick += INTERVAL
            elif now >= stop_sending + 0.5:  # half a second for the last packets to arrive
                break
            for key, _ in selector.select(timeout=max(0.0, min(tick, stop_sending + 0.5) - now)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                while True:
                    try:
                        data = sock.recv(2048)
                    except BlockingIOError:
                        break
                    received += 1
                    if received % 16 == 0:  # a sample is plenty
                        (stamp,) = struct.unpack_from("!Q", data, 12)
                        latencies.append((time.perf_counter_ns() - stamp) / 1000)
    finally:
        cpu = process_tree_cpu_seconds(pid) - cpu_start if pid else 0.0
        selector.close()
        for sock, _ in phones:
            sock.close()
    return Result(target.name, sent, received, cpu, time.perf_counter() - start, latencies)


# ------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--calls", type=int, default=200, help="concurrent calls anchored")
    p.add_argument("--seconds", type=float, default=10.0, help="load per measurement")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rtpengine", default="rtpengine")
    p.add_argument("--json", type=Path)
    p.add_argument("--serve-relay", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_relay:
        serve_relay(*args.serve_relay)
        return 0
    if not shutil.which(args.rtpengine):
        raise SystemExit(f"{args.rtpengine} not found (Debian package rtpengine-daemon)")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pbxwarden-media-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Result]] = {"pbxwarden": [], "rtpengine": [], "direct": []}
    versions: dict[str, str] = {}
    started = time.monotonic()
    for run in range(args.runs):
        order = ["pbxwarden", "rtpengine"] if run % 2 == 0 else ["rtpengine", "pbxwarden"]
        order.append("direct")
        for name in order:
            base = 20000 + 10000 * (name == "rtpengine")
            if name == "direct":
                target = Target("direct", "no relay (phones to each other)", None, ("", 0))
            elif name == "pbxwarden":
                target = start_pbxwarden(base, workdir)
            else:
                target = start_rtpengine(args.rtpengine, base, workdir)
            versions[name] = target.version
            try:
                result = run_load(target, args.calls, args.seconds)
            finally:
                target.stop()
            results[name].append(result)
            log(
                f"run {run + 1} {name}: {result.received}/{result.sent} packets, "
                f"{result.cpu_us_per_packet:.2f} us CPU/packet, loss {100 * result.loss:.3f}%, "
                f"latency p50 {result.latency(0.5):.0f} us p99 {result.latency(0.99):.0f} us"
            )
    print(report(args, results, versions, time.monotonic() - started))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    n: [r.__dict__ | {"latencies_us": len(r.latencies_us)} for r in rs]
                    for n, rs in results.items()
                },
                indent=1,
            )
        )
    return 0


def report(
    args: argparse.Namespace,
    results: dict[str, list[Result]],
    versions: dict[str, str],
    wall: float,
) -> str:
    pps = args.calls * 2 / INTERVAL
    lines = [
        f"{args.calls} concurrent calls, both phones sending 20 ms G.711 packets: "
        f"{pps:,.0f} packets/s offered for {args.seconds:.0f} s; median of {args.runs} runs.",
        "",
        "| Relay | CPU per relayed packet | Runs (µs) | Loss | Latency p50 | Latency p99 "
        "| Calls per core (est.) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    medians: dict[str, float] = {}
    for name, runs in results.items():
        cpu = median_or_none([r.cpu_us_per_packet for r in runs]) or 0.0
        medians[name] = cpu
        loss = statistics.median(r.loss for r in runs)
        p50 = statistics.median(r.latency(0.5) for r in runs)
        p99 = statistics.median(r.latency(0.99) for r in runs)
        per_core = f"{1e6 / (cpu * 2 / INTERVAL):,.0f}" if cpu else "-"
        runs_text = " / ".join(f"{r.cpu_us_per_packet:.2f}" for r in runs) if cpu else "-"
        lines.append(
            f"| {versions.get(name, name)} | **{cpu:.2f} µs** | {runs_text} | "
            f"{100 * loss:.3f}% | {p50:.0f} µs | {p99:.0f} µs | {per_core} |"
        )
    ratio = medians["rtpengine"] / medians["pbxwarden"]
    lines += [
        "",
        f"**Ratio rtpengine / pbxwarden CPU per packet: {ratio:.2f}** "
        "(above 1: pbxwarden is cheaper).",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}.",
        f"- Command: `python3 bench/media.py --calls {args.calls} --seconds {args.seconds:g} "
        f"--runs {args.runs}` (finished in {wall:.0f} s).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
