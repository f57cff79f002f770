"""``lus-pacs train severity`` and ``lus-pacs evaluate severity``.

The options only: :mod:`lus_pacs.families.severity.train` and
:mod:`lus_pacs.families.severity.evaluate` do the work and are imported when a command runs, so
that ``--help`` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lus_pacs.settings import MODELS_DIR


class FrameScorer(StrEnum):
    """The keys of :data:`lus_pacs.families.severity.network.FRAME_SCORERS`."""

    cnn_ce = "cnn_ce"
    cnn_sord = "cnn_sord"
    stn_sord = "stn_sord"
    cnn_random_crop_sord = "cnn_random_crop_sord"
    reg_stn_sord = "reg_stn_sord"


def train(
    epochs: Annotated[int, typer.Option(help="Epochs of the frame scorer.")],
    seed: Annotated[int, typer.Option(help="Random seed: weights, batches and patient folds.")],
    data: Annotated[Path | None, typer.Option(help="Output of `lus-pacs synth`.")] = None,
    frame_scores: Annotated[
        list[Path] | None,
        typer.Option(
            "--frame-scores",
            help="A CSV of file,frame,score rows for a site's DICOM cines (paper 003); repeatable.",
        ),
    ] = None,
    frame_scores_root: Annotated[
        Path | None, typer.Option(help="Folder the CSV file names are under.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The bundle folder (omit to measure only).")] = (
        None
    ),
    variant: Annotated[FrameScorer, typer.Option(help="The frame scorer.")] = (
        FrameScorer.reg_stn_sord
    ),
    lr: Annotated[float, typer.Option(help="Adam's learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Frames per batch.")] = 32,
    every: Annotated[int, typer.Option(help="Train on every k-th frame.")] = 1,
    aggregator_data: Annotated[
        Path | None, typer.Option(help="More held-out `synth` output for the aggregator.")
    ] = None,
    folds: Annotated[int, typer.Option(help="Patient folds; the first is held out.")] = 5,
    frame_scorer: Annotated[
        Path | None,
        typer.Option(help="Keep this bundle's frame scorer; train the aggregator only."),
    ] = None,
) -> None:
    """Paper 003's frame scorer and uninorm clip aggregation on simulated exams and a site's
    frame-score CSVs; writes the bundle."""
    if data is None and not frame_scores:
        raise typer.BadParameter("give --data, --frame-scores, or both")
    from lus_pacs.families.severity.train import train_severity

    result = train_severity(
        data,
        out,
        epochs=epochs,
        seed=seed,
        variant=variant.value,
        lr=lr,
        batch_size=batch_size,
        every=every,
        aggregator_data=aggregator_data,
        n_folds=folds,
        frame_scorer=frame_scorer,
        frame_scores=frame_scores or (),
        frame_scores_root=frame_scores_root,
    )
    doc = {"frame": result.frame, "aggregators": result.aggregators.summary(), **result.counts}
    typer.echo(json.dumps(doc, indent=2))


def evaluate(
    bundle: Annotated[
        list[Path], typer.Option(help="A severity bundle folder; repeat to compare several.")
    ],
    simulated: Annotated[Path, typer.Option(help="Held-out `lus-pacs synth` output.")],
    plots: Annotated[Path | None, typer.Option(help="Folder for the STN crop montage.")] = None,
) -> None:
    """Frame F1 (Settings 1 and 2), clip weighted F1 / precision / recall for the uninorm and
    both baselines, confusion matrices, STN crop montage."""
    from lus_pacs.families.severity.evaluate import evaluate_severity, markdown_tables
    from lus_pacs.families.severity.train import TRANSITION_MARGIN

    results = {}
    for folder in bundle:
        folder_plots = plots / folder.name if plots and len(bundle) > 1 else plots
        results[folder.name] = evaluate_severity(folder, simulated, plots=folder_plots)
    typer.echo(json.dumps(results, indent=2))
    typer.echo(markdown_tables(results))
    typer.echo(
        f"(Setting 2 drops {TRANSITION_MARGIN} frames either side of a change of true score.)"
    )


def fit(
    data: Annotated[
        Path, typer.Option(help="The folder holding pocus/ (only its trainable clips are read).")
    ],
    network: Annotated[
        Path,
        typer.Option(
            help="The severity bundle whose network scores the frames.",
            show_default="models/severity",
        ),
    ] = MODELS_DIR / "severity",
    out: Annotated[
        Path, typer.Option(help="The bundle folder to write.", show_default="models/severity")
    ] = MODELS_DIR / "severity",
    cache: Annotated[Path, typer.Option(help="Folder for the clips' imports and measurements.")] = (
        Path("build/real-cache")
    ),
) -> None:
    """Fit the clip score on the real trainable clips (B-line and consolidation heads on the
    lung measurements, an ordinal head on them; stratified by source) and write it beside the
    network's frame scorer as one bundle."""
    from lus_pacs.families.severity.real_head import fit_real_severity

    done = fit_real_severity(network, data, cache, out)
    typer.echo(json.dumps(done, indent=2))
    typer.echo(f"written: {out}")


COMMANDS: dict[str, Callable[..., None]] = {"train": train, "evaluate": evaluate, "fit": fit}
