"""`distillery up`, `distillery status [--json]` and `distillery down`: the local stack.

Exit codes: 0 ok; 1 failure; 2 usage; 3 a part is not serving (or no stack). A part that is
OFF on purpose (the platform teacher without llama.cpp) does not count as not serving.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distillery.cli import server_side
from distillery.client import home
from distillery.stack.stack import LocalStack, PartStatus, StackError, part_dicts

EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 3

_ICONS = {"starting": "[yellow]…[/]", "ready": "[green]✓[/]", "running": "[green]✓[/]",
          "restarting": "[yellow]↻[/]", "waiting": "[yellow]…[/]"}  # fmt: skip
_HEALTH_STYLE = {"SERVING": "green", "NOT_SERVING": "yellow", "DOWN": "red", "OFF": "dim"}


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _parts_table(parts: list[PartStatus]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("part", "address", "pid", "health", "detail"):
        table.add_column(column)
    for part in parts:
        style = _HEALTH_STYLE.get(part.health, "red")
        cells = (part.name, part.address or "-", str(part.pid or "-"))
        table.add_row(*map(escape, cells), f"[{style}]{part.health}[/]", escape(part.detail))
    return table


def _print_endpoint(console: Console, parts: list[PartStatus]) -> None:
    for part in parts:
        if part.name == "gateway" and part.url:
            console.print(f"Endpoint:    {escape(part.url)}/v1 (OpenAI-compatible; your API key as the bearer token)")


@click.command()
def up() -> None:
    """Start the local stack: PostgreSQL, S3, a Ray head, the four services, the platform teacher and
    the gateway (the OpenAI-compatible endpoint of deployed models).

    Everything lives under $DISTILLERY_HOME (default ~/.distillery); logs go to
    $DISTILLERY_HOME/logs/<part>.log. Parts already running are kept.
    """
    if missing := server_side.missing():
        raise click.ClickException(server_side.refusal("up", missing))
    console = _console()
    stack = LocalStack(home())

    starting: list[str] = []

    def progress(part: str, event: str, detail: str) -> None:
        if event == "starting":
            starting.append(part)
        elif part in starting:
            starting.remove(part)
        spinner.update(f"waiting for {', '.join(starting)}…" if starting else "…")
        if event == "starting":
            console.print(f"  {_ICONS[event]} {part:<9} starting on {detail}")
        elif event == "running":
            console.print(f"  {_ICONS[event]} {part:<9} already running on {detail}")
        else:
            console.print(f"  {_ICONS.get(event, ' ')} {part:<9} {event} {detail}".rstrip())

    console.print(f"Local stack in {stack.home}")
    try:
        with console.status("starting…", spinner="dots") as spinner:
            result = stack.up(progress)
    except StackError as err:
        _console(stderr=True).print(f"[red]error:[/] {err}", markup=True, soft_wrap=True)
        _console(stderr=True).print("Parts that did start keep running; stop them with `distillery down`.")
        sys.exit(EXIT_FAILURE)
    if result.already_running:
        console.print("[green]The local stack is already running.[/]")
    console.print(_parts_table(result.parts))
    tenant = {"created": "created the dev tenant and its API key",
              "new key": "made a new API key for the dev tenant",
              "kept": "dev tenant's API key kept"}[result.tenant]  # fmt: skip
    console.print(f"Credentials: {stack.credentials_path} ({tenant})")
    _print_endpoint(console, result.parts)
    console.print(f"Logs:        {stack.logs}/<part>.log")
    if not all(part.ok for part in result.parts):
        sys.exit(EXIT_UNAVAILABLE)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the parts as JSON.")
def status(as_json: bool) -> None:
    """Show each part of the local stack and whether it is healthy."""
    stack = LocalStack(home())
    parts = stack.status()
    if parts is None:
        message = f"no local stack in {stack.home}: start one with `distillery up`"
        if as_json:
            click.echo(json.dumps({"home": str(stack.home), "running": False, "parts": [], "error": message}))
        else:
            _console(stderr=True).print(message)
        sys.exit(EXIT_UNAVAILABLE)
    unhealthy = [part.name for part in parts if not part.ok]
    if as_json:
        document = {"home": str(stack.home), "all_serving": not unhealthy, "parts": part_dicts(parts)}
        click.echo(json.dumps(document, indent=2))
    else:
        console = _console()
        console.print(f"Local stack in {stack.home}")
        console.print(_parts_table(parts))
        _print_endpoint(console, parts)
        if unhealthy:
            console.print(f"[red]Not serving:[/] {', '.join(unhealthy)}. Logs: {stack.logs}/<part>.log; "
                          "`distillery up` restarts what is down.")  # fmt: skip
    if unhealthy:
        sys.exit(EXIT_UNAVAILABLE)


@click.command()
def down() -> None:
    """Stop every part of the local stack. Data stays in $DISTILLERY_HOME."""
    console = _console()
    stack = LocalStack(home())
    with console.status("stopping…", spinner="dots"):
        result = stack.down()
    if result is None:
        console.print(f"Nothing is running in {stack.home}.")
        return
    console.print(f"Stopped {', '.join(result.stopped) or 'leftover processes'}. Data stays in {stack.home}.")
    failed = False
    if result.survivors:
        console.print(f"[red]Still running after SIGKILL:[/] {', '.join(result.survivors)}")
        failed = True
    for port, holder in sorted(result.listening.items()):
        console.print(f"[red]Port {port} still listens[/] {holder}".rstrip())
        failed = True
    if failed:
        sys.exit(EXIT_FAILURE)
