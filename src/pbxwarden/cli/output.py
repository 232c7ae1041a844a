"""Terminal output shared by the CLI's modules: one look for every table and error."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    """A table (times in UTC), or JSON for scripts."""
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(f"no {title}")
        return
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(
            *(
                when(v)
                if (k.endswith(("_at", "_until")) or k == "at") and isinstance(v, int | float)
                else ""
                if v is None
                else str(v)
                for k, v in row.items()
            )
        )
    out.print(table)
