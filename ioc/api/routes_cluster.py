"""The cluster as it is now: every process, its role, the lease holder, its epoch, lease age, input lag."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ioc.api.deps import PoolDep, Role, requires
from storage import cluster as sql

router = APIRouter(tags=["cluster"])


@router.get("/api/cluster", dependencies=[requires(Role.VIEWER)])
async def cluster(request: Request, pool: PoolDep) -> dict[str, Any]:
    """Processes seen within three heartbeats, and the brain's lease (holder, epoch, age, valid)."""
    cfg = request.app.state.cluster
    async with pool.acquire(timeout=5) as conn:
        lease = await sql.lease_row(conn, cfg.lease_name)
        members = await sql.members(conn, cfg.heartbeat_s * 3)
    node = request.app.state.node
    return {"process_id": node.process_id, "role": node.role, "doing": node.doing(), "lease": lease,
            "leader": lease["holder"] if lease and lease["valid"] else None, "members": members}
