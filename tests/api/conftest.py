"""A real admin API server on loopback (uvicorn via start_http) over a real SQLite store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pbxwarden.api.app import create_app
from pbxwarden.api.serve import HttpHandle, start_http
from pbxwarden.config import Config
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import Store

ROOT_PASSWORD = "quartz-violin-harbor-97"
ACME_PASSWORD = "lantern-meadow-cobalt-31"


class FakeClock:
    """The API's clock (sessions, tokens, lockouts), movable by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeControl:
    """Stands in for SipServer.control: same commands, same answers and errors."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = [
            {
                "call_id": "a1b2@192.0.2.1",
                "tenant": "default",
                "caller": "1000",
                "callee": "1001",
                "state": "answered",
                "seconds": 12,
            },
            {
                "call_id": "acme/call-7",
                "tenant": "acme",
                "caller": "2000",
                "callee": "+12025550100",
                "state": "ringing",
                "seconds": 3,
            },
        ]
        self.ended: list[str] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "calls":
            return {"calls": [dict(c) for c in self.calls]}
        if request.get("cmd") == "end":
            call_id = str(request.get("call_id", ""))
            if not any(c["call_id"] == call_id for c in self.calls):
                raise ValueError(f"no call {call_id!r} in progress")
            self.calls = [c for c in self.calls if c["call_id"] != call_id]
            self.ended.append(call_id)
            return {"ended": call_id}
        raise ValueError(f"unknown command {request.get('cmd')!r}")


@dataclass
class Api:
    base: str
    store: Store
    admins: AdminStore
    db_path: Path
    clock: FakeClock
    control: FakeControl
    tokens: dict[str, str] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10, **kwargs)
        self.clients.append(client)
        return client

    def as_(self, name: str) -> httpx.AsyncClient:
        return self.client(self.tokens[name])


def seed(store: Store, admins: AdminStore, now: float) -> dict[str, str]:
    """Two tenants with extensions, CDRs and alerts; admins and tokens of every kind."""
    store.ensure_tenant("default", "pbxwarden", "US")
    store.add_tenant("acme", "sip.acme.example", "US")
    store.add_extensions([("1000", "Good-Passw0rd-aaa"), ("1001", "Good-Passw0rd-bbb")])
    store.add_extensions([("2000", "Good-Passw0rd-ccc")], tenant="acme")
    for i, (tenant, ext, disposition) in enumerate(
        [
            ("default", "1000", "answered"),
            ("default", "1001", "blocked"),
            ("acme", "2000", "answered"),
            ("default", "1000", "failed"),
        ]
    ):
        start = now - 1000 + i * 100
        cdr_id = store.cdr_open(
            {
                "call_id": f"cdr-{i}",
                "tenant": tenant,
                "extension": ext,
                "caller": ext,
                # a caller-controlled text a spreadsheet would run as a formula
                "callee": '=HYPERLINK("http://evil")' if i == 3 else "+12025550123",
                "kind": "external",
                "decision": "allow",
                "reasons": "national call",
                "start_ts": start,
            }
        )
        store.cdr_close(cdr_id, {"disposition": disposition, "end_ts": start + 30})
    for tenant, ext in (("default", "1000"), ("acme", "2000")):
        store.record_alert(
            {
                "tenant": tenant,
                "extension": ext,
                "severity": "critical",
                "rule": "premium-rate",
                "summary": f"{ext} dialled premium-rate numbers",
                "reasons": ["3 attempts to +1900"],
                "dedupe_key": f"premium:{tenant}:{ext}",
                "at": now - 50,
            }
        )
    admins.add_admin("root", ROOT_PASSWORD, "admin", None, now)
    admins.add_admin("acme-boss", ACME_PASSWORD, "admin", "acme", now)
    tokens = {}
    grants: tuple[tuple[str, str, str, str | None], ...] = (
        ("admin", "root", "admin", None),
        ("operator", "root", "operator", None),
        ("reader", "root", "read-only", None),
        ("acme-admin", "acme-boss", "admin", None),
        ("acme-reader", "root", "read-only", "acme"),
    )
    for name, owner, scope, bound in grants:
        _, tokens[name] = admins.create_token(owner, name, scope, bound, None, now)
    return tokens


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    handles: list[tuple[HttpHandle, Api]] = []

    async def start(control: bool = True, **http: Any) -> Api:
        db_path = tmp_path / f"api-{len(handles)}.db"
        store = Store(f"sqlite:///{db_path}")
        store.migrate()
        admins = AdminStore(store)
        clock = FakeClock()
        tokens = seed(store, admins, clock.now)
        config = Config.model_validate({"http": {"cookie_secure": False, **http}})
        fake = FakeControl()
        app = create_app(store, config, fake if control else None, clock)
        handle = await start_http(app, "127.0.0.1", 0)
        api = Api(f"http://127.0.0.1:{handle.port}", store, admins, db_path, clock, fake, tokens)
        handles.append((handle, api))
        return api

    yield start
    for handle, api in handles:
        for client in api.clients:
            await client.aclose()
        await handle.stop()
        api.store.close()


@pytest.fixture
async def api(start_api: ApiFactory) -> Api:
    return await start_api()
