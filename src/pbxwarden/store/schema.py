"""Whether the database schema is already at the newest migration, without Alembic.

Every command opens the store and brings its schema up to date, and importing Alembic
and reading its scripts costs more than the rest of a read-only command. The schema is
nearly always current, so that is checked first: the newest revision from the migration
files themselves (each names its ``revision`` and ``down_revision``), the database's
from ``alembic_version``. Anything unexpected (several heads, an unreadable file, no
version table) answers "not known" and the caller runs Alembic as before.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

VERSIONS = Path(__file__).parent / "migrations" / "versions"
_FIELD = re.compile(r"""^(revision|down_revision)\s*(?::[^=]*)?=\s*["']([^"']+)["']""", re.M)
_NONE = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*None\b", re.M)


def head_revision(versions: Path = VERSIONS) -> str | None:
    """The one revision no other migration revises, or None when that is not clear."""
    revisions: set[str] = set()
    revised: set[str] = set()
    try:
        files = sorted(versions.glob("*.py"))
        for path in files:
            if path.name.startswith("__"):
                continue
            source = path.read_text(encoding="utf-8")
            fields = dict(_FIELD.findall(source))
            if "revision" not in fields:
                return None
            if "down_revision" in fields:
                revised.add(fields["down_revision"])
            elif not _NONE.search(source):
                return None  # a merge revision (a tuple) or something else: ask Alembic
            revisions.add(fields["revision"])
    except (OSError, UnicodeDecodeError):
        return None
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def at_head(engine: Engine) -> bool:
    """True only when the database is known to be at the newest revision."""
    head = head_revision()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError:
        return False  # a new database (no version table yet), or one we cannot read
    return [r[0] for r in rows] == [head]
