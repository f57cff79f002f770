"""``lus-pacs train segmentation`` and ``lus-pacs evaluate segmentation``.

The options only: :mod:`lus_pacs.families.segmentation.train` and
:mod:`lus_pacs.families.segmentation.evaluate` do the work and are imported when a command runs,
so that ``--help`` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Network(StrEnum):
    """The keys of :data:`lus_pacs.families.segmentation.network.SEGMENTATION_NETWORKS`."""

    unet = "unet"
    unet_plus_plus = "unet_plus_plus"
    deeplabv3_plus = "deeplabv3_plus"


def train(
    steps: Annotated[int, typer.Option(help="Batches per network.")],
    seed: Annotated[int, typer.Option(help="Random seed: weights, batches and patient folds.")],
    data: Annotated[Path | None, typer.Option(help="Output of `lus-pacs synth`.")] = None,
    labelme: Annotated[
        list[Path] | None,
        typer.Option(help="A folder of LabelMe JSON files drawn on DICOM cines; repeatable."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The bundle folder (omit to measure only).")] = (
        None
    ),
    networks: Annotated[
        list[Network] | None,
        typer.Option(
            help="An ensemble member; repeatable.",
            show_default="unet, unet_plus_plus, deeplabv3_plus",
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="Adam's initial learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Frames per batch.")] = 16,
    every: Annotated[int, typer.Option(help="Simulated: every k-th frame.")] = 5,
    folds: Annotated[int, typer.Option(help="Patient folds; the first is held out.")] = 5,
    weight_power: Annotated[
        float,
        typer.Option(
            help="Weight the cross entropy by class frequency to this power (0: plain, as the "
            "paper)."
        ),
    ] = 0.0,
    mc_samples: Annotated[
        int,
        typer.Option(
            help="Monte-Carlo dropout passes: the bundle's default (10: the error AUC of 40 "
            "passes at a quarter of the cost; `evaluate --passes`)."
        ),
    ] = 10,
    networks_from: Annotated[
        Path | None,
        typer.Option(help="Take the trained members from this bundle; only fit the class biases."),
    ] = None,
) -> None:
    """Paper 003's U-Net, U-Net++ and DeepLabv3+ on simulated masks and LabelMe polygons; writes
    the ensemble bundle."""
    if data is None and not labelme:
        raise typer.BadParameter("give --data, --labelme, or both")
    from lus_pacs.families.segmentation.evaluate import ENSEMBLE, format_table
    from lus_pacs.families.segmentation.train import train_segmentation

    result = train_segmentation(
        data,
        out,
        steps=steps,
        seed=seed,
        labelme=labelme or (),
        networks=[n.value for n in networks or Network],
        lr=lr,
        batch_size=batch_size,
        every=every,
        folds=folds,
        weight_power=weight_power,
        mc_samples=mc_samples,
        networks_from=networks_from,
    )
    typer.echo(format_table(result.rows))
    if out:
        typer.echo(f"bundle written to {out}")
    summary = {"validation": result.rows[ENSEMBLE], "training": result.training}
    typer.echo(json.dumps(summary, indent=1))


def evaluate(
    bundle: Annotated[Path, typer.Option(help="A segmentation bundle folder.")],
    data: Annotated[Path, typer.Option(help="Held-out `lus-pacs synth` output.")],
    every: Annotated[int, typer.Option(help="Evaluate every k-th frame.")] = 5,
    samples: Annotated[int, typer.Option(help="MC-dropout passes.")] = 40,
    uncertainty_frames: Annotated[int, typer.Option(help="Frames measured with MC dropout.")] = 24,
    figure: Annotated[Path | None, typer.Option(help="Write the uncertainty figure here.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the measurements here.")
    ] = None,
    passes: Annotated[
        str,
        typer.Option(
            help="Also compare the uncertainty of these numbers of passes, e.g. 40,20,10,5 "
            "(the largest is the reference)."
        ),
    ] = "",
) -> None:
    """Table IV (pixel accuracy, union Dice of scores 1-3, categorical Dice of scores 0, 2, 3)
    per network and for the ensemble, MC-dropout uncertainty at borders and inside, and the
    uncertainty figure."""
    from lus_pacs.families.segmentation.evaluate import evaluate_bundle, format_table

    measured = evaluate_bundle(
        bundle,
        data,
        every=every,
        samples=samples,
        uncertainty_frames=uncertainty_frames,
        figure=figure,
        passes=[int(n) for n in passes.split(",") if n.strip()],
    )
    result, borders = measured.result, measured.uncertainty
    typer.echo(f"{result.frames} frames of {data.name}, every {every}-th frame")
    typer.echo(format_table(result.rows))
    typer.echo(
        f"MC-dropout uncertainty ({samples} passes, {measured.uncertainty_frames} frames with "
        f"pathology), structure borders / insides: extent {borders['extent_border']:.4f} / "
        f"{borders['extent_inside']:.4f}, label {borders['label_border']:.4f} / "
        f"{borders['label_inside']:.4f}"
    )
    if measured.by_passes:
        typer.echo(
            "passes | error AUC | correlation with the most passes | s per frame | "
            "error rate by uncertainty bin (edges: the reference's 50/90/95/99th percentiles)"
        )
        for row in measured.by_passes:
            rates = " ".join(f"{r:.4f}" for r in row.error_rate_by_bin)
            typer.echo(
                f"{row.passes:6d} | {row.error_auc:.4f} | {row.agreement:.3f} | "
                f"{row.seconds_per_frame:.2f} | {rates}"
            )
    if figure:
        typer.echo(f"figure: {figure}")
    if json_path:
        doc = {"frames": result.frames, "table_iv": result.rows, "uncertainty": borders}
        json_path.write_text(json.dumps(doc, indent=1))


COMMANDS: dict[str, Callable[..., None]] = {"train": train, "evaluate": evaluate}
