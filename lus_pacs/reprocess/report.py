"""The end-of-run report of a re-processing run: a table for the terminal and a picture.

The picture (matplotlib, two panels): the distribution of the exams' total LUS scores, and the
B-line prevalence per zone (the share of the zone's cines with B-lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lus_pacs.records import CineRecord, StudySummary
from lus_pacs.reprocess.run import RunCounts


def zone_table(
    records: Sequence[CineRecord],
) -> list[tuple[str, int, float | None, float | None]]:
    """Per zone: cines, share with B-lines (None when not assessed), mean clip LUS score."""
    zones: dict[str, list[CineRecord]] = {}
    for record in records:
        zones.setdefault(record.source.zone or "?", []).append(record)
    rows = []
    for zone, rs in sorted(zones.items()):
        with_b = [r.b_lines.present for r in rs if r.b_lines is not None]
        scores = [r.severity.score for r in rs if r.severity is not None]
        rows.append(
            (
                zone,
                len(rs),
                sum(with_b) / len(with_b) if with_b else None,
                sum(scores) / len(scores) if scores else None,
            )
        )
    return rows


def text_report(
    counts: RunCounts, records: Sequence[CineRecord], summaries: Sequence[StudySummary]
) -> str:
    """The run's counts, then the table per zone over every cine done so far."""
    lines = [
        f"studies: {counts.studies} listed, {counts.studies_skipped} already done",
        f"cines: {counts.processed} processed, {counts.skipped} already done, "
        f"{counts.failed} failed"
        + (f", {counts.failed_before} failed before" if counts.failed_before else "")
        + (f", {counts.sent} sent" if counts.sent else ""),
        *(
            [f"not processed: {counts.problems} (studies not fetched, files not read)"]
            if counts.problems
            else []
        ),
        f"time: {counts.seconds:.1f} s, {counts.cines_per_minute:.1f} cines/min",
        "",
        f"{'zone':<6}{'cines':>7}{'B-lines':>10}{'mean LUS':>10}",
    ]
    for zone, n, prevalence, score in zone_table(records):
        b = f"{100 * prevalence:.0f}%" if prevalence is not None else "-"
        s = f"{score:.2f}" if score is not None else "-"
        lines.append(f"{zone:<6}{n:>7}{b:>10}{s:>10}")
    totals = [s.lus_score.total for s in summaries if s.lus_score is not None]
    if totals:
        lines.append("")
        lines.append(
            f"exams: {len(summaries)}, total LUS score mean {sum(totals) / len(totals):.1f}, "
            f"range {min(totals)}-{max(totals)}"
        )
    for sop, reason in counts.failures:
        lines.append(f"failed {sop}: {reason}")
    return "\n".join(lines)


def plot_report(
    records: Sequence[CineRecord], summaries: Sequence[StudySummary], path: Path
) -> None:
    """Write the two-panel PNG: total LUS score per exam, B-line prevalence per zone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    totals = [s.lus_score.total for s in summaries if s.lus_score is not None]
    if totals:
        top = max(s.lus_score.maximum for s in summaries if s.lus_score is not None)
        left.hist(totals, bins=range(0, top + 2), color="#4a7ab5", edgecolor="white", align="left")
        left.set_xlim(-0.5, top + 0.5)
    left.set_title(f"Total LUS score per exam (n = {len(totals)})")
    left.set_xlabel("total LUS score")
    left.set_ylabel("exams")
    rows = [(zone, p) for zone, _, p, _ in zone_table(records) if p is not None]
    right.bar([z for z, _ in rows], [100 * p for _, p in rows], color="#c0504d")
    right.set_ylim(0, 100)
    right.set_title("B-line prevalence per zone")
    right.set_xlabel("zone")
    right.set_ylabel("cines with B-lines (%)")
    fig.suptitle("lus-pacs re-processing (research software, not a medical device)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
