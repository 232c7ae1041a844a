#!/usr/bin/env python3
"""Busy lamps at scale: 10,000 dialog-package subscriptions held by one server, the
memory each costs and how fast a ringing extension's watchers hear of it.

The script starts ``pbxwarden serve`` on its embedded defaults in a temporary data
directory with --subscribers extensions that each watch --per extensions (a
receptionist's sidecars: 50 x 200 = 10,000 subscriptions by default), subscribing from
one UDP socket per subscriber with digest authentication, as desk phones do. Memory
per subscription is the growth of the server's resident set (``/proc``) divided by the
subscriptions. Then, --rings times, a watched extension (registered from a socket of
this script) is called: the time from the caller's authenticated INVITE to each
watcher's NOTIFY saying "early" is the fan-out latency (p50, p99 over every NOTIFY);
the phone answers 486 and the lamps go idle again before the next ring.

No peer is measured: Kamailio's presence module needs a database and a presence server
set up beside it, more than this benchmark is about (the guide asks for a ratio where a
peer runs here). Everything listens on 127.0.0.1; the server is stopped at exit.
"""

# ruff: noqa: B023  (the per-ring handlers run inside the iteration that defines them)
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pbxwarden.sip.digest import build_authorization, choose_challenge
from pbxwarden.sip.message import Request, Response, generate_branch, parse_message


def password() -> str:
    return "Bench-" + secrets.token_urlsafe(12) + "-9q"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Phone:
    """One UDP socket speaking just enough SIP for the benchmark."""

    def __init__(
        self, number: str, secret: str, server: tuple[str, int], ip: str = "127.0.0.1"
    ) -> None:
        self.number, self.secret, self.server = number, secret, server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.local = self.sock.getsockname()
        self.cseq = 0
        self.nc = 0

    def send(self, text: str) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), self.server)

    def request(
        self,
        method: str,
        target: str,
        call_id: str,
        extra: str = "",
        tag: str = "t",
        body: str = "",
    ) -> None:
        self.cseq += 1
        host = f"{self.server[0]}:{self.server[1]}"
        ctype = "Content-Type: application/sdp\n" if body else ""
        self.send(
            f"{method} sip:{target}@{host} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={generate_branch()};rport\n"
            f"From: <sip:{self.number}@{host}>;tag={tag}\nTo: <sip:{target}@{host}>\n"
            f"Call-ID: {call_id}\nCSeq: {self.cseq} {method}\n"
            f"Contact: <sip:{self.number}@{self.local[0]}:{self.local[1]}>\n"
            f"Max-Forwards: 70\n{extra}{ctype}Content-Length: {len(body)}\n\n{body}"
        )

    def auth(self, challenge: Response, method: str, target: str) -> str:
        self.nc += 1
        chosen = choose_challenge(challenge.headers.get_all("WWW-Authenticate"))
        host = f"{self.server[0]}:{self.server[1]}"
        value = build_authorization(
            chosen, method, f"sip:{target}@{host}", self.number, self.secret,
            cnonce=os.urandom(6).hex(), nc=1,
        )  # fmt: skip
        return f"Authorization: {value}\n"

    def answer(self, request: Request, status: int, reason: str) -> None:
        raw = request.to_bytes().decode(errors="replace").replace("\r\n", "\n")
        head = raw.split("\n\n", 1)[0].split("\n")
        echoed = ("via", "from", "to", "call-id", "cseq")
        keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in echoed]
        self.send(f"SIP/2.0 {status} {reason}\n" + "\n".join(keep) + "\nContent-Length: 0\n\n")

    def receive(self) -> list[Request | Response]:
        out: list[Request | Response] = []
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return out
            out.append(parse_message(data))


def ack_for(m: Response, number: str, port: int) -> str:
    """The ACK of a non-2xx final answer to our INVITE (RFC 3261 17.1.1.3)."""
    return (
        f"ACK sip:{number}@127.0.0.1:{port} SIP/2.0\nVia: {m.via[0]}\n"
        f"From: {m.from_}\nTo: {m.to}\nCall-ID: {m.call_id}\n"
        f"CSeq: {m.cseq.number} ACK\nContent-Length: 0\n\n"
    )


def pump(phones: list[Phone], seconds: float, handle: object) -> None:
    sel = selectors.DefaultSelector()
    for p in phones:
        sel.register(p.sock, selectors.EVENT_READ, p)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.05):
                phone: Phone = key.data
                for message in phone.receive():
                    if handle(phone, message):  # type: ignore[operator]
                        return
    finally:
        sel.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--subscribers", type=int, default=50)
    ap.add_argument("--per", type=int, default=200, help="extensions each subscriber watches")
    ap.add_argument("--rings", type=int, default=20)
    args = ap.parse_args()
    total = args.subscribers * args.per
    with tempfile.TemporaryDirectory(prefix="pbxwarden-blf-") as tmp:
        data = Path(tmp) / "data"
        cli = [sys.executable, "-m", "pbxwarden.cli.main", "--data-dir", str(data)]
        subprocess.run([*cli, "init"], check=True, capture_output=True)
        secrets_by = {}
        rows = []
        for i in range(args.subscribers):
            secrets_by[f"3{i:03d}"] = password()
        for j in range(args.per):
            secrets_by[f"4{j:03d}"] = password()
        secrets_by["5000"] = password()
        rows = [f"{n},{p}\n" for n, p in secrets_by.items()]
        (Path(tmp) / "ext.csv").write_text("".join(rows))
        subprocess.run([*cli, "extension", "import", str(Path(tmp) / "ext.csv")], check=True,
                       capture_output=True)  # fmt: skip
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        # a phone with 200 busy lamp keys subscribes to all of them at once when it boots;
        # a registered one gets firewall.proven_rate_limit, these phones do not register
        env = {**os.environ, "PBXWARDEN_FIREWALL__RATE_LIMIT": "1000"}
        server = subprocess.Popen(
            [*cli, "serve", "--sip", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=(Path(tmp) / "server.log").open("w"), env=env,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            deadline = time.monotonic() + 30
            line = b""
            while b"pbxwarden ready" not in line and time.monotonic() < deadline:
                line = server.stdout.readline()
            addr = ("127.0.0.1", port)
            # each desk phone from an address of its own, as in an office
            subscribers = [Phone(f"3{i:03d}", secrets_by[f"3{i:03d}"], addr, f"127.0.1.{i + 1}")
                           for i in range(args.subscribers)]  # fmt: skip
            time.sleep(1.0)
            before = rss_kib(server.pid)
            started = time.monotonic()

            def subscribed(phone: Phone, m: Request | Response) -> bool:
                if isinstance(m, Response) and m.cseq.method == "SUBSCRIBE" and m.status == 401:
                    target = m.to.uri.user or ""
                    phone.request("SUBSCRIBE", target, m.call_id,
                                  "Event: dialog\nExpires: 3600\n"
                                  + phone.auth(m, "SUBSCRIBE", target))  # fmt: skip
                elif isinstance(m, Request) and m.method == "NOTIFY":
                    phone.answer(m, 200, "OK")
                return False

            done: set[tuple[str, str]] = set()

            def subscribed_round(phone: Phone, m: Request | Response) -> bool:
                if isinstance(m, Response) and m.status == 200 and m.cseq.method == "SUBSCRIBE":
                    done.add((phone.number, m.to.uri.user or ""))
                subscribed(phone, m)
                return len(done) >= goal

            goal = 0
            for j in range(args.per):
                goal += len(subscribers)
                target = f"4{j:03d}"
                for attempt in range(5):  # UDP: what got no answer is sent again
                    for phone in subscribers:
                        if (phone.number, target) not in done:
                            phone.request("SUBSCRIBE", target, f"blf-{phone.number}-{j}-{attempt}",
                                          "Event: dialog\nExpires: 3600\n")  # fmt: skip
                    pump(subscribers, 2.0, subscribed_round)
                    if len(done) >= goal:
                        break
            established = len(done)
            setup = time.monotonic() - started
            # finished transactions are kept 32 s (Timer J): measure what stays after them
            pump(subscribers, 40.0, subscribed)
            after = rss_kib(server.pid)
            print(f"subscriptions: {established}/{total} in {setup:.1f} s")
            per_sub = (after - before) * 1024 / max(1, established)
            print(f"server RSS {before} KiB -> {after} KiB: {per_sub:.0f} bytes per subscription")

            latencies: list[float] = []
            caller = Phone("5000", secrets_by["5000"], addr, "127.0.2.1")
            for ring in range(args.rings):
                number = f"4{ring % args.per:03d}"
                target = Phone(number, secrets_by[number], addr, f"127.0.3.{ring + 1}")
                target.request("REGISTER", number, f"reg-{number}", "Expires: 60\n")
                got: dict[str, float] = {}
                sent_at = 0.0

                def registered(phone: Phone, m: Request | Response) -> bool:
                    if isinstance(m, Response) and m.status == 401:
                        phone.request("REGISTER", number, m.call_id, "Expires: 60\n"
                                      + phone.auth(m, "REGISTER", number))  # fmt: skip
                    return isinstance(m, Response) and m.status == 200

                pump([target], 5, registered)
                sdp = ("v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
                       "m=audio 40000 RTP/AVP 0\n")  # fmt: skip
                caller.request("INVITE", number, f"ring-{ring}", body=sdp)

                def rung(phone: Phone, m: Request | Response) -> bool:
                    nonlocal sent_at
                    if phone is caller and isinstance(m, Response):
                        if os.environ.get("BLF_DEBUG"):
                            print("caller got", m.status, m.cseq.method, m.reason)
                        if m.status == 401 and m.cseq.method == "INVITE":
                            caller.send(ack_for(m, number, port))
                            sent_at = time.perf_counter()
                            caller.request("INVITE", number, m.call_id,
                                           caller.auth(m, "INVITE", number), body=sdp)  # fmt: skip
                        elif m.status >= 300 and m.cseq.method == "INVITE":
                            caller.send(ack_for(m, number, port))
                    elif phone is target and isinstance(m, Request) and m.method == "INVITE":
                        return False
                    elif isinstance(m, Request) and m.method == "NOTIFY":
                        phone.answer(m, 200, "OK")
                        if b"<state>early</state>" in m.body and phone.number not in got:
                            got[phone.number] = time.perf_counter() - sent_at
                    return len(got) >= args.subscribers

                pump([caller, target, *subscribers], 10, rung)
                if len(got) < args.subscribers:
                    print(f"ring {ring}: {len(got)} of {args.subscribers} lamps heard of it")
                latencies += list(got.values())
                # the phone says busy: the call ends and the lamps go idle again
                ringing: list[Request] = []

                def invited(phone: Phone, m: Request | Response) -> bool:
                    if isinstance(m, Request) and m.method == "INVITE":
                        ringing.append(m)
                    return True

                pump([target], 0.2, invited)
                for invite in ringing:
                    target.answer(invite, 486, "Busy Here")

                def settle(phone: Phone, m: Request | Response) -> bool:
                    if isinstance(m, Request) and m.method == "NOTIFY":
                        phone.answer(m, 200, "OK")
                    return False

                pump([caller, target, *subscribers], 1.0, settle)
                target.sock.close()
            latencies.sort()
            if latencies:
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
                print(f"fan-out to {args.subscribers} watchers x {args.rings} rings: "
                      f"{len(latencies)} NOTIFYs, p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
            if server.poll() is not None or os.environ.get("BLF_DEBUG"):
                print((Path(tmp) / "server.log").read_text()[-3000:])
            return 0 if established == total else 1
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
            if server.poll() is None:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
