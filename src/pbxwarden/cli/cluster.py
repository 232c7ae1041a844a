"""``pbxwarden cluster status``: the nodes of the PBX, their load and version, and the
health of Redis and the database, read from Redis and the database directly.

It needs no running server here: a node's heartbeat in Redis says what it says of
itself (:mod:`pbxwarden.cluster.registry`), and a node that died cannot be asked
anyway. Exit status 1 when there is no cluster to read (``cluster.redis_url`` empty),
Redis does not answer or the database does not; the database's health is shown in
every case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from pbxwarden.cli.admin import _data_dir
from pbxwarden.cli.output import err, fail, out

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pbxwarden.config import Config

cluster_app = typer.Typer(no_args_is_help=True, help="Several nodes as one PBX (docs/cluster.md).")

STATE_STYLE = {"up": "green", "lost": "bold red", "stopped": "yellow"}


@cluster_app.command("status")
def cluster_status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, max=60, help="Seconds each Redis command and the database may take."),
    ] = 2.0,
) -> None:
    """Nodes up, lost or stopped, with version, addresses and load; Redis, database health.

    Read from Redis and the database directly (no server need run here). Exit status 1
    when no cluster is configured, or Redis or the database does not answer."""
    from pbxwarden.cluster.registry import cluster_status as read_status

    config = _config(ctx)
    engine = _engine(config, ctx, timeout)
    try:
        status = read_status(config, engine, timeout) if engine is not None else None
    finally:
        if engine is not None:
            engine.dispose()
    if status is None:  # the SQLite file is missing: nothing more to read there
        status = _without_database(config, timeout)
    if as_json:
        out.print_json(json.dumps(status, default=str))
    else:
        _print(status)
    problem = _problem(status, str(_data_dir(ctx)))
    if problem is not None:
        raise fail(problem)


def _config(ctx: typer.Context) -> Config:
    from pbxwarden.config import CONFIG_FILE, ConfigError, load_config

    data_dir = _data_dir(ctx)
    if not (data_dir / CONFIG_FILE).exists():
        raise fail(
            f"{data_dir} is not initialised: run 'pbxwarden --data-dir {data_dir} init' first"
        )
    try:
        return load_config(data_dir)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _engine(config: Config, ctx: typer.Context, timeout: float) -> Engine | None:
    """An engine for one health query; None for a SQLite file that does not exist (to
    connect would create it)."""
    from sqlalchemy.engine import make_url

    from pbxwarden.store.db import make_engine

    data_dir = _data_dir(ctx)
    url = config.database_url(data_dir)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database or ""
        if name and name != ":memory:" and not Path(name).exists():  # as SQLite reads it
            return None
        return make_engine(url)
    if parsed.get_backend_name() == "postgresql":
        from sqlalchemy import create_engine

        connect_timeout = max(2, round(timeout))  # libpq's smallest useful value
        return create_engine(url, connect_args={"connect_timeout": connect_timeout})
    return make_engine(url)


def _without_database(config: Config, timeout: float) -> dict[str, Any]:
    from pbxwarden.cluster.registry import STATES, read_registry

    status: dict[str, Any] = {
        "configured": config.cluster.enabled,
        "key_prefix": config.cluster.key_prefix,
        "nodes": [],
        "summary": dict.fromkeys(STATES, 0),
        "redis": None,
        "database": {"reachable": False, "error": "the SQLite database file does not exist"},
    }
    if config.cluster.enabled:
        status.update(read_registry(config.cluster.redis_url, config.cluster.key_prefix, timeout))
        for node in status["nodes"]:
            status["summary"][node["state"]] += 1
    status["versions"] = sorted({str(n.get("version")) for n in status["nodes"]})
    return status


def _problem(status: dict[str, Any], data_dir: str) -> str | None:
    """The one line that makes the exit status 1, if anything does."""
    redis = status.get("redis") or {}
    if not status["configured"]:
        return (
            f"no cluster configured: cluster.redis_url is empty in {data_dir}/config.toml "
            "(or PBXWARDEN_CLUSTER__REDIS_URL)"
        )
    if not redis.get("reachable"):
        return f"Redis at {redis.get('url', '?')} is unreachable: {redis.get('error')}"
    database = status["database"]
    if not database.get("reachable"):
        return f"the database is unreachable: {database.get('error')}"
    return None


def _print(status: dict[str, Any]) -> None:
    if status["nodes"]:
        _print_nodes(status["nodes"])
    elif status["configured"] and (status.get("redis") or {}).get("reachable"):
        out.print("no nodes in the registry (none has started with this Redis and key prefix)")
    if len(status.get("versions", [])) > 1:
        out.print(f"[yellow]versions differ:[/] {', '.join(status['versions'])}", highlight=False)
    redis = status.get("redis")
    if redis is not None:
        url = redis.get("url")
        if redis.get("reachable"):
            keys = f"{redis.get('keys')}" + ("" if redis.get("keys_exact", True) else "+")
            out.print(
                f"Redis {url}: [green]reachable[/] ({redis.get('latency_ms')} ms), "
                f"version {redis.get('version', '?')}, "
                f"memory {redis.get('used_memory_human', '?')}, "
                f"{keys} keys under '{status['key_prefix']}'",
                highlight=False,
            )
        else:
            out.print(f"Redis {url}: [bold red]unreachable[/]", highlight=False)
    db = status["database"]
    name = f"database {db.get('url', '')}"
    if db.get("reachable"):
        kind = f"{db.get('kind')} {db.get('version') or ''}".strip()
        out.print(
            f"{name} ({kind}): [green]reachable[/] ({db.get('latency_ms')} ms)", highlight=False
        )
    else:
        out.print(f"{name}: [bold red]unreachable[/] ({db.get('error')})", highlight=False)


def _print_nodes(nodes: list[dict[str, Any]]) -> None:
    table = Table(
        title="nodes", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for column in ("node", "state", "version", "addresses", "calls", "contacts", "cpu"):
        table.add_column(column, no_wrap=column != "addresses")
    table.add_column("last seen", no_wrap=True)
    for node in nodes:
        state = str(node["state"])
        cpu = node.get("cpu")
        table.add_row(
            str(node["node"]),
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            str(node.get("version", "")),
            _addresses(node.get("addresses") or []),
            _number(node.get("calls")),
            _number(node.get("contacts")),
            f"{cpu * 100:.0f}%" if isinstance(cpu, int | float) else "",
            _ago(node.get("age")),
        )
    out.print(table)
    for node in nodes:  # what a node up says of its own links
        if node["state"] != "up":
            continue
        bad = []
        if (node.get("redis") or {}).get("up") is False:
            bad.append("Redis down")
        if (node.get("database") or {}).get("reachable") is False:
            bad.append("its database down")
        if node.get("overloaded"):
            bad.append("itself overloaded or stopping (new calls get 503)")
        if bad:
            err.print(f"[yellow]warning:[/] node {node['node']} sees {', '.join(bad)}")


def _addresses(addresses: list[str]) -> str:
    """``udp:h:p``, ``tcp:h:p`` as ``h:p udp,tcp``."""
    by_place: dict[str, list[str]] = {}
    for address in addresses:
        kind, _, place = str(address).partition(":")
        by_place.setdefault(place, []).append(kind)
    return " ".join(f"{place} {','.join(kinds)}" for place, kinds in by_place.items())


def _number(value: Any) -> str:
    return str(value) if isinstance(value, int) else ""


def _ago(age: Any) -> str:
    if not isinstance(age, int | float):
        return ""
    if age < 60:
        return f"{age:.1f} s ago"
    if age < 7200:
        return f"{age / 60:.0f} min ago"
    return f"{age / 3600:.1f} h ago"
