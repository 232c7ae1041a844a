"""Terminal output shared by the CLI's modules: one look for every table and error.

Times are ISO 8601 in UTC (``2025-06-01T14:03:07Z``) everywhere a person or a
spreadsheet reads them; ``--json`` keeps Unix times for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def database_failure(exc: BaseException) -> str:
    """One line for a database that cannot be opened: unreachable (SQLAlchemy's
    OperationalError or InterfaceError, matched by name so that commands which never
    touch the database need not import SQLAlchemy) or another failure."""
    names = {c.__name__ for c in type(exc).__mro__ if c.__module__ == "sqlalchemy.exc"}
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or ["no answer"])[0][:200]
    if names & {"OperationalError", "InterfaceError"}:
        return (
            f"the database is unreachable ({first}): nothing was changed; try again once it is back"
        )
    return f"cannot open the database: {first}"


def when(ts: float | None, precise: bool = False, minutes: bool = False) -> str:
    """ISO 8601 in UTC, to the second (``precise``: the millisecond; ``minutes``: the
    minute, where a narrow table needs the room)."""
    if ts is None:
        return ""
    moment = datetime.fromtimestamp(ts, UTC)
    if precise:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%MZ" if minutes else "%Y-%m-%dT%H:%M:%SZ")


def is_time(key: str) -> bool:
    """Columns holding Unix times: ``created_at``, ``at``, ``start_ts``, ``locked_until``..."""
    return key.endswith(("_at", "_ts", "_until")) or key == "at"


def cell(key: str, value: Any) -> str:
    if is_time(key) and isinstance(value, int | float):
        return when(value)
    return "" if value is None else str(value)


def print_rows(
    rows: list[dict[str, Any]],
    as_json: bool,
    title: str,
    columns: Sequence[str] | None = None,
    compact: bool = False,
    keep: Sequence[str] = (),
) -> None:
    """A table (times in UTC), or JSON for scripts (every column, Unix times).

    ``columns``: the ones an operator needs, in that order (the rest with ``--json``);
    ``compact``: no vertical rules and one line per row, so that it reads in an
    80-column terminal (a cell too long is cut with an ellipsis; --json has it all);
    ``keep``: columns never cut (an address, an id to type)."""
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(f"no {title}")
        return
    keys = list(columns) if columns is not None else list(rows[0])
    if compact:  # no rules, no edges, two spaces between columns: 80 columns go far
        table = Table(
            title=title,
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, 1, 0, 0),
        )
    else:
        table = Table(title=title)
    cells = [[cell(k, row.get(k)) for k in keys] for row in rows]
    for i, key in enumerate(keys):
        widest = max(len(key), *(len(c[i]) for c in cells)) if key in keep else None
        table.add_column(key, no_wrap=compact or is_time(key), min_width=widest)
    for values in cells:
        table.add_row(*values)
    out.print(table)
