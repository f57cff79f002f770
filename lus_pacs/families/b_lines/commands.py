"""``lus-pacs train b-lines`` and ``lus-pacs evaluate b-lines``.

The options only: :mod:`lus_pacs.families.b_lines.train` and
:mod:`lus_pacs.families.b_lines.evaluate` do the work and are imported when a command runs, so
that ``--help`` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from lus_pacs.settings import MODELS_DIR


class Architecture(StrEnum):
    """The keys of :data:`lus_pacs.families.b_lines.network.ARCHITECTURES`."""

    c2d_lstm_att = "c2d_lstm_att"
    c2d_att = "c2d_att"
    c3d_att = "c3d_att"
    c2d_lstm = "c2d_lstm"


"""The shipped bundles, beside the package (as the node's default ``models_dir``)."""

PocusOption = Annotated[
    Path | None, typer.Option("--pocus", help="The POCUS dataset folder (labels.csv).")
]
PocusCacheOption = Annotated[
    Path | None, typer.Option("--pocus-cache", help="Folder for the clips' DICOM imports.")
]


def train(
    epochs: Annotated[int, typer.Option(help="Training epochs.")],
    seed: Annotated[int, typer.Option(help="Random seed: weights, batches and folds.")],
    data: Annotated[Path | None, typer.Option(help="Output of `lus-pacs synth`.")] = None,
    via: Annotated[
        list[Path] | None,
        typer.Option(
            help="A VIA project of annotated DICOM cines (paper 001's format); repeatable."
        ),
    ] = None,
    via_root: Annotated[
        Path | None, typer.Option(help="Folder the VIA file names are under.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="The bundle folder (with --folds: fold 0's).")
    ] = None,
    arch: Annotated[Architecture, typer.Option(help="The network.")] = (Architecture.c2d_lstm_att),
    pocus: PocusOption = None,
    pocus_cache: PocusCacheOption = None,
    folds: Annotated[
        int | None, typer.Option(help="Cross-validate over this many folds instead.")
    ] = None,
    n_folds: Annotated[int, typer.Option(help="Folds; the first validates.")] = 5,
    lr: Annotated[float, typer.Option(help="Adam's learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = 20,
    max_pocus_windows: Annotated[
        int,
        typer.Option(help="1-s windows per POCUS clip at most, spread over the clip (0: all)."),
    ] = 4,
) -> None:
    """Paper 001's networks on simulated exams, VIA-annotated cines and the POCUS clips; --folds
    N cross-validates. Writes the bundle."""
    if data is None and not via:
        raise typer.BadParameter("give --data, --via, or both")
    common: dict[str, Any] = {
        "via": via or (),
        "via_root": via_root,
        "epochs": epochs,
        "seed": seed,
        "arch": arch.value,
        "pocus_dir": pocus,
        "pocus_cache": pocus_cache,
        "lr": lr,
        "batch_size": batch_size,
        "max_pocus_windows": max_pocus_windows or None,
    }
    if folds is not None:
        from lus_pacs.families.b_lines.train import cross_validate_b_lines
        from lus_pacs.training.bundle_files import finite

        result = cross_validate_b_lines(data, folds=folds, out_dir=out, **common)
        typer.echo(json.dumps(finite(result.summary()), indent=2))
        return
    if out is None:
        raise typer.BadParameter("--out is required unless --folds is given")
    from lus_pacs.families.b_lines.train import train_b_lines

    metrics = train_b_lines(data, out, n_folds=n_folds, **common)
    typer.echo(json.dumps(metrics, indent=2))


def evaluate(
    bundle: Annotated[Path, typer.Option(help="A B-line bundle folder.")],
    simulated: Annotated[
        Path | None, typer.Option(help="Held-out output of `lus-pacs synth`.")
    ] = None,
    pocus: PocusOption = None,
    pocus_cache: PocusCacheOption = None,
    groups: Annotated[
        list[str] | None,
        typer.Option(help="A held-out POCUS group; repeatable (default: all).", show_default=False),
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for attention-over-time PNGs.")] = None,
) -> None:
    """Precision, recall, F1, localisation at IoU 0.1-0.4, key-frame accuracy, AUC, and
    attention plots."""
    from lus_pacs.families.b_lines.evaluate import evaluate as evaluate_b_lines
    from lus_pacs.families.b_lines.evaluate import markdown_table

    metrics = evaluate_b_lines(
        bundle,
        simulated_root=simulated,
        pocus_dir=pocus,
        pocus_cache=pocus_cache,
        pocus_groups=groups,
        plots=plots,
    )
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(markdown_table({bundle.name: metrics}))


def fit(
    data: Annotated[
        Path, typer.Option(help="The folder holding pocus/ (only its trainable clips are read).")
    ],
    localiser: Annotated[
        Path,
        typer.Option(
            help="The B-line bundle whose network finds the frames.",
            show_default="models/b_lines",
        ),
    ] = MODELS_DIR / "b_lines",
    out: Annotated[
        Path, typer.Option(help="The bundle folder to write.", show_default="models/b_lines")
    ] = MODELS_DIR / "b_lines",
    cache: Annotated[Path, typer.Option(help="Folder for the clips' imports and measurements.")] = (
        Path("build/real-cache")
    ),
) -> None:
    """Fit the clip decision on the real trainable clips (a measurement head, stratified by
    source) and write it beside the localiser's network as one bundle."""
    from lus_pacs.families.b_lines.real_head import fit_real_head

    done = fit_real_head(localiser, data, cache, out)
    typer.echo(json.dumps(done, indent=2))
    typer.echo(f"written: {out}")


COMMANDS: dict[str, Callable[..., None]] = {"train": train, "evaluate": evaluate, "fit": fit}
