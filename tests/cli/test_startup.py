"""The command answers at once, says its version, and names what it cannot listen on.

Speed is measured by ``bench/cli_startup.py``, not here: these tests check what makes
it slow, namely which libraries a command loads (the modules a subprocess ends with).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.helpers import PbxProcess, cli, free_port

# (pydantic is not here: typer itself loads it to convert options; asyncio is loaded by
# SQLAlchemy, so only --help and --version can do without it.)
HEAVY = (
    "sqlalchemy",
    "alembic",
    "fastapi",
    "uvicorn",
    "httpx",
    "structlog",
    "cryptography",
    "phonenumbers",
    "asyncio",
    "pbxwarden.config",
    "pbxwarden.store.db",
)

PROBE = """
import json, runpy, sys
sys.argv = ["pbxwarden", *json.loads(sys.argv[1])]
try:
    runpy.run_module("pbxwarden.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(OUT, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def loaded_by(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """Run the CLI in a fresh interpreter; its exit code and every module it loaded."""
    out = tmp_path / "modules.json"
    code = PROBE.replace("OUT", repr(str(out)))
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(args))],
        capture_output=True,
        timeout=60,
        check=False,
    )
    result = json.loads(out.read_text())
    return int(result["code"] or 0), set(result["modules"])


def top_level(modules: set[str]) -> set[str]:
    return {m for m in modules for h in HEAVY if m == h or m.startswith(h + ".")}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("extension", "--help"), ("tenant", "add", "--help"), ("--version",)],
)
def test_help_and_version_load_no_heavy_library(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, modules = loaded_by(tmp_path, *args)
    assert code == 0
    assert top_level(modules) == set()


def test_a_read_only_command_skips_alembic_when_the_schema_is_current(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    for command in (("extension", "list"), ("cdr",), ("alerts",), ("registrations",)):
        code, modules = loaded_by(tmp_path, "--data-dir", str(data), *command)
        assert code == 0, command
        assert not {m for m in modules if m.split(".")[0] in ("alembic", "fastapi", "httpx")}
        assert "cryptography" not in modules and "uvicorn" not in modules, command


def test_asking_the_server_needs_no_database_library(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    code, modules = loaded_by(tmp_path, "--data-dir", str(data), "stats")
    assert code == 1  # no server running: a one-line error, and nothing heavy loaded
    assert {m.split(".")[0] for m in top_level(modules)} <= {"asyncio"}


def test_version_is_the_package_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pbxwarden.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == f"pbxwarden {version('pbxwarden')}"


def serve(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return cli(data, "serve", *args, check=False, env=env)


def test_cannot_listen_names_the_address_and_the_listener(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        proc = serve(data, "--sip", f"127.0.0.1:{port}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"cannot listen on 127.0.0.1:{port} (UDP): address already in use" in proc.stderr
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = serve(data, "--sip", f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port} (TCP): address already in use" in proc.stderr
    sip, http = free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", http))
        busy.listen()
        proc = serve(data, "--sip", f"127.0.0.1:{sip}", "--http", f"127.0.0.1:{http}")
    assert f"cannot listen on 127.0.0.1:{http} (HTTP): address already in use" in proc.stderr
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    proc = serve(data, "--sip", "192.0.2.1:5060")  # not an address of this machine
    assert "cannot listen on 192.0.2.1:5060 (UDP): cannot assign requested address" in proc.stderr
    # Each failed start let go of everything: the next one starts.
    pbx = PbxProcess(data)
    pbx.start()
    pbx.stop()
