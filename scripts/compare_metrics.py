"""Compare a retrained bundle's validation metrics with the shipped bundle's, within a tolerance.

Usage: python scripts/compare_metrics.py RETRAINED_BUNDLE SHIPPED_BUNDLE [--tolerance 0.03]

Both bundles' ``configs/metadata.json`` carry ``eval_metrics`` (written by training). Every
metric in [0, 1] that both have is compared; counts (``*_n``, ``windows_*``, ``clips_*``) must
match exactly, since the same command on the same data must see the same windows. Prints one
line per metric and exits 1 on any difference beyond the tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _metrics(bundle: Path) -> dict[str, float]:
    doc = json.loads((bundle / "configs" / "metadata.json").read_text())
    return {k: float(v) for k, v in doc["eval_metrics"].items() if isinstance(v, (int, float))}


def _is_count(name: str) -> bool:
    return name.endswith(("_n", "_n_positive")) or name.startswith(("windows_", "clips_"))


def compare(retrained: Path, shipped: Path, tolerance: float) -> list[str]:
    """Lines describing each shared metric; those beyond the tolerance start with ``FAIL``."""
    new, old = _metrics(retrained), _metrics(shipped)
    lines = []
    for name in sorted(set(new) & set(old)):
        a, b = new[name], old[name]
        if math.isnan(a) and math.isnan(b):
            continue
        allowed = 0.0 if _is_count(name) else tolerance
        ok = abs(a - b) <= allowed + 1e-9
        lines.append(f"{'ok  ' if ok else 'FAIL'} {name}: retrained {a:.4f}, shipped {b:.4f}")
    missing = sorted(set(old) - set(new))
    lines += [f"FAIL {name}: missing from the retrained bundle" for name in missing]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("retrained", type=Path)
    parser.add_argument("shipped", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.03)
    args = parser.parse_args()
    lines = compare(args.retrained, args.shipped, args.tolerance)
    print("\n".join(lines))
    failed = sum(line.startswith("FAIL") for line in lines)
    print(f"{len(lines) - failed} of {len(lines)} metrics reproduced within {args.tolerance}")
    sys.exit(1 if failed or not lines else 0)


if __name__ == "__main__":
    main()
