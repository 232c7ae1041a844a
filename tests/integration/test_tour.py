"""The README's five-minute tour, replayed line by line as a new user would type it.

Every line of the tour's shell blocks runs in bash, as written, with the real CLI, the
real server and the shipped ``scripts/tour`` phones (SIPp); the only changes are the
ports (the test's own free ones instead of 5060, 5070 and 8080, given to the server and
the phones through their environment variables) and the passwords the user would paste
(taken from what ``extension add`` and ``extension password`` printed). The test knows
each step the tour must have, in order: a line it does not know, or a step missing,
fails it, so the README and the scripts cannot drift apart.
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import cli, free_port, running_pbx, sipp_available

pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed"),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TOUR_SCRIPTS = ROOT / "scripts" / "tour"
CARRIER_HOST = "127.0.0.2"
TALK = 12  # seconds the tour's call lasts here (20 for a person)


def tour_lines() -> list[str]:
    """The shell lines of the README's tour section, comments stripped, in order."""
    text = README.read_text()
    start = text.index("## A five-minute tour")
    end = text.index("\n## ", start + 1)
    heading = text.find("\n### ", start)
    section = text[start : min(end, heading) if heading != -1 else end]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def readme_403() -> str:
    """The refusal of ``*72`` to a premium-rate number, as the README quotes it."""
    found = re.search(r"`(403 Forbidden \(forwarding refused: [^`]*\))`", README.read_text())
    assert found, "the README's tour no longer quotes the 403 answer to *72"
    return found.group(1)


def _kill(proc: subprocess.Popen[str]) -> None:
    """Stop a step's whole process group (bash, phones.sh, SIPp): TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class Shell:
    """Runs tour lines in bash from a directory that looks like the checkout's root."""

    cwd: Path
    env: dict[str, str]
    background: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, line: str, log: Path | None = None) -> subprocess.Popen[str]:
        """``line`` in the background; its output piped, or to ``log`` (a server's)."""
        out = log.open("w") if log is not None else None
        try:
            proc = subprocess.Popen(
                ["bash", "-c", line],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out or subprocess.PIPE,
                stderr=subprocess.STDOUT if out else subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        self.background.append(proc)
        return proc

    def run(self, line: str, timeout: float = 60) -> tuple[int, str, str]:
        proc = self.start(line)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            _kill(proc)
        return proc.returncode, out, err

    def ok(self, line: str, timeout: float = 60) -> str:
        code, out, err = self.run(line, timeout)
        assert code == 0, f"{line!r} failed ({code}):\n{out}\n{err}"
        return out

    def close(self) -> None:
        for proc in self.background:
            _kill(proc)


def json_of(shell: Shell, *args: str) -> list[dict[str, object]]:
    out = shell.ok(" ".join(["pbxwarden --data-dir $D", *args, "--json"])).strip()
    return json.loads(out) if out.startswith("[") else []


def until(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def password_from(output: str) -> str:
    found = re.search(r"password: (\S+)", output)
    assert found, output
    return found.group(1)


def wait_ready(proc: subprocess.Popen[str], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "pbxwarden ready" not in log.read_text():
        assert proc.poll() is None, f"server exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"server not ready:\n{log.read_text()}"
        time.sleep(0.1)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    sip, http, carrier = free_port(), free_port(), free_port(CARRIER_HOST)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PBXWARDEN_SIP__LISTEN": f"127.0.0.1:{sip}",  # what `serve` would take as 5060
        "PBX": f"127.0.0.1:{sip}",
        "CARRIER": f"{CARRIER_HOST}:{carrier}",
        "PHONE_1000": f"127.0.0.1:{free_port()}",
        "PHONE_2000": f"127.0.0.1:{free_port()}",
        "TALK": str(TALK),
        "HTTP_PORT": str(http),
        "CARRIER_PORT": str(carrier),
    }
    env.pop("PBXWARDEN_DATA_DIR", None)
    s = Shell(tmp_path, env)
    try:
        yield s
    finally:
        s.close()


def test_the_readme_tour_replays_exactly(shell: Shell) -> None:
    env = shell.env
    carrier = env["CARRIER"]
    refusal = readme_403()
    passwords: dict[str, str] = {}
    state: dict[str, subprocess.Popen[str]] = {}

    def localise(line: str) -> str:
        """The test's ports instead of the README's fixed ones."""
        line = line.replace("127.0.0.1:8080", f"127.0.0.1:{env['HTTP_PORT']}")
        return line.replace("--port 5070", f"--port {env['CARRIER_PORT']}")

    def init(line: str) -> None:
        env["D"] = "tour"  # the line sets it too; later lines are separate shells
        assert "initialised tour" in shell.ok(line)

    def extension_add(line: str) -> None:
        number = line.split()[-1]
        passwords[number] = password_from(shell.ok(line))
        env[f"P{number}"] = passwords[number]

    def expect(text: str) -> Callable[[str], None]:
        def step(line: str) -> None:
            out = shell.ok(localise(line))
            assert text.format(**env) in out, (line, out)

        return step

    def serve(line: str) -> None:
        assert line.endswith("&")
        log = shell.cwd / "server.log"
        proc = shell.start("exec " + localise(line).removesuffix("&").strip(), log)
        state["server"] = proc
        wait_ready(proc, log)

    def paste_passwords(line: str) -> None:
        """The user pastes the printed passwords; the rest of the line runs as written."""
        parts = line.split("; ")
        while parts and (pasted := re.fullmatch(r"P(\d+)='[^']*'", parts[0])):
            env[f"P{pasted.group(1)}"] = passwords[pasted.group(1)]
            parts.pop(0)
        if parts:
            register("; ".join(parts))

    def register(line: str) -> None:
        number = line.split()[3]
        assert f"{number} registered from {env[f'PHONE_{number}']}" in shell.ok(line)

    def call_in_background(line: str) -> None:
        assert line.endswith("&")
        state["call"] = shell.start(line.removesuffix("&").strip())

    def calls(line: str) -> None:
        listed: list[str] = []

        def in_progress() -> bool:
            listed[:] = [shell.ok(line)]
            return "1000" in listed[0] and "2000" in listed[0]

        until("the call to be listed", in_progress, TALK)
        live = json_of(shell, "calls")
        assert [(c["caller"], c["callee"]) for c in live] == [("1000", "2000")], live

    def wait_then_cdr(line: str) -> None:
        call = state.pop("call")
        out, err = call.communicate(timeout=TALK + 40)
        assert call.returncode == 0 and "2000 answered" in out, (out, err)
        shell.ok(line.removeprefix("wait;").strip())
        [row] = json_of(shell, "cdr")
        assert (row["caller"], row["callee"], row["disposition"], row["decision"]) == (
            "1000",
            "2000",
            "answered",
            "allow",
        )

    def dial_72(line: str) -> None:
        out = shell.ok(line)
        assert f"the PBX answered 2000 dialling *7219005550123: {refusal}" in out, out
        assert json_of(shell, "forward", "list") == []  # nothing was diverted

    def hijack(line: str) -> None:
        out = shell.ok(line)
        assert "the PBX answered 1000: 403 Forbidden" in out, out
        assert f"the carrier at {carrier} got no call" in out, out

        def suspended() -> bool:  # the server stores it in its next round (within a second)
            extensions = {e["number"]: e for e in json_of(shell, "extension", "list")}
            return "premium-rate" in str(extensions["2000"]["suspended"])

        until("2000 to be suspended", suspended, 10)
        extensions = {e["number"]: e for e in json_of(shell, "extension", "list")}
        assert extensions["1000"]["suspended"] is None
        # one alert per refusal, newest first: the diverted call (and the suspension),
        # then the *72 diversion
        raised = json_of(shell, "alerts", "list")
        assert [(a["id"], a["extension"], a["severity"], a["status"]) for a in raised] == [
            (2, "2000", "critical", "open"),
            (1, "2000", "warning", "open"),
        ], raised
        assert "suspended" in str(raised[0]["summary"]), raised
        assert "diversion" in str(raised[1]["summary"]), raised

    def alerts(line: str) -> None:
        out = shell.ok(line)
        assert "2000" in out and "critical" in out, out

    def history(line: str) -> None:
        assert "2000" in shell.ok(line)
        [change] = json_of(shell, "forward", "list", "--history")
        assert (change["extension"], change["new"], change["actor"]) == (
            "2000",
            "19005550123",
            "phone",
        ), change
        assert "premium-rate" in str(change["refused"]), change  # the *72, refused

    def new_password(line: str) -> None:
        old = passwords["2000"]
        passwords["2000"] = password_from(shell.ok(line))
        assert passwords["2000"] != old
        # the attacker's copy is dead once the server has followed (within a second):
        # the old password registers no more
        env["P2000_OLD"] = old

        def old_refused() -> bool:
            code, out, err = shell.run('bash scripts/tour/phones.sh register 2000 "$P2000_OLD"')
            assert code == 1 or "2000 registered" in out, (out, err)
            return code == 1 and "2000 was not registered: the PBX answered 403" in err

        until("the old password to be refused", old_refused, 10)

    def resume(line: str) -> None:
        assert "extension 2000 resumed" in shell.ok(line)
        extensions = {e["number"]: e for e in json_of(shell, "extension", "list")}
        assert extensions["2000"]["suspended"] is None

    def resolve(line: str) -> None:
        alert_id = int(line.split()[-1])
        open_ids = [a["id"] for a in json_of(shell, "alerts", "list")]
        assert alert_id in open_ids, (line, open_ids)
        shell.ok(line)
        assert alert_id not in [a["id"] for a in json_of(shell, "alerts", "list")]

    def all_resolved() -> None:
        assert json_of(shell, "alerts", "list") == []
        done = json_of(shell, "alerts", "list", "--status", "resolved")
        assert sorted(a["id"] for a in done) == [1, 2], done

    def token(line: str) -> None:
        out = shell.ok(f'{line}; printf "\\n%s" "$TOKEN"')
        env["TOKEN"] = out.rsplit("\n", 1)[-1]
        assert env["TOKEN"].startswith("pbxw_"), out

    def curl_alerts(line: str) -> None:
        all_resolved()
        listed = json.loads(shell.ok(localise(line)))
        assert [(a["id"], a["status"]) for a in listed] == [(2, "resolved"), (1, "resolved")]

    def curl_metrics(line: str) -> None:
        assert "# HELP" in shell.ok(localise(line))

    steps: list[tuple[str, Callable[[str], None]]] = [
        (r"D=tour; pbxwarden --data-dir \$D init", init),
        (r"pbxwarden --data-dir \$D extension add 1000", extension_add),
        (r"pbxwarden --data-dir \$D extension add 2000", extension_add),
        (
            r"pbxwarden --data-dir \$D trunk add carrier --host 127\.0\.0\.2 --port 5070",
            expect("trunk carrier added"),
        ),
        (
            r"pbxwarden --data-dir \$D did add 2025550100 --extension 2000",
            expect("rings extension 2000"),
        ),
        (r"pbxwarden --data-dir \$D admin add alice", expect("admin alice added")),
        (r"pbxwarden --data-dir \$D serve --http 127\.0\.0\.1:8080 &", serve),
        (r"P1000='[^']*'; P2000='[^']*'", paste_passwords),
        (r'bash scripts/tour/phones\.sh register 1000 "\$P1000"', register),
        (r'bash scripts/tour/phones\.sh register 2000 "\$P2000"', register),
        (r'bash scripts/tour/phones\.sh call 1000 "\$P1000" 2000 &', call_in_background),
        (r"pbxwarden --data-dir \$D calls", calls),
        (r"wait; pbxwarden --data-dir \$D cdr", wait_then_cdr),
        (r"bash scripts/tour/phones\.sh dial 2000 \"\$P2000\" '\*7219005550123'", dial_72),
        (r'bash scripts/tour/phones\.sh hijack 1000 "\$P1000" 2000 19005550123', hijack),
        (r"pbxwarden --data-dir \$D alerts", alerts),
        (r"pbxwarden --data-dir \$D forward list --history", history),
        # the safe order: a new password first, then resume, then close the alert
        (r"pbxwarden --data-dir \$D extension password 2000", new_password),
        (
            r"P2000='[^']*'; bash scripts/tour/phones\.sh register 2000 \"\$P2000\"",
            paste_passwords,
        ),
        (r"pbxwarden --data-dir \$D extension resume 2000", resume),
        (r"pbxwarden --data-dir \$D alerts resolve 1", resolve),
        (r"pbxwarden --data-dir \$D alerts resolve 2", resolve),
        (
            r"TOKEN=\$\(pbxwarden --data-dir \$D admin token alice --scope read-only \| tail -1\)",
            token,
        ),
        (
            r'curl -s -H "Authorization: Bearer \$TOKEN" http://127\.0\.0\.1:8080/api/v1/alerts',
            curl_alerts,
        ),
        (
            r'curl -s -H "Authorization: Bearer \$TOKEN" http://127\.0\.0\.1:8080/metrics \| head',
            curl_metrics,
        ),
    ]
    lines = tour_lines()
    assert len(lines) == len(steps), "\n".join(lines)
    for line, (pattern, step) in zip(lines, steps, strict=True):
        assert re.fullmatch(pattern, line), f"README tour line {line!r} is not {pattern!r}"
        step(line)

    server = state.pop("server")
    server.send_signal(signal.SIGTERM)
    assert server.wait(20) == 0


def test_the_tour_softphone_registers_with_the_shipped_baresip_config(tmp_path: Path) -> None:
    if shutil.which("baresip") is None:
        pytest.skip("baresip not installed (Debian package baresip-core)")
    password = "Softphone-Passw0rd-1"
    with running_pbx(tmp_path / "data", {"1000": password}) as pbx:
        listen = _free_port_pair()
        proc = subprocess.Popen(
            ["bash", str(TOUR_SCRIPTS / "softphone.sh"), "1000", password],
            env={**os.environ, "PBX": f"{pbx.host}:{pbx.port}", "BARESIP_LISTEN": listen},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:

            def registered() -> bool:
                out = cli(pbx.data_dir, "registrations", "--json").stdout
                rows = json.loads(out) if out.strip().startswith("[") else []
                return any(listen in str(r) for r in rows if r.get("number") == "1000")

            until("baresip to register", registered, 20)
        finally:
            _kill(proc)
        assert proc.stdout is not None
        assert "baresip as 1000" in proc.stdout.read()


def _free_port_pair() -> str:
    """A free address whose next port is free too (baresip's TLS listener)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return f"127.0.0.1:{port}"
    raise RuntimeError("no free port pair")
