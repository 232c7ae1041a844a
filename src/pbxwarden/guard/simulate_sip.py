"""`pbxwarden simulate --sip`: a few toll-fraud attacks played through the real SIP path.

The in-process simulator (simulate.py) proves the guard's decisions on a simulated month;
it cannot prove that the server applies them. This runs the real thing on loopback, in
real time and in a throwaway data directory: `pbxwarden serve`, SIPp as the carrier
(every INVITE that reaches it is a call that would cost money), a hijacked phone that
answers with a 302 to a premium-rate number, a cracked extension dialling
revenue-share numbers, and ordinary national calls that must still go through.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

CARRIER_IP = "127.0.0.2"
PBX_IP = "127.0.0.1"
DID = "2025550100"
PREMIUM = "19005550123"
PASSWORDS = {  # extension: password (a throwaway PBX, strong enough for its checks)
    "1000": "Legit-Passw0rd-sim1",  # an ordinary user
    "2000": "Victim-Passw0rd-sim2",  # the hijacked phone behind the DID
    "3000": "Cracked-Passw0rd-sim3",  # the guessed password
}
IRSF_NUMBERS = ("+882163020000", "+5372345678", "+37167812345", "+68221234", "+252612345678")
NATIONAL_NUMBERS = ("2025550143", "3125550188", "4155550123")


class SipSimulationError(Exception):
    """The SIP simulation could not run (no SIPp, the server did not start...)."""


@dataclass
class SipScenarioResult:
    name: str
    description: str
    extension: str
    attempts: int
    reached_carrier: int  # INVITEs the carrier received: calls that cost money
    refused: int  # blocked by the PBX (call records with disposition "blocked")
    completed: int  # answered
    alerts: int  # distinct alerts opened or raised again during the scenario
    alert_events: int  # occurrences behind them (an alert repeats with a count)
    suspended: bool  # the extension was suspended at the end of the scenario


@dataclass
class SipReport:
    scenarios: list[SipScenarioResult]
    seconds: float

    def by_name(self, name: str) -> SipScenarioResult:
        return next(s for s in self.scenarios if s.name == name)

    def to_json(self) -> dict[str, Any]:
        legit = self.by_name("legit-national")
        return {
            "scenarios": [asdict(s) for s in self.scenarios],
            "legit_attempts": legit.attempts,
            "legit_completed": legit.completed,
            "seconds": round(self.seconds, 1),
        }

    def markdown(self) -> str:
        lines = [
            "| scenario | attempts | reached the carrier | refused | completed "
            "| alerts (occurrences) | extension suspended |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in self.scenarios:
            suspended = "yes" if s.suspended else "no"
            lines.append(
                f"| {s.name} ({s.extension}) | {s.attempts} | {s.reached_carrier} | {s.refused} "
                f"| {s.completed} | {s.alerts} ({s.alert_events}) | {suspended} |"
            )
        legit = self.by_name("legit-national")
        lines += [
            "",
            *(f"- {s.name}: {s.description}" for s in self.scenarios),
            "",
            f"Legit calls completed: {legit.completed} of {legit.attempts}. "
            f"Real SIP on loopback, {self.seconds:.0f} s.",
        ]
        return "\n".join(lines)


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise SipSimulationError(f"no free port on {host}")


def _die_with_parent() -> None:
    """In a child before it runs: end it when the simulation's process dies, however it
    dies (a SIGKILL leaves no time for ``stop_all``), so no server or SIPp outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Run:
    """One simulation: the temporary data directory, the server and the SIPp peers."""

    def __init__(self, root: Path, calls: int) -> None:
        self.root = root
        self.calls = calls
        self.data_dir = root / "data"
        self.scenarios = root / "scenarios"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sip_port = free_port(PBX_IP)
        self.carrier_port = free_port(CARRIER_IP)
        self.carrier_log = root / "carrier-messages.log"
        self.server_out = root / "server.out"
        self.server_err = root / "server.err"
        self.seen_cdrs: set[str] = set()
        self.alert_counts: dict[int, int] = {}

    # -- processes ------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 20) -> str:
        cmd = [sys.executable, "-m", "pbxwarden.cli.main", "--data-dir", str(self.data_dir)]
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise SipSimulationError(f"pbxwarden {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def cli_json(self, *args: str) -> list[dict[str, Any]]:
        text = self.cli(*args).strip()
        rows: list[dict[str, Any]] = json.loads(text) if text.startswith("[") else []
        return rows

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **kwargs
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def start_server(self, timeout: float = 15) -> None:
        env = {**os.environ, "PBXWARDEN_SIP__LISTEN": f"{PBX_IP}:{self.sip_port}"}
        with self.server_out.open("wb") as out, self.server_err.open("wb") as err:
            cmd = [sys.executable, "-m", "pbxwarden.cli.main", "--data-dir", str(self.data_dir)]
            proc = self.spawn([*cmd, "serve"], stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"pbxwarden ready" in self.server_out.read_bytes():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.server_err.read_text(errors="replace")[-2000:]
        raise SipSimulationError(f"the pbxwarden server did not become ready:\n{tail}")

    def sipp_args(self, scenario: str, local_ip: str, port: int, name: str) -> list[str]:
        return [
            "sipp",
            "-sf",
            str(self.scenarios / scenario),
            "-i",
            local_ip,
            "-p",
            str(port),
            "-t",
            "u1",
            "-nostdin",
            "-nd",
            "-max_retrans",
            "3",
            "-trace_err",
            "-error_file",
            str(self.root / f"{name}-errors.log"),
        ]

    def start_uas(self, scenario: str, ip: str, port: int, name: str, *extra: str) -> None:
        args = self.sipp_args(scenario, ip, port, name)
        args += ["-m", "1000", "-timeout", "60s", *extra]
        self.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root)
        time.sleep(0.3)  # let it bind

    def run_uac(
        self,
        scenario: str,
        lines: list[str],
        name: str,
        *,
        local_ip: str = PBX_IP,
        local_port: int | None = None,
        rate: float = 5,
        timeout: float = 15,
    ) -> int:
        """Run SIPp as a client, one call per ``-inf`` line; returns its successful calls."""
        inf = self.root / f"{name}.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(f"{line}\n" for line in lines))
        stat = self.root / f"{name}-stat.csv"
        port = local_port or free_port(local_ip)
        args = self.sipp_args(scenario, local_ip, port, name)
        args = [args[0], f"{PBX_IP}:{self.sip_port}", *args[1:]]
        args += ["-inf", str(inf), "-m", str(len(lines)), "-r", str(rate), "-l", "5"]
        args += ["-key", "domain", PBX_IP, "-auth_uri", PBX_IP]
        args += ["-timeout", f"{int(timeout)}s", "-recv_timeout", "5000"]
        args += ["-trace_stat", "-stf", str(stat)]
        proc = self.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root)
        try:
            proc.wait(timeout + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return _sipp_successful(stat)

    # -- measurements ---------------------------------------------------------------------

    def carrier_invites(self) -> int:
        """Distinct calls whose INVITE reached the carrier so far."""
        if not self.carrier_log.exists():
            return 0
        text = self.carrier_log.read_text(errors="replace")
        calls = set()
        for block in text.split("message received")[1:]:
            body = block.split("\n", 2)[-1].lstrip()
            if body.startswith("INVITE "):
                m = re.search(r"^Call-ID:\s*(\S+)", body, re.MULTILINE | re.IGNORECASE)
                calls.add(m.group(1) if m else body[:200])
        return len(calls)

    def new_cdrs(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 5
        while True:
            rows = self.cli_json("cdr", "--json")
            fresh = [r for r in rows if _cdr_key(r) not in self.seen_cdrs]
            if all(r.get("disposition") != "in-progress" for r in fresh):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.seen_cdrs.update(_cdr_key(r) for r in fresh)
        return fresh

    def new_alerts(self) -> tuple[int, int]:
        """Alerts opened or raised again since the last call, and their new occurrences."""
        counts = {int(r["id"]): int(r["count"]) for r in self.cli_json("alerts", "list", "--json")}
        deltas = [c - self.alert_counts.get(i, 0) for i, c in counts.items()]
        self.alert_counts = counts
        return sum(1 for d in deltas if d > 0), sum(d for d in deltas if d > 0)

    def suspended(self, number: str) -> bool:
        rows = self.cli_json("extension", "list", "--json")
        return any(r["number"] == number and r.get("suspended") for r in rows)

    # -- the simulation -------------------------------------------------------------------

    def setup(self) -> None:
        self.scenarios.mkdir()
        for item in resources.files("pbxwarden.guard").joinpath("data", "sipp").iterdir():
            if item.name.endswith(".xml"):
                (self.scenarios / item.name).write_text(item.read_text())
        self.cli("init")
        for number, password in PASSWORDS.items():
            self.cli("extension", "add", number, "--password", password)
        self.cli("trunk", "add", "carrier", "--host", CARRIER_IP, "--port", str(self.carrier_port))
        self.cli("did", "add", DID, "--extension", "2000")
        self.start_server()
        self.start_uas(
            "carrier_uas.xml",
            CARRIER_IP,
            self.carrier_port,
            "carrier",
            "-trace_msg",
            "-message_file",
            str(self.carrier_log),
        )

    def register(self, number: str) -> int:
        port = free_port(PBX_IP)
        line = f"{number};{_auth(number)};-"
        if self.run_uac("register.xml", [line], f"register-{number}", local_port=port) != 1:
            raise SipSimulationError(f"SIPp could not register extension {number}")
        return port

    def scenario(
        self, name: str, description: str, extension: str, lines: list[str], **kw: Any
    ) -> SipScenarioResult:
        before = self.carrier_invites()
        self.run_uac("call_any.xml", lines, name, **kw)
        time.sleep(1.0)  # let the guard write its alerts and suspensions
        rows = self.new_cdrs()
        alerts, events = self.new_alerts()
        return SipScenarioResult(
            name=name,
            description=description,
            extension=extension,
            attempts=len(lines),
            reached_carrier=self.carrier_invites() - before,
            refused=sum(1 for r in rows if r.get("disposition") == "blocked"),
            completed=sum(1 for r in rows if r.get("disposition") == "answered"),
            alerts=alerts,
            alert_events=events,
            suspended=self.suspended(extension),
        )

    def play(self) -> list[SipScenarioResult]:
        n = self.calls
        victim_port = self.register("2000")
        self.start_uas(
            "phone_redirect.xml", PBX_IP, victim_port, "victim", "-key", "target", PREMIUM
        )
        diversion = self.scenario(
            "diversion-premium",
            f"the phone behind DID {DID} answers 302 to +{PREMIUM}; "
            f"the attacker calls the DID from the carrier {n} times",
            "2000",
            [f"+1555123{i:04d};-;+1{DID}" for i in range(n)],
            local_ip=CARRIER_IP,
        )
        irsf = self.scenario(
            "direct-irsf",
            "a cracked password dials +882, Cuba, Latvia, the Cook Islands, Somalia",
            "3000",
            [f"3000;{_auth('3000')};{IRSF_NUMBERS[i % len(IRSF_NUMBERS)]}" for i in range(n)],
        )
        legit = self.scenario(
            "legit-national",
            "an ordinary user calls national numbers, after the attacks",
            "1000",
            [f"1000;{_auth('1000')};{NATIONAL_NUMBERS[i % 3]}" for i in range(max(3, n // 2))],
        )
        return [diversion, irsf, legit]


def _auth(number: str) -> str:
    return f"[authentication username={number} password={PASSWORDS[number]}]"


def _cdr_key(row: dict[str, Any]) -> str:
    return str(row.get("id") or row.get("call_id") or json.dumps(row, sort_keys=True))


def _sipp_successful(stat: Path) -> int:
    if not stat.exists():
        return 0
    lines = [ln for ln in stat.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return 0
    row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    return int(row.get("SuccessfulCall(C)", 0))


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pbxwarden-sipsim-") as tmp:
        yield Path(tmp)


def run_sip_simulation(calls: int = 10) -> SipReport:
    """Start a throwaway PBX and SIPp peers on loopback, play the attacks, report."""
    if shutil.which("sipp") is None:
        raise SipSimulationError("SIPp not found: apt-get install sip-tester")
    started = time.monotonic()
    with _workspace() as root:
        run = _Run(root, calls)
        try:
            run.setup()
            results = run.play()
        finally:
            run.stop_all()
    return SipReport(results, time.monotonic() - started)
