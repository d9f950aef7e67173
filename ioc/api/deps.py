"""Dependencies shared by every router. ``require_access`` is the one place authentication will go."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.params import Depends as DependsParam
from starlette.requests import HTTPConnection

from storage.db import Backend, SchemaNotReady, read_backend


@dataclass(frozen=True)
class Principal:
    """Who is calling. Today everyone is the anonymous operator; roles come with authentication."""

    name: str = "anonymous"
    roles: tuple[str, ...] = ("viewer",)


async def require_access(connection: HTTPConnection) -> Principal:
    """Authorise a request or WebSocket. Every route depends on this one function."""
    return Principal()


class Role(IntEnum):
    """Roles, each including the ones below it. ``PUBLIC`` marks routes anyone may call (health, login)."""

    PUBLIC = 0
    VIEWER = 1
    OFFICER = 2
    SUPERVISOR = 3
    ADMIN = 4


def requires(role: Role) -> DependsParam:
    """The role a route or router needs, declared where the route is declared:
    ``@router.get("/x", dependencies=[requires(Role.OFFICER)])``. Tests enumerate the app's routes and
    check each declares one. (Skeleton: authentication fills in the check.)"""

    async def check(connection: HTTPConnection) -> Principal:
        return await require_access(connection)

    check.required_role = role  # type: ignore[attr-defined]  # read by the route-enumeration test
    return Depends(check)


def get_pool(request: Request) -> Any:
    """The asyncpg pool, or 503 while the database is unavailable."""
    pool = request.app.state.pool
    if pool is None:
        raise HTTPException(503, "database not available yet")
    return pool


async def get_backend(request: Request) -> Backend:
    """The storage backend (read once from the database), or 503 while the schema is missing."""
    backend: Backend | None = request.app.state.backend
    if backend is None:
        async with get_pool(request).acquire() as conn:
            try:
                backend = await read_backend(conn)
            except SchemaNotReady as err:
                raise HTTPException(503, str(err)) from None
        request.app.state.backend = backend
    return backend


PoolDep = Annotated[Any, Depends(get_pool)]
BackendDep = Annotated[Backend, Depends(get_backend)]
CurrentPrincipal = Annotated[Principal, Depends(require_access)]
