"""The ``replog sim``command (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command()
def sim() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
