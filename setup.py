"""Build hook: the sans-I/O SIP core compiled to C with mypyc.

Why: every registration and every call passes through the parser, the transaction
layer, digest and the registrar; compiled, they cost well under two thirds of the
interpreted CPU (docs/benchmarks.md). mypyc compiles the very modules that are
``mypy --strict`` clean, so there is one source and no second language. The
extensions are optional: without a C compiler the install keeps the pure-Python
modules, which behave the same. ``PBXWARDEN_PURE_PYTHON=1`` at install skips
compiling; at run time it loads the sources even where compiled modules exist (see
``pbxwarden/_core.py``, which also refuses compiled modules older than their source).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))
from pbxwarden._core import (  # noqa: E402
    COMPILED_MODULES,
    PURE_ENV,
    SOURCE_HASHES,
    source_digest,
    source_path,
)


class BuildExt(build_ext):
    """Records which sources the extensions were compiled from (``_core`` runs the
    sources instead when they differ), and only once every extension was built: a
    failed optional build must not vouch for extensions left from an earlier one."""

    def run(self) -> None:
        targets = [Path(self.build_lib) / "pbxwarden" / SOURCE_HASHES]
        if self.inplace or self.editable_mode:  # the extensions land beside the sources
            targets.append(ROOT / "src" / "pbxwarden" / SOURCE_HASHES)
        for target in targets:
            target.unlink(missing_ok=True)
        self._failed: list[str] = []
        super().run()
        outputs = [self.get_ext_fullpath(ext.name) for ext in self.extensions]
        if self._failed or not all(os.path.exists(path) for path in outputs):
            print("pbxwarden: SIP core not compiled; the sources will run", file=sys.stderr)
            return
        record = json.dumps({m: source_digest(m) for m in COMPILED_MODULES}, indent=1) + "\n"
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(record)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception:  # optional: setuptools reports it and carries on
            self._failed.append(ext.name)
            raise


def ext_modules() -> list[Extension]:
    if os.environ.get(PURE_ENV) == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without its build requirements: stay interpreted
        return []
    # The build environment has mypy but not the project's dependencies (pydantic,
    # SQLAlchemy, ...): their types are Any here, as mypyc treats them anyway;
    # `mypy --strict` in the tests checks them.
    options = ["--config-file", str(ROOT / "mypyc.ini")]
    extensions = mypycify(
        options + [str(source_path(m).relative_to(ROOT)) for m in COMPILED_MODULES],
        group_name="pbxwarden_core",
        opt_level="3",
    )
    for extension in extensions:
        extension.optional = True  # no compiler: a warning, and the sources run
    return list(extensions)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExt})
