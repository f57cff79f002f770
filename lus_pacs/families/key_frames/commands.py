"""``lus-pacs train key-frames`` and ``lus-pacs evaluate key-frames``.

The options only: :mod:`lus_pacs.families.key_frames.train` and
:mod:`lus_pacs.families.key_frames.evaluate` do the work and are imported when a command runs, so
that ``--help`` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
"""The shipped bundles (the repository's ``models/``)."""

BLinesOption = Annotated[
    Path,
    typer.Option(
        "--b-lines",
        help="The B-line bundle whose CNN encodes frames for similarity.",
        show_default="models/b_lines",
    ),
]
PocusCacheOption = Annotated[
    Path, typer.Option("--pocus-cache", help="Folder for the clips' DICOM imports.")
]
DEFAULT_POCUS_CACHE = Path("build/pocus-cache")


def train(
    data: Annotated[Path, typer.Option(help="Output of `lus-pacs synth`.")],
    seed: Annotated[int, typer.Option(help="Random seed: weights, batches and patient folds.")],
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="VARIANT",
            help="With --variants: only these dataset variants (default: all).",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 25,
    frames_per_cine: Annotated[
        int, typer.Option(help="Training frames spread over every cine.")
    ] = 6,
    lr: Annotated[float, typer.Option(help="SGD's initial learning rate.")] = 1e-2,
    folds: Annotated[int, typer.Option(help="Patient folds; the first is held out.")] = 5,
    b_lines: BLinesOption = MODELS_DIR / "b_lines",
    variants: Annotated[
        bool,
        typer.Option(
            "--variants",
            help="Also train on the paper's dataset variants: the VARIANTs named, or all.",
        ),
    ] = False,
    variant_epochs: Annotated[
        int | None, typer.Option(help="Epochs per variant.", show_default="--epochs")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The bundle folder.")] = None,
    tables: Annotated[Path | None, typer.Option(help="Where the variant tables go (JSON).")] = None,
    pocus: Annotated[
        Path | None,
        typer.Option(
            help="Real POCUS clips of the training publishers join as usable frames (weak "
            "labels); the held-out publishers' clips are flagged."
        ),
    ] = None,
    pocus_cache: PocusCacheOption = DEFAULT_POCUS_CACHE,
) -> None:
    """Paper 004's key-frame classifier with the quality reasons; --variants also trains one
    model per dataset variant of the paper for its tables."""
    if names and not variants:
        raise typer.BadParameter("name dataset variants after --variants")
    from lus_pacs.families.key_frames.evaluate import variant_table
    from lus_pacs.families.key_frames.train import train_key_frames

    result = train_key_frames(
        data,
        b_lines,
        seed=seed,
        epochs=epochs,
        frames_per_cine=frames_per_cine,
        lr=lr,
        folds=folds,
        variants=(names or []) if variants else None,
        variant_epochs=variant_epochs,
        out=out,
        tables=tables,
        pocus=pocus,
        pocus_cache=pocus_cache,
    )
    if result.pocus is not None:
        typer.echo(json.dumps({"pocus": result.pocus}, indent=1))
    typer.echo(json.dumps(result.summary, indent=1))
    if result.variant_rows:
        for row in result.variant_rows[:-1]:  # the last is the shipped model's
            typer.echo(json.dumps(row))
        typer.echo(variant_table(result.variant_rows))


def evaluate(
    data: Annotated[Path, typer.Option(help="Output of `lus-pacs synth`.")],
    bundle: Annotated[
        Path, typer.Option(help="The key-frame bundle.", show_default="models/key_frames")
    ] = MODELS_DIR / "key_frames",
    seed: Annotated[int, typer.Option(help="The split's seed (as trained).")] = 1,
    folds: Annotated[int, typer.Option(help="Patient folds; the first is held out.")] = 5,
    every_cine: Annotated[
        bool, typer.Option("--all", help="Every cine, not the held-out fold.")
    ] = False,
    b_lines: BLinesOption = MODELS_DIR / "b_lines",
    pocus: Annotated[
        Path | None,
        typer.Option(
            help="Also flag the held-out real POCUS clips (no frame labels: how many are rated "
            "usable; all of them with --all)."
        ),
    ] = None,
    pocus_cache: PocusCacheOption = DEFAULT_POCUS_CACHE,
) -> None:
    """Paper 004's Tests 1 and 2, the chosen frame and the quality flag on held-out simulated
    cines."""
    from lus_pacs.families.key_frames.evaluate import evaluate_key_frames

    result = evaluate_key_frames(
        bundle,
        data,
        b_lines,
        seed=seed,
        folds=folds,
        every_cine=every_cine,
        pocus=pocus,
        pocus_cache=pocus_cache,
    )
    typer.echo(json.dumps(result.scores, indent=1))
    if result.pocus is not None:
        typer.echo(json.dumps({"pocus": result.pocus}, indent=1))


COMMANDS: dict[str, Callable[..., None]] = {"train": train, "evaluate": evaluate}
