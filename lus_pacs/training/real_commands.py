"""``lus-pacs evaluate real`` and ``lus-pacs evaluate simulator``: the options only;
:mod:`lus_pacs.training.real_evaluation` and :mod:`lus_pacs.training.realism` do the work and are
imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate_real(
    data: Annotated[
        Path,
        typer.Option(
            help="The folder holding pocus/ (trainable) and pocus-extra/ (evaluation only)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where real.md and the plots go.")] = Path(
        "build/real-evaluation"
    ),
    cache: Annotated[
        Path, typer.Option(help="Folder for the clips' DICOM imports and measurements.")
    ] = Path("build/real-cache"),
    rounds: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
    shipped: Annotated[
        bool, typer.Option(help="Also run the shipped bundles on every clip (minutes).")
    ] = True,
    config: Annotated[
        Path | None, typer.Option(help="A settings file (TOML); the embedded defaults otherwise.")
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this family's shipped bundle (b_lines, consolidation, severity, "
            "segmentation); repeatable; all by default.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Every family's clip-level findings on real clips, with 95 % bootstrap intervals:
    leave-source-out on the trainable clips, and the shipped bundles on the trainable and the
    evaluation-only clips. Prints the table and writes it with ROC, calibration and confusion
    plots."""
    import logging

    from lus_pacs.settings import load_settings
    from lus_pacs.training.real_evaluation import evaluate_real as run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings(config)
    result = run(
        data, cache, out, settings=settings, rounds=rounds, shipped=shipped, families=family
    )
    for name, reason in result.refused:
        typer.echo(f"not read: {name}: {reason}", err=True)
    typer.echo(result.table)
    typer.echo(f"written: {out / 'real.md'} and plots")


def evaluate_simulator(
    simulated: Annotated[Path, typer.Option(help="Output of `lus-pacs synth`.")],
    data: Annotated[
        Path,
        typer.Option(help="The folder holding pocus/ (only its trainable clips are compared)."),
    ],
    out: Annotated[Path, typer.Option(help="Where realism.md goes.")] = Path(
        "build/simulator-realism"
    ),
    cache: Annotated[
        Path, typer.Option(help="Folder for the clips' DICOM imports and measurements.")
    ] = Path("build/real-cache"),
) -> None:
    """How far the simulated cines sit from the trainable real clips on each lung measurement:
    the shift of their mean in real standard deviations, the share inside the real 5-95 % range
    and the ratio of spreads, largest shift first. Prints the table and writes realism.md."""
    import logging

    from lus_pacs.training.realism import evaluate_simulator as run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _, table = run(simulated, data, cache, out)
    typer.echo(table)
    typer.echo(f"written: {out / 'realism.md'}")
