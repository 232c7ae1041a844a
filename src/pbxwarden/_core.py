"""Compiled or interpreted: which build of the per-packet core this process runs.

``setup.py`` compiles :data:`COMPILED_MODULES` with mypyc, and Python prefers an
extension module to its source. This module steps in (a finder that loads the ``.py``
files instead) when

- ``PBXWARDEN_PURE_PYTHON=1``: the tests of the interpreted build, a debugger; or
- the sources no longer match what was compiled (an editable install edited since it
  was built): stale compiled code would run, and be tested, instead of the edit.

All of them switch together: compiled modules call each other natively and must not
meet interpreted copies of each other's classes. Standard library only: ``setup.py``
imports this before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The hot path of every registration and call, all sans-I/O (and mypy --strict clean,
# which mypyc needs): parsing, transactions, dialogs, digest, the registrar.
COMPILED_MODULES: tuple[str, ...] = (
    "pbxwarden.sip.errors",
    "pbxwarden.sip.uri",
    "pbxwarden.sip.message",
    "pbxwarden.sip.digest",
    "pbxwarden.sip.transaction",
    "pbxwarden.sip.dialog",
    "pbxwarden.pbx.location",
    "pbxwarden.pbx.registrar",
    "pbxwarden.pbx.auth",
    "pbxwarden.pbx.registration",
)
SOURCE_HASHES = "_compiled_sources.json"  # written by setup.py beside this file
PURE_ENV = "PBXWARDEN_PURE_PYTHON"

_PACKAGE_DIR = Path(__file__).resolve().parent


def source_path(module: str) -> Path:
    return _PACKAGE_DIR.parent / (module.replace(".", "/") + ".py")


def source_digest(module: str) -> str:
    """What ``setup.py`` records of each compiled module's source, and what is checked."""
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def _extension_exists(module: str) -> bool:
    stem = source_path(module).with_suffix("")
    return any(Path(f"{stem}{s}").exists() for s in importlib.machinery.EXTENSION_SUFFIXES)


def _stale() -> str | None:
    """Why the compiled modules must not run (their sources differ from the ones they
    were built from, or nobody recorded those), or None when they may."""
    try:
        built = json.loads((_PACKAGE_DIR / SOURCE_HASHES).read_text())
    except (OSError, ValueError):
        return "no record of the sources they were compiled from"
    for module in COMPILED_MODULES:
        try:
            digest = source_digest(module)
        except OSError:  # an install without sources (not ours): trust the extension
            continue
        if not isinstance(built, dict) or built.get(module) != digest:
            return "sources changed since they were compiled"
    return None


class _SourceFinder:
    """A meta path finder (the protocol, not ``importlib.abc``'s class: importing that
    module costs every ``pbxwarden`` command some 25 ms)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        import importlib.util

        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_mode = "interpreted"


def mode() -> str:
    """``compiled``, or ``interpreted`` with the reason: for ``pbxwarden stats`` and
    the tests, which check that the build under test is the one they expect."""
    return _mode


def select() -> None:
    """Decide once per process, before any core module is imported."""
    global _mode
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return
    if not any(_extension_exists(m) for m in COMPILED_MODULES):
        _mode = "interpreted (not compiled)"
        return
    if os.environ.get(PURE_ENV) == "1":
        _mode = f"interpreted ({PURE_ENV}=1)"
    elif (stale := _stale()) is not None:
        _mode = f"interpreted ({stale}: reinstall)"
        warnings.warn(
            f"pbxwarden: compiled SIP core not used ({stale}); running its sources "
            "(pip install -e . compiles them again)",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        _mode = "compiled"
        return
    sys.meta_path.insert(0, _SourceFinder())
