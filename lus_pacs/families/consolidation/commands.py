"""``lus-pacs pretrain consolidation`` and ``lus-pacs train consolidation``.

The options only: :mod:`lus_pacs.families.consolidation.train` does the work and is imported
when a command runs, so that ``--help`` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

PocusCacheOption = Annotated[
    Path, typer.Option("--pocus-cache", help="Folder for the clips' DICOM imports.")
]
DEFAULT_POCUS_CACHE = Path("build/pocus-cache")


class Method(StrEnum):
    """Self-supervised methods of :func:`lus_pacs.families.consolidation.train.pretrain`."""

    byol = "byol"
    simclr = "simclr"


def pretrain(
    unlabeled: Annotated[
        list[Path],
        typer.Option(help="Simulated exams or a folder of DICOM cines; repeatable."),
    ],
    steps: Annotated[int, typer.Option(help="Pre-training steps.")],
    seed: Annotated[int, typer.Option(help="Random seed: weights, batches and folds.")],
    out: Annotated[Path, typer.Option(help="The checkpoint (resumed if present).")],
    pocus: Annotated[Path | None, typer.Option(help="The POCUS clips (labels unused).")] = None,
    pocus_cache: PocusCacheOption = DEFAULT_POCUS_CACHE,
    method: Annotated[Method, typer.Option(help="The self-supervised method.")] = Method.byol,
    no_temporal: Annotated[
        bool, typer.Option("--no-temporal", help="The ablation: no temporal augmentations.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Clips per batch.")] = 16,
    checkpoint_every: Annotated[int, typer.Option(help="Save the checkpoint every N steps.")] = 50,
    folds: Annotated[
        int, typer.Option(help="Simulated patients of the held-out fold are left out.")
    ] = 5,
) -> None:
    """Paper 002's BYOL (or --method simclr) on unlabeled simulated, POCUS and DICOM cines;
    resumable checkpoint."""
    from lus_pacs.families.consolidation.train import pretrain_encoder

    done = pretrain_encoder(
        unlabeled,
        out,
        steps=steps,
        seed=seed,
        pocus=pocus,
        pocus_cache=pocus_cache,
        method=method.value,
        temporal=not no_temporal,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        folds=folds,
    )
    typer.echo(f"{done.clips} clips, {steps} steps in {done.seconds:.0f} s -> {out}")


def train(
    data: Annotated[Path, typer.Option(help="Output of `lus-pacs synth`.")],
    encoder: Annotated[Path, typer.Option(help="A pre-training checkpoint.")],
    steps: Annotated[int, typer.Option(help="Training steps of the classifier.")],
    seed: Annotated[int, typer.Option(help="Random seed: weights, batches and folds.")],
    scored: Annotated[
        Path | None,
        typer.Option(
            help="Simulated exams with the default scored scenes: its held-out patients are a "
            "further test set (train with --data from `synth --decouple-consolidation`)."
        ),
    ] = None,
    ablation_encoder: Annotated[
        Path | None, typer.Option(help="Pre-trained without temporal augmentations.")
    ] = None,
    pocus: Annotated[Path | None, typer.Option(help="The POCUS clips.")] = None,
    pocus_cache: PocusCacheOption = DEFAULT_POCUS_CACHE,
    folds: Annotated[int, typer.Option(help="Patient folds; the first is held out.")] = 5,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="The four variants over label fractions.")
    ] = False,
    sweep_steps: Annotated[
        int | None,
        typer.Option(help="Steps per sweep model.", show_default="--steps"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The bundle folder.")] = None,
    figures: Annotated[
        Path | None, typer.Option(help="Where the sweep plot and tables go.")
    ] = None,
) -> None:
    """Paper 002's classifier on a pre-trained encoder; --sweep runs the four variants over
    label fractions; writes the bundle."""
    from lus_pacs.families.consolidation.train import train_consolidation

    result = train_consolidation(
        data,
        encoder,
        steps=steps,
        seed=seed,
        scored=scored,
        ablation_encoder=ablation_encoder,
        pocus=pocus,
        pocus_cache=pocus_cache,
        folds=folds,
        with_sweep=sweep,
        sweep_steps=sweep_steps,
        out=out,
        figures=figures,
    )
    summary = {"held_out": result.held_out, "seconds": round(result.seconds)}
    typer.echo(json.dumps(summary, indent=1))
    for name, table in result.tables.items():
        typer.echo(f"held-out {name}, AUC / accuracy:\n{table}")


COMMANDS: dict[str, Callable[..., None]] = {"pretrain": pretrain, "train": train}
