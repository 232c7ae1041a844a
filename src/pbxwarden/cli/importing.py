"""``pbxwarden extension import``: a CSV of extensions, judged line by line first.

The store adds the rows in one transaction (all or nothing) and stops at the first bad
one without knowing where it came from; with hundreds of lines the operator needs
``users.csv line 7: password too short ...``. So every row is checked here first, with
the store's own checks (:func:`pbxwarden.store.db.check_password`, the number format),
plus what only the whole file shows: a number twice, or one that exists already.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from pathlib import Path

HEADERS = {"number", "extension"}


class ImportProblem(Exception):
    """The file cannot be imported; the message names the file and the line."""


def read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line, number, password) per line; blank lines and a header line are skipped."""
    rows: list[tuple[int, str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            end = 0
            for fields in reader:
                line, end = end + 1, reader.line_num  # where the record starts (quotes
                # may hold line breaks)
                if not fields or not "".join(fields).strip():
                    continue
                first = fields[0].strip()
                if not rows and first.lower() in HEADERS:
                    continue  # "number,password"
                if len(fields) < 2 or not fields[1].strip():
                    raise ImportProblem(
                        f"{path.name} line {line}: expected 'number,password', "
                        f"got {len(fields)} field{'s' if len(fields) != 1 else ''}"
                    )
                rows.append((line, first, fields[1].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportProblem(f"cannot read {path}: {exc}") from None
    if not rows:
        raise ImportProblem(f"{path.name}: no extensions in it (lines 'number,password')")
    return rows


def check_rows(name: str, rows: list[tuple[int, str, str]], existing: Collection[str]) -> None:
    """Raise :class:`ImportProblem` for the first row the store would refuse."""
    from pbxwarden.store.db import EXTENSION_RE, StoreError, check_password

    seen: dict[str, int] = {}
    for line, number, password in rows:
        where = f"{name} line {line}"
        if not EXTENSION_RE.fullmatch(number):
            raise ImportProblem(f"{where}: invalid extension number {number!r}: 2 to 15 digits")
        if number in seen:
            raise ImportProblem(f"{where}: extension {number} is also on line {seen[number]}")
        if number in existing:
            raise ImportProblem(f"{where}: extension {number} already exists in this tenant")
        seen[number] = line
        try:
            check_password(number, password)
        except StoreError as exc:
            raise ImportProblem(f"{where}: {exc}") from None
