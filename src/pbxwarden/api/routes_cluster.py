"""``GET /api/v1/cluster``: the nodes of the PBX and the health of Redis and the
database, the same JSON as ``pbxwarden cluster status --json``.

Read from Redis and the database on each request (not from this node's memory), so that
any node's API shows the same answer, lost nodes included. Server-wide, so for global
administrators only; read-only. The reads are blocking and bounded (each Redis command
and the database within ``cluster.timeout``, at least 1 s): a worker thread does them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pbxwarden.api.security import API_PREFIX, Admin, Ctx, require_global

router = APIRouter(prefix=API_PREFIX)


@router.get(
    "/cluster",
    tags=["cluster"],
    summary="Nodes (up, lost, stopped) with their version and load; Redis and database health",
)
def get_cluster(ctx: Ctx, principal: Admin) -> dict[str, Any]:
    """``configured`` is false (and ``redis`` null) when this node has no
    ``cluster.redis_url``; ``redis.reachable`` false when Redis did not answer."""
    from pbxwarden.cluster.registry import cluster_status  # the Redis client: when asked

    require_global(principal, "the cluster")
    return cluster_status(ctx.config, ctx.store.engine, max(1.0, ctx.config.cluster.timeout))
