"""What ``lus-pacs demo`` prints: the node's findings on a simulated cine beside its truth."""

from __future__ import annotations

import json

from lus_pacs.records import CineRecord
from lus_pacs.synth.exam import CineRecord as SynthRecord


def describe_cine(record: CineRecord, truth: SynthRecord) -> str:
    """What the node found in one cine of the demo exam, beside the simulator's truth."""
    zone = record.source.zone
    lines = []
    b = record.b_lines
    if b is not None:
        found = f"B-lines {'present' if b.present else 'absent'} (p={b.probability:.2f})"
        if b.present:
            found += f", {len(b.frames)} frames, key frame {b.key_frame}"
    else:
        found = "B-lines not assessed"
    expected = "present" if truth.b_lines else "absent"
    lines.append(f"  zone {zone}: {found}; simulated truth: B-lines {expected}")
    if record.severity is not None:
        lines.append(f"    LUS score {record.severity.score} (simulated truth: {truth.severity})")
    seg = record.segmentation
    if seg is not None:
        masks = ", ".join(
            f"score {c.score} {c.pixels} px"
            + (f" (uncertainty {c.uncertainty_mean:.3f})" if c.uncertainty_mean is not None else "")
            for c in seg.classes
        )
        lines.append(f"    masks of frames {list(seg.frames)}: {masks or 'nothing found'}")
    con = record.consolidation
    if con is not None:
        said = "present" if con.present else "absent"
        expected = "present" if truth.consolidation else "absent"
        lines.append(
            f"    consolidation {said} (p={con.probability:.2f}, "
            f"{len(con.boxes)} boxes); simulated truth: {expected}"
        )
    q = record.quality
    if q is not None:
        good = json.loads(truth.truth.read_text())["clip"]["high_value_frames"]
        why = f" ({', '.join(q.reasons)})" if q.reasons else ""
        lines.append(
            f"    quality {q.flag}{why}, best frame {q.best_frame} "
            f"(p={q.probability:.2f}); simulated truth: "
            f"{'usable' if good else 'poor'}, that frame "
            f"{'high-value' if q.best_frame in good else 'not high-value'}"
        )
    return "\n".join(lines)
