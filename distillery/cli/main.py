"""`distillery`: the command line, grouped by noun. It talks to the services only over gRPC.

Exit codes: 0 ok, 1 failed (validation, run, or a refused request), 2 usage error,
3 a service unavailable.
"""

from __future__ import annotations

import click

from distillery.cli import (
    admin,
    datasets,
    deployments,
    keys,
    model_exports,
    models,
    optimize,
    quota,
    recipes,
    rubrics,
    runs,
    server_side,
    tools,
    traffic,
    vectors,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distillery")
def cli() -> None:
    """Distillery: turn your data and a teacher model's behaviour into small models you own."""


try:  # the local stack's commands, where the server side is installed
    from distillery.cli.stack_commands import down, status, up

    stack_commands = [up, down, status]
except ImportError as err:  # the client alone: each says what to install
    stack_commands = [server_side.stand_in(name, err.name or "the server side") for name in ("up", "down", "status")]
for command in stack_commands:
    cli.add_command(command)

models.group.add_command(model_exports.export)
# Optimization profiles: `models optimize`, `models profile`, `models try`.
models.group.add_command(optimize.optimize)
models.group.add_command(optimize.profile)
models.group.add_command(optimize.try_)
# Deployments: `models deploy` / `models undeploy`, `deployments list`; operators: `admin tenants set-tier`.
models.group.add_command(deployments.deploy)
models.group.add_command(deployments.undeploy)
cli.add_command(deployments.group)
cli.add_command(admin.group)
for group in (
    datasets.group,
    tools.group,
    keys.group,
    recipes.group,
    rubrics.group,
    runs.group,
    models.group,
    quota.command,
    traffic.group,
    vectors.group,
):
    cli.add_command(group)


def main() -> None:
    cli(prog_name="distillery")


if __name__ == "__main__":
    main()
