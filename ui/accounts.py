"""Terminal commands for accounts: `users …` and `tokens …` (`main.py` parses and wires).

Passwords are asked on the terminal (twice), or read as one line from stdin when it is not a
terminal (`echo "$PW" | uv run main.py users add alice`). They never appear on the command line,
where other users of the machine could see them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TextIO

from engine import auth
from engine.auth import AuthError
from engine.db import connected
from engine.settings import Settings
from models.db import migrate

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    users = commands.add_parser("users", help="accounts: add, list, disable, enable, remove, passwd, role")
    user_commands = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = user_commands.add_parser("add", help="add an account (sign-in turns on with the first one)")
    add.add_argument("name")
    add.add_argument("--role", choices=auth.ROLES, default="operator", help="viewer: read only (default operator)")
    user_commands.add_parser("list", help="list accounts")
    for action, text in (
        ("disable", "stop an account from signing in (its tokens stop working too)"),
        ("enable", "let a disabled account sign in again"),
        ("remove", "delete an account and its tokens"),
        ("passwd", "set a new password"),
    ):
        user_commands.add_parser(action, help=text).add_argument("name")
    role = user_commands.add_parser("role", help="change an account's role")
    role.add_argument("name")
    role.add_argument("role", choices=auth.ROLES)
    tokens = commands.add_parser("tokens", help="API tokens: add, list, revoke")
    token_commands = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)
    token_add = token_commands.add_parser("add", help="create a token for a user (shown once)")
    token_add.add_argument("user")
    token_add.add_argument("name", nargs="?", default="api", help="what the token is for, e.g. ci (default: api)")
    token_list = token_commands.add_parser("list", help="list tokens (never their values)")
    token_list.add_argument("user", nargs="?")
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", type=int)
    for parser in (users, tokens, *user_commands.choices.values(), *token_commands.choices.values()):
        common(parser)  # type: ignore[operator]


def read_password(stdin: TextIO, out: TextIO) -> str:
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise AuthError("the two passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


async def run(settings: Settings, args: argparse.Namespace, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    await migrate(settings.db_url)
    async with connected(settings.db_url):
        try:
            if args.command == "users":
                await _users(args, stdin, out)
            else:
                await _tokens(args, out)
        except AuthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK


async def _users(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> None:
    if args.action == "add":
        auth.check_name(args.name)
        user = await auth.add_user(args.name, read_password(stdin, out), args.role)
        print(f"added {user.name} ({user.role}); sign-in is on", file=out)
    elif args.action == "list":
        users = await auth.list_users()
        if not users:
            print("no accounts: sign-in is off (the server only serves this machine)", file=out)
        for user in users:
            state = "disabled" if user.disabled else "active"
            print(f"{user.name:<24} {user.role:<9} {state:<9} since {user.created_at:%Y-%m-%d}", file=out)
    elif args.action in ("disable", "enable"):
        await auth.set_disabled(args.name, args.action == "disable")
        print(f"{args.name} {args.action}d", file=out)
    elif args.action == "remove":
        await auth.remove_user(args.name)
        print(f"removed {args.name}", file=out)
    elif args.action == "passwd":
        await auth.get_user(args.name)
        await auth.set_password(args.name, read_password(stdin, out))
        print(f"password of {args.name} changed", file=out)
    elif args.action == "role":
        await auth.set_role(args.name, args.role)
        print(f"{args.name} is now {args.role}", file=out)


async def _tokens(args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "add":
        token, row = await auth.add_token(args.user, args.name)
        print(token, file=out)
        print(
            f"token {row.id} ({row.name}) for {args.user}: shown once, keep it safe. "
            "Send it as: Authorization: Bearer <token>",
            file=sys.stderr,
        )
    elif args.action == "list":
        for row in await auth.list_tokens(args.user):
            used = f"used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            print(f"{row.id:>4} {row.user.name:<20} {row.name:<20} {row.prefix}…  {state:<18} {used}", file=out)
    elif args.action == "revoke":
        row = await auth.revoke_token(args.id)
        print(f"token {row.id} ({row.name}) of {row.user.name} revoked", file=out)
