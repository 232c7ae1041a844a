"""``GET /api/v1/events``: a Server-Sent Events stream of what the PBX is doing.

SSE rather than WebSocket: one direction is all a dashboard needs, it passes through
proxies as plain HTTP, and browsers reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from pbxwarden.api.security import Reader
from pbxwarden.events import SHUTDOWN, EventBus

router = APIRouter(prefix="/api/v1")
HEARTBEAT = 15.0


def _visible(event: dict[str, Any], tenant: str | None) -> bool:
    return tenant is None or event.get("tenant") == tenant


@router.get(
    "/events",
    tags=["events"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def events(request: Request, principal: Reader) -> StreamingResponse:
    """Live calls (start, end), guard decisions with their reasons, alerts and bans, as
    Server-Sent Events; a tenant-bound caller sees only its tenant's."""
    bus: EventBus | None = getattr(request.app.state, "events", None)
    if bus is None:
        raise HTTPException(503, "live events are unavailable: the SIP server is not running here")
    tenant = principal.tenant

    async def stream() -> AsyncIterator[bytes]:
        with bus.subscribe() as sub:
            yield b": pbxwarden events\n\n"
            reported = 0
            while not await request.is_disconnected():
                if sub.closed and sub.queue.empty():
                    break  # the server is stopping
                try:
                    event = await asyncio.wait_for(sub.queue.get(), HEARTBEAT)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if sub.dropped > reported:
                    lost = {"type": "lost", "events": sub.dropped - reported}
                    reported = sub.dropped
                    yield f"event: lost\ndata: {json.dumps(lost)}\n\n".encode()
                if _visible(event, tenant) or event["type"] == SHUTDOWN:
                    data = json.dumps(event, default=str)
                    yield f"event: {event['type']}\ndata: {data}\n\n".encode()
                if event["type"] == SHUTDOWN:
                    break

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
