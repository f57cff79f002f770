"""Where the shipped networks run: eager PyTorch (the reference, and the training path) or ONNX
Runtime (the default for inference, measured faster on CPU by ``bench/realtime.py``).

:func:`compile_module` turns an eval-mode module into a function of tensors that returns a tuple
of tensors, whichever the runtime. For ONNX Runtime the module is exported in memory with
``torch.onnx`` when the model loads (a second or two per network; nothing is written to disk,
so the graph always matches the bundle's weights and the code), with the first dimension of
every input and output dynamic, and run by one ``InferenceSession`` with as many intra-op threads
as PyTorch uses. The two runtimes agree within :data:`TOLERANCE` on every shipped network
(``tests/inference/test_runtime.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import warnings
from collections.abc import Callable, Sequence
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from lus_pacs.errors import ModelError

TOLERANCE = 1e-4
"""Largest difference between the runtimes' outputs (probabilities, sigmoid or softmax) that
the equivalence tests accept."""

Compiled = Callable[..., tuple[torch.Tensor, ...]]
"""A compiled network: tensors in, a tuple of tensors out (inputs and outputs on the CPU)."""


class Runtime(StrEnum):
    """The inference runtime of the families' networks."""

    TORCH = "torch"
    ONNX = "onnx"


def compile_module(
    module: nn.Module, examples: Sequence[torch.Tensor], runtime: Runtime | str
) -> Compiled:
    """``module`` (put in eval mode) as a function on ``runtime``; ``examples`` are inputs of
    the shapes it will see (any first dimension).

    Raises
    ------
    ModelError
        The module cannot be exported to ONNX.
    """
    module.eval()
    if Runtime(runtime) is Runtime.TORCH:
        return _Eager(module)
    return _OnnxFunction(module, examples)


class _Eager:
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            out = self.module(*inputs)
        return tuple(out) if isinstance(out, tuple | list) else (out,)


class _OnnxFunction:
    """A module exported to ONNX in memory and run by ONNX Runtime."""

    def __init__(self, module: nn.Module, examples: Sequence[torch.Tensor]) -> None:
        import onnxruntime  # type: ignore[import-untyped]  # only this runtime needs it

        examples = tuple(examples)
        module = exportable(module, examples)
        with torch.inference_mode():
            reference = module(*examples)
        n_out = len(reference) if isinstance(reference, tuple | list) else 1
        self.inputs = [f"input_{i}" for i in range(len(examples))]
        outputs = [f"output_{i}" for i in range(n_out)]
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
                torch.onnx.export(
                    module,
                    examples,
                    buffer,  # type: ignore[arg-type]  # a file object works as well as a path
                    dynamo=False,
                    input_names=self.inputs,
                    output_names=outputs,
                    dynamic_axes={name: {0: "batch"} for name in self.inputs + outputs},
                    opset_version=20,
                )
        except Exception as exc:  # the exporter raises many kinds for an unsupported operator
            raise ModelError(
                f"{type(module).__name__} cannot be exported to ONNX ({exc}); run it with "
                "runtime = 'torch'."
            ) from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No arena: memory goes back to the heap when a call ends (and from there to the system
        # above compact_allocator's threshold or after a long cine), so that the runtime's peak
        # stays that of the eager path (an arena keeps the largest batch's buffers for the
        # process's life).
        options.enable_cpu_mem_arena = False
        # Nor one block per call for all of a call's intermediate tensors (the memory pattern):
        # without an arena that block (17-31 MB for the key-frame, severity and segmentation
        # networks) is above the compact allocator's mmap threshold, so each call mapped fresh
        # pages and faulted them in, while the other worker's calls waited on the same mappings'
        # lock. Tensor by tensor they come from the heap and are reused: the exam of
        # bench/realtime.py 9 % faster (6.56-6.85 against 7.28-7.44 s, three alternate runs, with
        # the key-frame batch of 4), the same peak.
        options.enable_mem_pattern = False
        # Its threads sleep between calls instead of spinning: PyTorch's pre- and
        # post-processing runs between them on the same cores (12 % faster over the exam of
        # bench/realtime.py: 15.4 against 17.5 s, three alternate runs).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {
            name: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)
            for name, t in zip(self.inputs, inputs, strict=True)
        }
        return tuple(torch.from_numpy(out) for out in self.session.run(None, feed))


def exportable(module: nn.Module, examples: Sequence[torch.Tensor]) -> nn.Module:
    """``module``, or a copy of it whose adaptive average pools that ONNX cannot express (an
    output size that does not divide the input's) are fixed pools for the input size they see
    with ``examples`` (:class:`FixedAdaptivePool`); the spatial size of the input is then fixed
    too."""
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.AdaptiveAvgPool2d):

            def record(
                _layer: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object, name: str = name
            ) -> None:
                seen[name] = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))

            hooks.append(layer.register_forward_hook(record))
    try:
        with torch.inference_mode():
            module(*examples)
    finally:
        for hook in hooks:
            hook.remove()
    awkward = {
        name: size
        for name, size in seen.items()
        if any(i % o for i, o in zip(size, _pair(module.get_submodule(name)), strict=True))
    }
    if not awkward:
        return module
    module = copy.deepcopy(module)
    for name, size in awkward.items():
        parent, _, child = name.rpartition(".")
        pool = module.get_submodule(name)
        setattr(module.get_submodule(parent), child, FixedAdaptivePool(size, _pair(pool)))
    return module


def _pair(pool: nn.Module) -> tuple[int, int]:
    size = getattr(pool, "output_size")  # noqa: B009  # an attribute of AdaptiveAvgPool2d
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class FixedAdaptivePool(nn.Module):
    """``AdaptiveAvgPool2d(output)`` for inputs of one spatial ``size``, as two products with
    averaging matrices (bin ``i`` of ``n`` over ``m`` inputs spans ``floor(i m / n)`` to
    ``ceil((i + 1) m / n)``, as PyTorch's): the same numbers within float rounding, in
    operations every ONNX runtime has."""

    def __init__(self, size: tuple[int, int], output: tuple[int, int]) -> None:
        super().__init__()
        self.rows: torch.Tensor
        self.cols: torch.Tensor
        self.register_buffer("rows", _bins(size[0], output[0]))
        self.register_buffer("cols", _bins(size[1], output[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols.T


def _bins(inputs: int, outputs: int) -> torch.Tensor:
    weights = torch.zeros(outputs, inputs)
    for i in range(outputs):
        start, end = (i * inputs) // outputs, math.ceil((i + 1) * inputs / outputs)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def differences(a: object, b: object, tolerance: float = TOLERANCE, where: str = "") -> list[str]:
    """Where two findings (dataclasses, mappings, sequences, arrays and numbers, nested) differ:
    a float by more than ``tolerance``, anything else (an integer, a label, a decision, an
    integer array such as a mask) at all. Empty when they agree; used to hold the runtimes'
    findings against each other."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return [f"{where or 'value'}: {type(a).__name__} against {type(b).__name__}"]
        return [
            d
            for f in dataclasses.fields(a)
            for d in differences(
                getattr(a, f.name), getattr(b, f.name), tolerance, f"{where}.{f.name}"
            )
        ]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a))} against {sorted(map(str, b))}"]
        return [d for k in a for d in differences(a[k], b[k], tolerance, f"{where}[{k!r}]")]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape:
            return [f"{where}: shape {x.shape} against {y.shape}"]
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(y.dtype, np.floating):
            gap = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0.0))
            return [f"{where}: differs by {gap:.2e}"] if gap > tolerance else []
        unequal = int((x != y).sum())
        return [f"{where}: {unequal} of {x.size} values differ"] if unequal else []
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items against {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (u, v) in pairs for d in differences(u, v, tolerance, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance
        return [] if same else [f"{where}: {a!r} against {b!r}"]
    return [] if a == b else [f"{where}: {a!r} against {b!r}"]
