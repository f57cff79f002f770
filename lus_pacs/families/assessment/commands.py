"""The assessment's command: ``lus-pacs fit assessment`` (its measurement reference)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lus_pacs.settings import MODELS_DIR


def fit(
    data: Annotated[
        Path, typer.Option(help="The folder holding pocus/ (only its trainable clips are read).")
    ],
    out: Annotated[
        Path, typer.Option(help="The bundle folder to update.", show_default="models/assessment")
    ] = MODELS_DIR / "assessment",
    cache: Annotated[Path, typer.Option(help="Folder for the clips' imports and measurements.")] = (
        Path("build/real-cache")
    ),
) -> None:
    """Write the lung measurements of the real trainable clips (mean and standard deviation of
    each) into the assessment bundle: a cine far outside them is not assessable."""
    from lus_pacs.families.assessment.reference import fit_reference

    reference = fit_reference(data, cache, out)
    typer.echo(f"reference of {reference['clips']} clips written: {out}")


COMMANDS: dict[str, Callable[..., None]] = {"fit": fit}
