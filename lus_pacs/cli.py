"""The ``lus-pacs`` command. Heavy imports (torch, monai, pydicom) happen inside the commands,
so ``lus-pacs --help`` answers at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lus_pacs import __version__

app = typer.Typer(
    name="lus-pacs",
    help="Lung-ultrasound AI node for PACS. Research software, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file; embedded defaults if omitted.")
]


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
