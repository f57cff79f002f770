"""ONNX Runtime against eager PyTorch (the reference): the compiled shipped networks agree within
``TOLERANCE``, and the node's findings on a simulated exam are the same on both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lus_pacs.domain import Findings, SegmentationFindings
from lus_pacs.families.key_frames.inference import KeyFrameModel, frame_images, to_input
from lus_pacs.families.segmentation.inference import SegmentationModel
from lus_pacs.families.segmentation.network import (
    SEGMENTATION_NETWORKS,
    ensemble_parts,
    monte_carlo,
    split,
)
from lus_pacs.families.severity.inference import SeverityModel
from lus_pacs.imaging.decode import read_cine
from lus_pacs.inference.runtime import (
    TOLERANCE,
    FixedAdaptivePool,
    Runtime,
    compile_module,
    differences,
    exportable,
)
from lus_pacs.inference.transforms import severity_frames
from lus_pacs.pipeline import Models, analyse
from lus_pacs.settings import SegmentationSettings, Settings

MODELS = Settings().models_dir


@pytest.fixture(scope="module")
def cine_path(synth_exams: Path) -> Path:
    return sorted(synth_exams.glob("*/*.dcm"))[1]


def test_a_fixed_pool_is_the_adaptive_pool_it_replaces() -> None:
    x = torch.arange(2 * 3 * 13 * 10, dtype=torch.float32).reshape(2, 3, 13, 10)
    torch.testing.assert_close(FixedAdaptivePool((13, 10), (4, 4))(x), nn.AdaptiveAvgPool2d(4)(x))
    # bin 0 of 4 over 10 columns spans columns 0-2 (floor(0) to ceil(2.5)): a hand value
    row = torch.arange(10.0).view(1, 1, 1, 10)
    assert float(FixedAdaptivePool((1, 10), (1, 4))(row)[0, 0, 0, 0]) == 1.0


def test_only_pools_onnx_cannot_express_are_replaced() -> None:
    divisible = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(4))
    assert exportable(divisible, [torch.zeros(1, 1, 16, 16)]) is divisible
    awkward = exportable(divisible, [torch.zeros(1, 1, 13, 10)])
    assert isinstance(awkward.get_submodule("1"), FixedAdaptivePool)
    assert isinstance(divisible[1], nn.AdaptiveAvgPool2d)  # the original is left as it was


@pytest.mark.parametrize("name", sorted(SEGMENTATION_NETWORKS))
def test_a_split_network_is_the_whole_network(name: str) -> None:
    torch.manual_seed(0)
    network = SEGMENTATION_NETWORKS[name]().eval()
    x = torch.randn(2, 1, 200, 260)
    with torch.inference_mode():
        whole = network(x)
        parts = split(network).decode(split(network).encode(x), x.shape[-2:])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)


def test_monte_carlo_masks_come_from_the_generator_and_a_rate_of_zero_is_the_plain_pass() -> None:
    torch.manual_seed(0)
    members = [SEGMENTATION_NETWORKS[n](dropout=0.0) for n in sorted(SEGMENTATION_NETWORKS)]
    x = torch.randn(1, 1, 60, 80)
    trunk, tail = ensemble_parts(members, x)
    with torch.inference_mode():
        plain, mean, std = monte_carlo(trunk, tail, tail.counts, [0.0] * 3, x, 3)
        expected = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(dim=0)
        torch.testing.assert_close(plain, expected, rtol=0, atol=1e-6)
        assert mean is not None
        assert std is not None
        torch.testing.assert_close(mean, plain, rtol=0, atol=1e-6)
        assert float(std.max()) < 1e-6
        rates = [0.5] * 3
        runs = [
            monte_carlo(trunk, tail, tail.counts, rates, x, 4, torch.Generator().manual_seed(s))
            for s in (7, 7, 8)
        ]
    assert runs[0][2] is not None
    assert runs[2][2] is not None
    torch.testing.assert_close(runs[0][2], runs[1][2], rtol=0, atol=0)
    assert not torch.equal(runs[0][2], runs[2][2])
    assert float(runs[0][2].max()) > 0


def test_every_compiled_network_agrees_with_eager_pytorch(cine_path: Path) -> None:
    cine = read_cine(cine_path)
    eager = KeyFrameModel.load(MODELS / "key_frames", Runtime.TORCH)
    onnx = KeyFrameModel.load(MODELS / "key_frames", Runtime.ONNX)
    x = to_input(frame_images(cine)[:8])
    gap = (eager.compiled(x)[0] - onnx.compiled(x)[0]).abs().max()
    assert float(gap) <= TOLERANCE

    frames = severity_frames(cine)[:8]
    severity = [SeverityModel.load(MODELS / "severity", r) for r in Runtime]
    for u, v in zip(severity[0]._scorer(frames), severity[1]._scorer(frames), strict=True):
        assert float((u - v).abs().max()) <= TOLERANCE

    segmentation = [SegmentationModel.load(MODELS / "segmentation", 6, r) for r in Runtime]
    out = [m.probabilities(frames[:1], torch.Generator().manual_seed(3)) for m in segmentation]
    for a, b in zip(out[0], out[1], strict=True):
        assert a is not None
        assert b is not None
        assert float((a - b).abs().max()) <= TOLERANCE
    assert out[0][1] is not None
    assert float(out[0][1].max()) > 0


def test_a_module_onnx_cannot_export_is_a_model_error_that_names_the_fallback() -> None:
    class Unexportable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(x).real  # no ONNX operator

    from lus_pacs.errors import ModelError

    with pytest.raises(ModelError, match="runtime = 'torch'"):
        compile_module(Unexportable(), [torch.eye(3)[None]], Runtime.ONNX)


def test_the_findings_are_the_same_on_both_runtimes(synth_exams: Path) -> None:
    """Every default family on three cines of the acceptance exam (a third of each cine's
    segmentation passes are enough to compare the runtimes)."""
    from lus_pacs.imaging.decode import read_header

    cines = sorted(synth_exams.glob("*/*.dcm"))[:3]
    findings: dict[Runtime, list[Findings]] = {}
    for runtime in Runtime:
        settings = Settings(runtime=runtime.value, segmentation=SegmentationSettings(mc_samples=4))
        models = Models.load(settings)
        findings[runtime] = []
        for path in cines:
            header, pixels = read_header(path)
            findings[runtime].append(analyse(header, path.name, models, settings, pixels))
    for eager, onnx in zip(findings[Runtime.TORCH], findings[Runtime.ONNX], strict=True):
        assert differences(eager, onnx) == []
        segmented = onnx.by_family["segmentation"]
        assert isinstance(segmented, SegmentationFindings)
        assert segmented.uncertainty is not None
        assert float(np.max(segmented.uncertainty)) > 0


def test_differences_name_what_differs() -> None:
    a = {"score": 2, "p": (0.5, 0.25), "mask": np.array([[1, 2]], np.uint8)}
    b = {"score": 2, "p": (0.5 + 1e-6, 0.25), "mask": np.array([[1, 2]], np.uint8)}
    assert differences(a, b) == []
    c = {"score": 3, "p": (0.6, 0.25), "mask": np.array([[1, 1]], np.uint8)}
    assert differences(a, c) == [
        "['score']: 2 against 3",
        "['p'][0]: 0.5 against 0.6",
        "['mask']: 1 of 2 values differ",
    ]
