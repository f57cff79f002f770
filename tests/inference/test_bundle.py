"""Loading a bundle refuses weights that are not the ones written with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lus_pacs.errors import ModelError
from lus_pacs.inference.bundle import CHECKSUM, WEIGHTS, load_bundle, weights_digest
from lus_pacs.training.bundle_files import save_weights

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(p.parent.parent for p in MODELS.glob("*/models/model.pt"))


def test_every_shipped_bundle_carries_the_checksum_of_its_weights() -> None:
    assert len(SHIPPED) == 5
    for bundle in SHIPPED:
        recorded = (bundle / CHECKSUM).read_text().split()[0]
        assert recorded == weights_digest(bundle / WEIGHTS), bundle.name


def test_weights_changed_since_they_were_written_are_refused(tmp_path: Path) -> None:
    """64 flipped bytes in the middle of model.pt loaded as a valid state dict in every
    bundle (a b_lines weight became 16552) and the node ran on."""
    bundle = tmp_path / "key_frames"
    shutil.copytree(MODELS / "key_frames", bundle)
    load_bundle(bundle)
    data = bytearray((bundle / WEIGHTS).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    (bundle / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_bundle(bundle)
    # Copied without its checksum, damaged weights were not checked at all.
    (bundle / CHECKSUM).unlink()
    with pytest.raises(ModelError, match=r"model\.pt\.sha256 is missing"):
        load_bundle(bundle)


def test_weights_that_are_not_finite_are_refused(tmp_path: Path) -> None:
    """A NaN weight in the severity head loaded, and every cine was scored 0 ("normal")."""
    bundle = tmp_path / "key_frames"
    shutil.copytree(MODELS / "key_frames", bundle)
    network = load_bundle(bundle).network
    with torch.no_grad():
        next(p for p in network.parameters() if p.is_floating_point()).view(-1)[0] = float("nan")
    save_weights(network, bundle)  # its checksum written with it: only the values are wrong
    with pytest.raises(ModelError, match="NaN or infinite"):
        load_bundle(bundle)


def test_a_checksum_not_text_or_weights_not_a_state_dict_are_model_errors(
    tmp_path: Path,
) -> None:
    """Both ended the node's start with a traceback instead of the bundle's one-line error."""
    bundle = tmp_path / "key_frames"
    shutil.copytree(MODELS / "key_frames", bundle)
    (bundle / CHECKSUM).write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ModelError, match=r"not readable"):
        load_bundle(bundle)
    torch.save(torch.nn.Linear(2, 2), bundle / WEIGHTS)  # a whole module pickled, not weights
    (bundle / CHECKSUM).write_text(f"{weights_digest(bundle / WEIGHTS)}  model.pt\n")
    with pytest.raises(ModelError, match=r"not a state dict"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("family", "key"),
    [
        ("consolidation", "threshold"),
        ("key_frames", "threshold"),
        ("key_frames", "reason_threshold"),
    ],
)
@pytest.mark.parametrize("value", [50, -0.5, "0.5", None])
def test_a_decision_threshold_missing_or_out_of_range_is_refused(
    tmp_path: Path, family: str, key: str, value: object
) -> None:
    """Consolidation loaded with threshold 50 (never positive) or -0.5 (always), and without
    one ran on 0.5; the key-frame model with 5 called every cine poor."""
    import json

    from lus_pacs.families.consolidation.inference import ConsolidationModel
    from lus_pacs.families.key_frames.inference import KeyFrameModel

    bundle = tmp_path / family
    shutil.copytree(MODELS / family, bundle)
    config = bundle / "configs" / "inference.json"
    values = json.loads(config.read_text())
    if value is None:
        del values[key]
    else:
        values[key] = value
    config.write_text(json.dumps(values))
    load = ConsolidationModel.load if family == "consolidation" else KeyFrameModel.load
    with pytest.raises(ModelError, match=key):
        load(bundle)


@pytest.mark.parametrize(
    "network_def",
    [
        # A prefix check let a function reached through a module of the package through...
        {"_target_": "lus_pacs.families.key_frames.network.torch.save", "obj": 1, "f": "{out}"},
        # ... and MONAI's parser ran an expression, both before any check of what was built.
        {
            "_target_": "lus_pacs.families.key_frames.network.KeyFrameNet",
            "channels": "$__import__('pathlib').Path('{out}').write_text('ran') and 8",
        },
        {  # a nested one too (under a top-level class of the package)
            "_target_": "lus_pacs.families.b_lines.network.MeasuredBLines",
            "localiser": {"_target_": "lus_pacs.families.b_lines.network.torch.nn.Identity"},
            "head": {
                "_target_": "lus_pacs.families.key_frames.network.torch.save",
                "obj": 1,
                "f": "{out}",
            },
        },
    ],
)
def test_a_bundle_config_runs_no_code_of_its_own(
    tmp_path: Path, network_def: dict[str, object]
) -> None:
    out = tmp_path / "ran"
    bundle = tmp_path / "key_frames"
    shutil.copytree(MODELS / "key_frames", bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"] = json.loads(json.dumps(network_def).replace("{out}", str(out)))
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError):
        load_bundle(bundle)
    assert not out.exists()
