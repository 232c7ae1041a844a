"""How ``cdr``, ``stats`` and ``registrations`` read in an 80-column terminal.

A call record has 23 columns and the server's counters about 20: printed whole they
are a wall of ellipses. The default views show what an operator looks at first (when,
who called whom, how it ended, for how long; is the server healthy), ``--all`` shows
every column, ``--json`` gives everything to scripts with Unix times, and the CSV for
spreadsheets has every column with ISO 8601 times.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import IO, Any

from pbxwarden.cli.output import cell, is_time, when

# caller, callee, disposition (with the SIP code when it failed), duration, the guard's
# decision: headers short enough for an international number in 80 columns
CDR_COLUMNS = ("start", "from", "to", "result", "length", "guard")


def duration(seconds: float | None) -> str:
    """``0:07``, ``12:03``, ``1:02:03``."""
    if seconds is None:
        return ""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def cdr_view(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The short view of each record: the callee as dialled, its code when it failed."""
    view = []
    for r in rows:
        code = r.get("sip_code")
        how = str(r.get("disposition") or "")
        if code and code != 200 and how != "in-progress":
            how += f" {code}"
        view.append(
            {
                "start": cell("start_ts", r.get("start_ts")),
                "from": r.get("caller"),
                "to": r.get("callee"),
                "result": how,
                "length": duration(r.get("duration")),
                "guard": r.get("decision"),
            }
        )
    return view


def write_cdr_csv(rows: list[dict[str, Any]], stream: IO[str]) -> None:
    """Every column; times as ISO 8601 (UTC, milliseconds) so spreadsheets read dates."""
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: when(v, precise=True) if is_time(k) else v for k, v in row.items()})


_OVERLOAD = {0: "no", 1: "shedding calls without credentials", 2: "shedding all new calls"}


def stats_view(flat: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The counters an operator reads first, one per line (``--all``: every one)."""
    rows = [
        ("calls in progress", flat.get("calls")),
        ("registered contacts", flat.get("bindings")),
        ("SIP messages received", flat.get("received")),
        ("registrations accepted", flat.get("registers_ok")),
        ("authentication failures", flat.get("auth_failures")),
        ("requests from banned sources", flat.get("refused")),
        ("bans in force", flat.get("bans")),
        ("overloaded", _OVERLOAD.get(flat.get("overload", 0), flat.get("overload"))),
        ("new calls shed (503)", flat.get("shed")),
        ("unparseable messages", flat.get("parse_errors")),
    ]
    if flat.get("workers"):
        rows.append(
            ("registrar workers ready", f"{flat.get('workers_ready')} of {flat.get('workers')}")
        )
    trunks = flat.get("trunk_registrations")
    if isinstance(trunks, dict) and trunks:
        up = sum(
            1 for t in trunks.values() if isinstance(t, dict) and t.get("state") == "registered"
        )
        rows.append(("trunks registered", f"{up} of {len(trunks)}"))
    if flat.get("cluster_node"):
        rows.append(("cluster node", flat["cluster_node"]))
        rows.append(("shared state (Redis)", flat.get("redis")))
    if flat.get("database") == "down" or flat.get("cdrs_spooled"):
        spooled = flat.get("cdrs_spooled")
        rows.append(("database", f"{flat.get('database')}, {spooled} CDR operations spooled"))
    if "media_packets" in flat:
        rows.append(("media packets relayed", flat["media_packets"]))
    rows.append(("SIP core", flat.get("sip_core")))
    return [{"counter": name, "value": value} for name, value in rows if value is not None]


def stats_all(flat: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every counter, one per line (nested ones, like trunk registrations, flattened)."""
    rows: list[dict[str, Any]] = []
    for key, value in flat.items():
        if isinstance(value, dict):
            rows += [{"counter": f"{key}.{k}", "value": v} for k, v in value.items()]
        else:
            rows.append({"counter": key, "value": value})
    return rows
