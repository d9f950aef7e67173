"""``ioc users ...`` and ``ioc tokens ...``: local accounts and API tokens, straight in the database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

import asyncpg

from ioc.auth import mfa, store
from ioc.auth import secrets as sec
from ioc.auth.model import Role
from ioc.settings import Settings

ROLES = ["viewer", "officer", "supervisor", "admin"]


def add_users_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="users_command", required=True)
    add = sub.add_parser("add", help="create a local user (prints a random password unless --password-stdin)")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--name", help="display name (default: the user name)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    sub.add_parser("list", help="users, their roles, disabled or not, last login")
    dis = sub.add_parser("disable", help="disable a user; their sessions end at once")
    dis.add_argument("username")
    ena = sub.add_parser("enable", help="enable a disabled user")
    ena.add_argument("username")
    role = sub.add_parser("set-role", help="change a user's role")
    role.add_argument("username")
    role.add_argument("role", choices=ROLES)
    pw = sub.add_parser("set-password", help="new password (random, printed, unless --password-stdin); "
                        "the user's sessions end")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true")
    reset = sub.add_parser("mfa-reset", help="forget a user's second factor (TOTP) and recovery codes, e.g. a lost "
                           "phone; their sessions end")
    reset.add_argument("username")


def add_tokens_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokens_command", required=True)
    create = sub.add_parser("create", help="a new API token (printed once; only its hash is kept)")
    create.add_argument("name", help="what it is for, e.g. 'wall 1 control room' or 'prometheus'")
    create.add_argument("--role", choices=ROLES, default="viewer")
    create.add_argument("--days", type=float, default=None, help="lifetime (default IOC_AUTH__TOKEN_DAYS)")
    create.add_argument("--link", metavar="BASE_URL", help="also print the wall link BASE_URL/?token=...")
    lst = sub.add_parser("list", help="tokens: id, name, role, prefix, expiry, last use")
    lst.add_argument("--all", action="store_true", help="revoked ones too")
    rev = sub.add_parser("revoke", help="revoke a token by id (the wall sessions opened with it end too)")
    rev.add_argument("token_id", type=int)


def run_users(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_users(args, settings))


def run_tokens(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_tokens(args, settings))


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    if args.password_stdin:
        return (sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()), False
    return sec.new_password(), True


async def _users(args: argparse.Namespace, settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        cmd = args.users_command
        if cmd == "list":
            _table(await store.list_users(conn), ["id", "username", "role", "disabled", "mfa", "display_name",
                                                  "last_login_at"])
        elif cmd == "add":
            password, generated = _password(args)
            row = await store.create_user(conn, args.username, Role.parse(args.role), password, args.name)
            print(f"user {row['username']} ({row['role']}) created")
            if generated:
                print(f"password: {password}   (shown once; change it with `ioc users set-password`)")
        elif cmd in ("disable", "enable"):
            await store.set_disabled(conn, args.username, cmd == "disable")
            print(f"user {args.username} {cmd}d")
        elif cmd == "set-role":
            await store.set_role(conn, args.username, Role.parse(args.role))
            print(f"user {args.username} is now {args.role}")
        elif cmd == "set-password":
            password, generated = _password(args)
            await store.set_password(conn, args.username, password)
            print(f"password of {args.username} changed; their sessions ended")
            if generated:
                print(f"password: {password}   (shown once)")
        elif cmd == "mfa-reset":
            removed = await mfa.reset_user(conn, args.username)
            print(f"second factor of {args.username} " + ("reset; their sessions ended" if removed
                                                           else "was not set; their sessions ended"))
    except (ValueError, store.AuthStoreError) as err:
        print(f"ioc users: {err}", file=sys.stderr)
        return 2
    finally:
        await conn.close()
    return 0


async def _tokens(args: argparse.Namespace, settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        cmd = args.tokens_command
        if cmd == "list":
            _table(await store.list_tokens(conn, args.all), ["id", "name", "role", "prefix", "created_by",
                                                             "expires_at", "revoked_at", "last_used_at"])
        elif cmd == "create":
            days = args.days or settings.auth.token_days
            secret, row = await store.create_token(conn, args.name, Role.parse(args.role), days, "ioc tokens")
            print(f"token {row['id']} '{row['name']}' ({row['role']}), expires {row['expires_at']:%Y-%m-%d}")
            print(f"token: {secret}   (shown once; only its hash is kept)")
            if args.link:
                print(f"wall link: {args.link.rstrip('/')}/?token={secret}")
        elif cmd == "revoke":
            if not await store.revoke_token(conn, args.token_id):
                print(f"ioc tokens: no active token {args.token_id}", file=sys.stderr)
                return 2
            print(f"token {args.token_id} revoked")
    except (ValueError, store.AuthStoreError) as err:
        print(f"ioc tokens: {err}", file=sys.stderr)
        return 2
    finally:
        await conn.close()
    return 0


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    text = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c), *(len(t[i]) for t in text)]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M"))
    return str(value)
