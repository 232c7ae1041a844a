"""``pbxwarden audit``: the security audit, for a person (a table) or for cron and CI.

The exit code says whether anything at or above ``--fail-on`` was found (2) or not (0),
so a nightly job can mail the output only when it matters. Passwords and fingerprints
are never printed; the findings come from :func:`pbxwarden.audit.run_audit`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from pbxwarden.cli.admin import _data_dir, _open
from pbxwarden.cli.output import err, fail, out

FINDINGS_EXIT = 2
COLOURS = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def audit(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Exit with 2 when a finding is at least this severe: "
            "critical, high, medium or low.",
        ),
    ] = "high",
) -> None:
    """Look for what invites toll fraud (weak or shared SIP passwords, open networks,
    uncapped costly calls, outside diversions, admins without TOTP, exposed services,
    no alert channel) and say how to fix each."""
    from pbxwarden.audit import RANK, SEVERITIES, at_least, run_audit
    from pbxwarden.config import SECRET_FILE, ConfigError, load_or_create_secret

    if fail_on not in RANK:
        raise fail(f"--fail-on must be one of {', '.join(SEVERITIES)}, not {fail_on!r}")
    data_dir = _data_dir(ctx)
    config, store, admins = _open(ctx)
    try:
        secret_path = data_dir / SECRET_FILE
        secret = load_or_create_secret(data_dir) if secret_path.exists() else None
        findings = run_audit(config, store, admins, secret)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    if as_json:
        out.print_json(json.dumps([f.model_dump() for f in findings]))
    elif not findings:
        out.print("no findings")
    else:
        table = Table(title="security audit")
        table.add_column("severity", no_wrap=True)
        for column in ("tenant", "subject", "problem", "fix"):
            table.add_column(column, overflow="fold")  # a fix is never cut short
        for f in findings:
            table.add_row(  # Text: "[guard.default]" in a fix is not markup
                Text(f.severity, style=COLOURS[f.severity]),
                Text(f.tenant or "(server)"),
                Text(f.subject),
                Text(f.problem),
                Text(f.fix),
            )
        out.print(table, highlight=False)
        counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
        err.print(", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False)
    if any(at_least(f.severity, fail_on) for f in findings):
        raise typer.Exit(FINDINGS_EXIT)
