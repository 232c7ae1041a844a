"""The compiled SIP core (setup.py, pbxwarden._core): the build under test is the one
expected, and a compiled module is never run in place of a source edited since."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pbxwarden
from pbxwarden import _core

PACKAGE = Path(pbxwarden.__file__).resolve().parent
COMPILED = any(
    (PACKAGE.parent / (m.replace(".", "/") + s)).exists()
    for m in _core.COMPILED_MODULES
    for s in importlib.machinery.EXTENSION_SUFFIXES
)
needs_compiled = pytest.mark.skipif(not COMPILED, reason="installed without the compiled core")

PROBE = (
    "import pbxwarden._core as c, pbxwarden.sip.message as m;"
    "r = m.parse_message(b'OPTIONS sip:a@b SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\\r\\n"
    "From: <sip:c@d>;tag=1\\r\\nTo: <sip:a@b>\\r\\nCall-ID: i\\r\\nCSeq: 1 OPTIONS\\r\\n\\r\\n');"
    "print(c.mode()); print(m.__file__); print(r.method, r.to.uri.user)"
)


def _probe(pythonpath: Path, pure: bool = False) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != _core.PURE_ENV}
    if pure:
        env[_core.PURE_ENV] = "1"
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, "PYTHONPATH": str(pythonpath)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.splitlines()


def test_the_expected_build_is_under_test() -> None:
    """scripts/test.sh sets PBXWARDEN_EXPECT_CORE to the build it installed, so that a
    compile that silently failed (the extensions are optional) cannot pass unnoticed."""
    expected = os.environ.get("PBXWARDEN_EXPECT_CORE")
    if expected is None:
        pytest.skip("PBXWARDEN_EXPECT_CORE not set (scripts/test.sh sets it)")
    assert _core.mode().split(" ")[0] == expected, _core.mode()
    import pbxwarden.sip.message as message

    assert message.__file__ is not None
    assert message.__file__.endswith(".py") == (expected == "interpreted")


@needs_compiled
def test_pure_python_switch_loads_every_core_module_from_source() -> None:
    lines = _probe(PACKAGE.parent, pure=True)
    assert lines == [
        f"interpreted ({_core.PURE_ENV}=1)",
        str(PACKAGE / "sip" / "message.py"),
        "OPTIONS a",
    ]


@needs_compiled
def test_an_edited_source_runs_instead_of_its_stale_compiled_module(tmp_path: Path) -> None:
    """An editable install keeps its extensions beside the sources: after an edit, the
    edit must run (with a warning), and all core modules switch together."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "pbxwarden", ignore=shutil.ignore_patterns("__pycache__"))
    for shared in PACKAGE.parent.glob("pbxwarden_core__mypyc*"):
        shutil.copy(shared, copy)
    assert _probe(copy)[0] == "compiled"  # the copy as installed: compiled

    uri = copy / "pbxwarden" / "sip" / "uri.py"
    uri.write_text(uri.read_text() + "\n# edited after compiling\n")
    mode, message_file, parsed = _probe(copy)
    assert mode.startswith("interpreted (sources changed")
    assert message_file == str(copy / "pbxwarden" / "sip" / "message.py")  # not uri alone
    assert parsed == "OPTIONS a"

    # A build that did not finish records nothing, and vouches for nothing.
    shutil.copy(PACKAGE / "sip" / "uri.py", uri)
    assert _probe(copy)[0] == "compiled"
    (copy / "pbxwarden" / _core.SOURCE_HASHES).unlink()
    assert _probe(copy)[0].startswith("interpreted (no record of the sources")
