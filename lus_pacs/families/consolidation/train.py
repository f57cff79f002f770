"""Paper 002 end to end: self-supervised pre-training, the four downstream classifiers over
label fractions, the ablation without temporal augmentations, and the bundle.

Commands::

    lus-pacs pretrain consolidation --unlabeled SIM_DIR [--unlabeled DICOM_DIR ...] [--pocus DIR]
        [--method byol|simclr] [--no-temporal] --steps N --seed S --out ENCODER.pt
    lus-pacs train consolidation --data SIM_DIR --encoder ENCODER.pt [--pocus DIR]
        [--ablation-encoder ENCODER_NO_TEMPORAL.pt] [--sweep] --steps N --seed S
        [--out models/consolidation]

Pre-training saves a checkpoint every ``--checkpoint-every`` steps and resumes from it when the
same command is run again. Training splits the simulated patients (and the POCUS publishers)
into folds and holds the first out; ``--sweep`` trains the paper's four variants on 5, 10, 30,
50 and 100 % of the training labels and writes the tables and Fig. 3's plot. The measurements
are those of :mod:`lus_pacs.families.consolidation.evaluate`.

Variants (the paper's section 3.4): ``ssl_frozen`` (pre-trained encoder fixed, linear head
trained: "SSL feature extractor"), ``ssl_finetune`` (both trained), ``supervised`` (random
initialisation, both trained: "fully supervised"), ``random_frozen`` (random encoder fixed,
head trained).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lus_pacs.families.consolidation.clips import clip_tensor, frame_indices
from lus_pacs.families.consolidation.data import (
    ClipSource,
    augmentation,
    batch,
    pocus_clips,
    simulated_clips,
)
from lus_pacs.families.consolidation.evaluate import (
    box_figure,
    box_scores,
    plot_sweep,
    scores,
    sweep_table,
)
from lus_pacs.families.consolidation.network import BYOL, ConsolidationClassifier, Darknet3D, SimCLR
from lus_pacs.training.seeding import deterministic
from lus_pacs.training.splits import split_by_group

VARIANTS: dict[str, tuple[bool, bool]] = {
    "ssl_frozen": (True, False),
    "ssl_finetune": (True, True),
    "supervised": (False, True),
    "random_frozen": (False, False),
}
"""Variant -> (encoder pre-trained, encoder trained with the head)."""
FRACTIONS = (0.05, 0.1, 0.3, 0.5, 1.0)


# Pre-training


@dataclass(frozen=True)
class PretrainRecipe:
    method: str = "byol"
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-4
    temporal: bool = True
    seed: int = 0


def pretrain(
    sources: Sequence[ClipSource],
    recipe: PretrainRecipe,
    checkpoint: Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Self-supervised pre-training of a :class:`Darknet3D` on ``sources`` (labels unused);
    returns the encoder's state dict. With ``checkpoint``, resumes from it when it holds the
    same recipe and saves to it as it goes."""
    if not sources:
        raise ValueError("no unlabeled clips to pre-train on")
    with deterministic(recipe.seed):
        encoder = Darknet3D()
        learner: BYOL | SimCLR = BYOL(encoder) if recipe.method == "byol" else SimCLR(encoder)
        optimiser = torch.optim.Adam(
            [p for p in learner.parameters() if p.requires_grad], lr=recipe.lr
        )
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["recipe"] == recipe.__dict__:
            learner.load_state_dict(state["learner"])
            optimiser.load_state_dict(state["optimiser"])
            start = int(state["step"])
    rng = np.random.default_rng(recipe.seed + start)
    transform = augmentation(temporal=recipe.temporal, seed=recipe.seed + start)
    learner.train()
    bar = tqdm(range(start, recipe.steps), desc=f"pretrain {recipe.method}", disable=not progress)
    for step in bar:
        view1, chosen = batch(sources, rng, recipe.batch_size, transform)
        view2 = torch.stack(
            [
                torch.as_tensor(transform(clip_tensor(s.frames, frame_indices(s.n_frames, rng))))
                for s in chosen
            ]
        )
        loss = learner.loss(view1, view2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        learner.update_target()
        bar.set_postfix(loss=f"{float(loss):.3f}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            _save_checkpoint(checkpoint, learner, optimiser, recipe, step + 1)
    if checkpoint is not None:
        _save_checkpoint(checkpoint, learner, optimiser, recipe, recipe.steps)
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def _save_checkpoint(
    path: Path,
    learner: nn.Module,
    optimiser: torch.optim.Optimizer,
    recipe: PretrainRecipe,
    step: int,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "learner": learner.state_dict(),
            "optimiser": optimiser.state_dict(),
            "recipe": recipe.__dict__,
            "step": step,
        },
        partial,
    )
    partial.replace(path)


def encoder_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The online encoder's weights from a pre-training checkpoint."""
    state = torch.load(checkpoint, weights_only=False)
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in state["learner"].items() if k.startswith(prefix)}


# Downstream


def train_classifier(
    train: Sequence[ClipSource],
    encoder: dict[str, torch.Tensor] | None,
    variant: str,
    *,
    steps: int = 300,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> ConsolidationClassifier:
    """One downstream classifier on the labelled ``train`` clips (augmented spatially)."""
    pretrained, trainable = VARIANTS[variant]
    labelled = [s for s in train if s.label is not None]
    if not labelled:
        raise ValueError("no labelled clips to train on")
    with deterministic(seed):
        model = ConsolidationClassifier(Darknet3D())
    if pretrained:
        if encoder is None:
            raise ValueError(f"variant {variant} needs a pre-trained encoder")
        model.encoder.load_state_dict(encoder)
    for p in model.encoder.parameters():
        p.requires_grad_(trainable)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(parameters, lr=1e-3 if not trainable else 3e-4)
    positives = sum(bool(s.label) for s in labelled)
    weight = torch.tensor((len(labelled) - positives) / max(1, positives))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    rng = np.random.default_rng(seed)
    transform = augmentation(temporal=False, seed=seed)
    for _ in tqdm(range(steps), desc=f"train {variant}", disable=not progress):
        model.train()
        if not trainable:
            model.encoder.eval()  # frozen: its batch-norm statistics stay those learned
        clips, chosen = batch(labelled, rng, batch_size, transform)
        labels = torch.tensor([float(bool(s.label)) for s in chosen])
        loss = loss_fn(model(clips), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def label_fraction(train: Sequence[ClipSource], fraction: float, seed: int) -> list[ClipSource]:
    """A random ``fraction`` of the labelled training clips, at least two of each class."""
    labelled = [s for s in train if s.label is not None]
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(labelled)))
    n = max(4, round(fraction * len(labelled)))
    chosen = [labelled[i] for i in order[:n]]
    for value in (True, False):  # both classes, or the classifier learns a constant
        if sum(s.label is value for s in chosen) < 2:
            extra = [labelled[i] for i in order[n:] if labelled[i].label is value][:2]
            chosen.extend(extra)
    return chosen


def sweep(
    train: Sequence[ClipSource],
    tests: dict[str, Sequence[ClipSource]],
    encoders: dict[str, dict[str, torch.Tensor]],
    *,
    steps: int,
    seed: int,
    fractions: Sequence[float] = FRACTIONS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every variant on every label fraction, scored on each test set. ``encoders`` maps a
    pre-training name (``byol``, ``byol_no_temporal``) to its encoder; the SSL variants run
    once per encoder, the others once."""
    rows = []
    jobs = [
        (fraction, variant, name)
        for fraction in fractions
        for variant, (pretrained, _) in VARIANTS.items()
        for name in (encoders if pretrained else ["none"])
    ]
    for fraction, variant, name in tqdm(jobs, desc="sweep", disable=not progress):
        subset = label_fraction(train, fraction, seed)
        model = train_classifier(subset, encoders.get(name), variant, steps=steps, seed=seed)
        for test_name, test in tests.items():
            rows.append(
                {
                    "fraction": fraction,
                    "variant": variant,
                    "pretraining": name,
                    "labels": len(subset),
                    "test": test_name,
                    **scores(model, test),
                }
            )
    return rows


def held_out(
    sources: Sequence[ClipSource], folds: int, seed: int
) -> tuple[list[ClipSource], list[ClipSource]]:
    """(train, test): the first of ``folds`` group folds held out."""
    split = split_by_group(list(sources), lambda s: s.group, folds, seed)
    test = split[0]
    train = [s for fold in split[1:] for s in fold]
    return train, test


def _unlabeled(roots: Sequence[Path], folds: int, seed: int) -> list[ClipSource]:
    """Simulated exams (their held-out patients left out, so held-out scores stay honest) and
    any other DICOM cines under the given folders."""
    from lus_pacs.families.consolidation.data import dicom_clips

    out: list[ClipSource] = []
    for root in roots:
        if any(root.glob("*/*.truth.json")):
            out += held_out(simulated_clips(root), folds, seed)[0]
        else:
            out += dicom_clips(sorted(root.rglob("*.dcm")))
    return out


# Whole runs


@dataclass(frozen=True)
class Pretraining:
    """What :func:`pretrain_encoder` did."""

    clips: int
    seconds: float
    """Of the pre-training itself, without loading the clips."""


def pretrain_encoder(
    unlabeled: Sequence[Path],
    out: Path,
    *,
    steps: int,
    seed: int,
    pocus: Path | None = None,
    pocus_cache: Path = Path("build/pocus-cache"),
    method: str = "byol",
    temporal: bool = True,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    folds: int = 5,
) -> Pretraining:
    """Self-supervised pre-training on unlabeled cines, resumable from the checkpoint ``out``.

    Parameters
    ----------
    unlabeled:
        Simulated exams (the patients of their held-out fold left out) or folders of DICOM
        cines.
    out:
        The checkpoint: resumed when present with the same recipe, saved every
        ``checkpoint_every`` steps; :func:`encoder_state` reads the encoder from it.
    steps, seed, method, batch_size:
        The :class:`PretrainRecipe` (Adam lr 3e-4).
    pocus, pocus_cache:
        The POCUS clips (labels unused; the held-out publishers left out) and the folder their
        DICOM imports are cached in.
    temporal:
        False for the ablation without temporal augmentations.
    folds:
        Patient (and publisher) folds; the first is held out.
    """
    sources = _unlabeled(unlabeled, folds, seed)
    if pocus is not None:
        sources += held_out(pocus_clips(pocus, pocus_cache), folds, seed)[0]
    recipe = PretrainRecipe(method, steps, batch_size, 3e-4, temporal, seed)
    start = time.perf_counter()
    pretrain(sources, recipe, out, checkpoint_every)
    return Pretraining(len(sources), time.perf_counter() - start)


@dataclass(frozen=True)
class ConsolidationTraining:
    """What :func:`train_consolidation` measured."""

    held_out: dict[str, dict[str, float]]
    """Scores of the shipped classifier on each held-out test set, and its box scores."""
    seconds: float
    """Of the shipped classifier's training and scoring."""
    tables: dict[str, str]
    """With the sweep: per test set, the label-fraction table (AUC / accuracy)."""


def train_consolidation(
    data: Path,
    encoder: Path,
    *,
    steps: int,
    seed: int,
    scored: Path | None = None,
    ablation_encoder: Path | None = None,
    pocus: Path | None = None,
    pocus_cache: Path = Path("build/pocus-cache"),
    folds: int = 5,
    with_sweep: bool = False,
    sweep_steps: int | None = None,
    out: Path | None = None,
    figures: Path | None = None,
) -> ConsolidationTraining:
    """The classifier on a pre-trained encoder (``ssl_finetune``), scored on held-out patients
    and publishers; the saliency-box figure; with ``with_sweep`` the four variants over label
    fractions; the bundle.

    Parameters
    ----------
    data:
        Simulated exams, the first of ``folds`` patient folds held out.
    encoder, ablation_encoder:
        Pre-training checkpoints (:func:`pretrain_encoder`), the second without temporal
        augmentations (sweep only).
    steps, seed:
        Training steps of the classifier, and the seed of everything.
    scored:
        Simulated exams with the default scored scenes: their held-out patients are a further
        test set (train on ``data`` from ``synth --decouple-consolidation``).
    pocus, pocus_cache:
        The POCUS clips, their publishers dealt into the folds, and their DICOM import cache.
    sweep_steps:
        Steps per sweep model; ``steps`` when None.
    out:
        The bundle folder; None to measure only.
    figures:
        Where the box figure and the sweep's plots, tables and rows go; default ``out/docs``,
        or ``build/consolidation`` without ``out``.
    """
    train, test = held_out(simulated_clips(data), folds, seed)
    tests: dict[str, Sequence[ClipSource]] = {"simulated": test}
    if scored is not None:
        tests["simulated_scored"] = held_out(simulated_clips(scored), folds, seed)[1]
    if pocus is not None:
        pocus_train, pocus_test = held_out(pocus_clips(pocus, pocus_cache), folds, seed)
        train = [*train, *pocus_train]
        tests["pocus"] = pocus_test
    encoders = {"byol": encoder_state(encoder)}
    if ablation_encoder is not None:
        encoders["byol_no_temporal"] = encoder_state(ablation_encoder)
    start = time.perf_counter()
    model = train_classifier(
        train, encoders["byol"], "ssl_finetune", steps=steps, seed=seed, progress=True
    )
    held: dict[str, dict[str, float]] = {name: scores(model, t) for name, t in tests.items()}
    held["simulated_boxes"] = box_scores(model, tests["simulated"])
    if "simulated_scored" in tests:
        held["simulated_scored_boxes"] = box_scores(model, tests["simulated_scored"])
    seconds = time.perf_counter() - start
    figures = figures or (out / "docs" if out else Path("build/consolidation"))
    box_figure(model, tests["simulated"], figures / "saliency_boxes.png")
    rows: list[dict[str, Any]] = []
    tables: dict[str, str] = {}
    if with_sweep:
        rows = sweep(train, tests, encoders, steps=sweep_steps or steps, seed=seed)
        figures.mkdir(parents=True, exist_ok=True)
        (figures / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
        for name in tests:
            plot_sweep(rows, figures / f"label_fractions_{name}.png", name)
            tables[name] = sweep_table(rows, name)
            (figures / f"label_fractions_{name}.md").write_text(tables[name] + "\n")
    if out is not None:
        from lus_pacs.families.consolidation.bundle import write_consolidation_bundle

        write_consolidation_bundle(
            out,
            model,
            held,
            {
                "steps": steps,
                "seed": seed,
                "train_clips": len(train),
                "variant": "ssl_finetune",
                "sweep_rows": len(rows),
                "sweep_steps": sweep_steps or steps,
                "pretraining": "BYOL, 1000 steps of 16 clips, simulated and POCUS training clips",
            },
        )
    return ConsolidationTraining(held, seconds, tables)
