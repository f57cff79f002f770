"""Paper 002 end to end: self-supervised pre-training, the four downstream classifiers over
label fractions, the ablation without temporal augmentations, and the bundle.

Commands::

    lus-pacs pretrain consolidation --unlabeled SIM_DIR [DICOM_DIR ...] [--pocus DIR]
        [--method byol|simclr] [--no-temporal] --steps N --seed S --out ENCODER.pt
    lus-pacs train consolidation --data SIM_DIR --encoder ENCODER.pt [--pocus DIR]
        [--ablation-encoder ENCODER_NO_TEMPORAL.pt] [--sweep] --steps N --seed S
        [--out models/consolidation]

Pre-training saves a checkpoint every ``--checkpoint-every`` steps and resumes from it when the
same command is run again. Training splits the simulated patients (and the POCUS publishers)
into folds and holds the first out; ``--sweep`` trains the paper's four variants on 5, 10, 30,
50 and 100 % of the training labels and writes the tables and Fig. 3's plot.

Variants (the paper's section 3.4): ``ssl_frozen`` (pre-trained encoder fixed, linear head
trained: "SSL feature extractor"), ``ssl_finetune`` (both trained), ``supervised`` (random
initialisation, both trained: "fully supervised"), ``random_frozen`` (random encoder fixed,
head trained).
"""

from __future__ import annotations

import argparse
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
from lus_pacs.families.consolidation.network import BYOL, ConsolidationClassifier, Darknet3D, SimCLR
from lus_pacs.training.metrics import roc_auc
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


@torch.no_grad()
def predict(model: ConsolidationClassifier, sources: Sequence[ClipSource]) -> np.ndarray:
    """Probability of consolidation per clip: one centred clip of evenly spaced frames."""
    model.eval()
    out = []
    for start in range(0, len(sources), 32):
        clips = torch.stack(
            [clip_tensor(s.frames, frame_indices(s.n_frames)) for s in sources[start : start + 32]]
        )
        out.append(torch.sigmoid(model(clips)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def scores(model: ConsolidationClassifier, sources: Sequence[ClipSource]) -> dict[str, float]:
    """Accuracy (threshold 0.5), sensitivity, specificity and AUC on the labelled sources."""
    labelled = [s for s in sources if s.label is not None]
    labels = np.array([bool(s.label) for s in labelled])
    probs = predict(model, labelled)
    chosen = probs >= 0.5
    tp, tn = int((chosen & labels).sum()), int((~chosen & ~labels).sum())
    return {
        "n": len(labelled),
        "accuracy": float((chosen == labels).mean()) if len(labels) else float("nan"),
        "sensitivity": tp / max(1, int(labels.sum())),
        "specificity": tn / max(1, int((~labels).sum())),
        "auc": roc_auc(probs, labels),
    }


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


def sweep_table(rows: Sequence[dict[str, Any]], test: str) -> str:
    """Markdown: one row per variant (and pre-training), AUC / accuracy per label fraction."""
    fractions = sorted({r["fraction"] for r in rows})
    head = "| variant | " + " | ".join(f"{100 * f:g} %" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for variant, pretraining in sorted({(r["variant"], r["pretraining"]) for r in rows}):
        cells = []
        for f in fractions:
            match = [
                r
                for r in rows
                if r["test"] == test
                and r["variant"] == variant
                and r["pretraining"] == pretraining
                and r["fraction"] == f
            ]
            cells.append(f"{match[0]['auc']:.2f} / {match[0]['accuracy']:.2f}" if match else "-")
        name = variant if pretraining in ("none", "byol") else f"{variant} ({pretraining})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path, test: str) -> None:
    """The paper's Fig. 3: accuracy and AUC against the label fraction, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    lines = sorted({(r["variant"], r["pretraining"]) for r in rows if r["test"] == test})
    for variant, pretraining in lines:
        chosen = sorted(
            (
                r
                for r in rows
                if r["test"] == test and r["variant"] == variant and r["pretraining"] == pretraining
            ),
            key=lambda r: r["fraction"],
        )
        label = variant if pretraining in ("none", "byol") else f"{variant} ({pretraining})"
        style = "--" if pretraining.endswith("no_temporal") else "-"
        for ax, key in zip(axes, ("accuracy", "auc"), strict=True):
            ax.plot(
                [100 * r["fraction"] for r in chosen],
                [r[key] for r in chosen],
                style,
                marker="o",
                label=label,
            )
    for ax, key in zip(axes, ("accuracy", "AUC"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 30, 50, 100], ["5", "10", "30", "50", "100"])
        ax.set_xlabel("labelled training clips (%)")
        ax.set_ylabel(key)
        ax.set_ylim(0.4, 1.0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Consolidation, held-out {test} (research software, simulated data)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def box_scores(
    model: ConsolidationClassifier, sources: Sequence[ClipSource], frames: int = 2
) -> dict[str, float]:
    """Weighted IoU of the saliency boxes against the true boxes, on the ``frames`` most
    salient clip frames of every held-out cine that has a consolidation (clip pixels), and the
    hit rate: the share of those frames on which a box overlaps a true box."""
    from lus_pacs.families.consolidation.inference import boxes_of, iou, saliency, weighted_iou

    values = []
    hits = []
    for source in sources:
        if not source.label or not source.boxes:
            continue
        indices = frame_indices(source.n_frames)
        maps = saliency(model, clip_tensor(source.frames, indices))
        strongest = np.argsort(-maps.reshape(len(indices), -1).max(axis=1))[:frames]
        for t in strongest:
            truth = source.boxes.get(int(indices[t]), ())
            found = boxes_of(maps[t])
            values.append(weighted_iou(found, truth))
            hits.append(any(iou(b, true) > 0 for b in found for true in truth))
    return {
        "frames": len(values),
        "weighted_iou": float(np.mean(values)) if values else float("nan"),
        "hit_rate": float(np.mean(hits)) if hits else float("nan"),
    }


def box_figure(
    model: ConsolidationClassifier, sources: Sequence[ClipSource], path: Path, count: int = 4
) -> None:
    """Frames of held-out cines with a consolidation: true boxes green, saliency boxes red."""
    from PIL import Image, ImageDraw

    from lus_pacs.families.consolidation.inference import boxes_of, saliency

    chosen = [s for s in sources if s.label and s.boxes][:count]
    scale = 4
    tiles = []
    for source in chosen:
        indices = frame_indices(source.n_frames)
        maps = saliency(model, clip_tensor(source.frames, indices))
        t = int(np.argmax(maps.reshape(len(indices), -1).max(axis=1)))
        frame = source.frames[int(indices[t])]
        tile = (
            Image.fromarray(frame)
            .convert("RGB")
            .resize((frame.shape[1] * scale, frame.shape[0] * scale))
        )
        draw = ImageDraw.Draw(tile)
        for x0, y0, x1, y1 in source.boxes.get(int(indices[t]), ()):
            draw.rectangle(
                (x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1),
                outline=(0, 200, 0),
                width=2,
            )
        for x0, y0, x1, y1 in boxes_of(maps[t]):
            draw.rectangle(
                (x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1),
                outline=(230, 30, 30),
                width=2,
            )
        draw.text((4, 4), f"{source.name} frame {int(indices[t]) + 1}", fill=(255, 255, 0))
        tiles.append(tile)
    if not tiles:
        return
    width = sum(t.width for t in tiles)
    figure = Image.new("RGB", (width, tiles[0].height), "black")
    x = 0
    for tile in tiles:
        figure.paste(tile, (x, 0))
        x += tile.width
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)


def held_out(
    sources: Sequence[ClipSource], folds: int, seed: int
) -> tuple[list[ClipSource], list[ClipSource]]:
    """(train, test): the first of ``folds`` group folds held out."""
    split = split_by_group(list(sources), lambda s: s.group, folds, seed)
    test = split[0]
    train = [s for fold in split[1:] for s in fold]
    return train, test


# Commands


def pretrain_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Self-supervised pre-training (paper 002)")
    parser.add_argument(
        "--unlabeled", type=Path, nargs="+", required=True, help="simulated exams or DICOM folders"
    )
    parser.add_argument("--pocus", type=Path, help="the POCUS clips (labels unused)")
    parser.add_argument("--pocus-cache", type=Path, default=Path("build/pocus-cache"))
    parser.add_argument("--method", choices=("byol", "simclr"), default="byol")
    parser.add_argument("--no-temporal", action="store_true", help="the ablation")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint (resumed if present)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument(
        "--folds", type=int, default=5, help="simulated patients of the held-out fold are left out"
    )
    args = parser.parse_args(argv)
    sources = _unlabeled(args.unlabeled, args.folds, args.seed)
    if args.pocus is not None:
        pocus = pocus_clips(args.pocus, args.pocus_cache)
        sources += held_out(pocus, args.folds, args.seed)[0]
    recipe = PretrainRecipe(
        args.method, args.steps, args.batch_size, 3e-4, not args.no_temporal, args.seed
    )
    start = time.perf_counter()
    pretrain(sources, recipe, args.out, args.checkpoint_every)
    seconds = time.perf_counter() - start
    print(f"{len(sources)} clips, {args.steps} steps in {seconds:.0f} s -> {args.out}")


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


def train_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Consolidation classifier (paper 002)")
    parser.add_argument("--data", type=Path, required=True, help="output of `lus-pacs synth`")
    parser.add_argument(
        "--scored",
        type=Path,
        help="simulated exams with the default scored scenes: its held-out patients are a "
        "further test set (train with --data from `synth --decouple-consolidation`)",
    )
    parser.add_argument("--encoder", type=Path, required=True, help="a pre-training checkpoint")
    parser.add_argument(
        "--ablation-encoder", type=Path, help="pre-trained without temporal augmentations"
    )
    parser.add_argument("--pocus", type=Path)
    parser.add_argument("--pocus-cache", type=Path, default=Path("build/pocus-cache"))
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--sweep", action="store_true", help="the four variants over label fractions"
    )
    parser.add_argument("--sweep-steps", type=int, help="steps per sweep model (default --steps)")
    parser.add_argument("--out", type=Path, help="the bundle folder")
    parser.add_argument("--figures", type=Path, help="where the sweep plot and tables go")
    args = parser.parse_args(argv)

    train, test = held_out(simulated_clips(args.data), args.folds, args.seed)
    tests: dict[str, Sequence[ClipSource]] = {"simulated": test}
    if args.scored is not None:
        tests["simulated_scored"] = held_out(simulated_clips(args.scored), args.folds, args.seed)[1]
    if args.pocus is not None:
        pocus_train, pocus_test = held_out(
            pocus_clips(args.pocus, args.pocus_cache), args.folds, args.seed
        )
        train = [*train, *pocus_train]
        tests["pocus"] = pocus_test
    encoders = {"byol": encoder_state(args.encoder)}
    if args.ablation_encoder is not None:
        encoders["byol_no_temporal"] = encoder_state(args.ablation_encoder)
    start = time.perf_counter()
    model = train_classifier(
        train, encoders["byol"], "ssl_finetune", steps=args.steps, seed=args.seed, progress=True
    )
    held: dict[str, dict[str, float]] = {name: scores(model, t) for name, t in tests.items()}
    held["simulated_boxes"] = box_scores(model, tests["simulated"])
    if "simulated_scored" in tests:
        held["simulated_scored_boxes"] = box_scores(model, tests["simulated_scored"])
    print(json.dumps({"held_out": held, "seconds": round(time.perf_counter() - start)}, indent=1))
    figures = args.figures or (args.out / "docs" if args.out else Path("build/consolidation"))
    box_figure(model, tests["simulated"], figures / "saliency_boxes.png")
    rows: list[dict[str, Any]] = []
    if args.sweep:
        rows = sweep(train, tests, encoders, steps=args.sweep_steps or args.steps, seed=args.seed)
        figures.mkdir(parents=True, exist_ok=True)
        (figures / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
        for name in tests:
            plot_sweep(rows, figures / f"label_fractions_{name}.png", name)
            table = sweep_table(rows, name)
            (figures / f"label_fractions_{name}.md").write_text(table + "\n")
            print(f"held-out {name}, AUC / accuracy:\n{table}")
    if args.out is not None:
        from lus_pacs.families.consolidation.bundle import write_consolidation_bundle

        write_consolidation_bundle(
            args.out,
            model,
            held,
            {
                "steps": args.steps,
                "seed": args.seed,
                "train_clips": len(train),
                "variant": "ssl_finetune",
                "sweep_rows": len(rows),
                "sweep_steps": args.sweep_steps or args.steps,
                "pretraining": "BYOL, 1000 steps of 16 clips, simulated and POCUS training clips",
            },
        )
