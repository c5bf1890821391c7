"""The evaluation report: ``report.json`` (everything), ``report.md`` (for people) and a bar chart PNG.

The Markdown and the chart are rendered from the same JSON document, so they never disagree. Published
SegInW numbers (``reference/seginw_published.csv``, with their source in its header) sit beside ours.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "REFERENCE_FILE",
    "REFERENCE_LABELS",
    "Reference",
    "load_seginw_reference",
    "render_chart",
    "render_markdown",
    "write_report",
]

REFERENCE_FILE = Path(__file__).resolve().parent / "reference" / "seginw_published.csv"
REFERENCE_LABELS = {
    "gsam_h": "Grounded-SAM (DINO-B + SAM-H)",
    "ghqsam_h": "Grounded-HQ-SAM (DINO-B + HQ-SAM-H)",
    "gsam2_l": "Grounded-SAM2 (DINO-B + SAM 2.1-L)",
    "ghqsam2_l": "Grounded-HQ-SAM2 (DINO-B + HQ-SAM2-L)",
}
#: The reference columns shown in the Markdown table and the chart (all are in ``report.json``).
SHOWN_REFERENCES = ("gsam_h", "ghqsam_h")
CHART_FILE = "mask_ap.png"


@dataclass(frozen=True)
class Reference:
    """Published per-dataset mask AP (percent) with the lines naming its source."""

    source: tuple[str, ...]
    columns: tuple[str, ...]
    values: dict[str, dict[str, float]]  # dataset -> column -> AP

    def mean(self, column: str, names: Iterable[str] | None = None) -> float | None:
        vals = self._column(column, names)
        return statistics.fmean(vals) if vals else None

    def median(self, column: str, names: Iterable[str] | None = None) -> float | None:
        vals = self._column(column, names)
        return float(statistics.median(vals)) if vals else None

    def _column(self, column: str, names: Iterable[str] | None) -> list[float]:
        keys = list(self.values) if names is None else [n for n in names if n in self.values]
        return [self.values[k][column] for k in keys]


def load_seginw_reference(path: str | Path = REFERENCE_FILE) -> Reference:
    """Read the published SegInW table (``#`` lines are its source; then a CSV with a ``dataset`` column)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    source = tuple(line.lstrip("#").strip() for line in lines if line.startswith("#"))
    rows = list(csv.DictReader(line for line in lines if line.strip() and not line.startswith("#")))
    if not rows:
        raise ValueError(f"{path}: no reference rows")
    columns = tuple(c for c in rows[0] if c != "dataset")
    values = {row["dataset"]: {c: float(row[c]) for c in columns} for row in rows}
    return Reference(source=source, columns=columns, values=values)


# ---------------------------------------------------------------------- rendering
def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or value < 0 else f"{value:.{digits}f}"


METRIC_LABELS = {"mask_ap": "mask AP", "box_ap": "box AP"}


def _headline_metric(report: dict[str, Any]) -> str:
    """``mask_ap`` when any dataset has masks, else ``box_ap``."""
    return "mask_ap" if any(d.get("mask_ap") is not None for d in report["datasets"]) else "box_ap"


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report (Markdown) of a report document."""
    summary = report["summary"]
    metric = _headline_metric(report)
    label = "mask AP" if metric == "mask_ap" else "box AP"
    lines = [f"# {report['title']}", ""]
    if summary["evaluated"]:
        lines.append(
            f"**Mean {label}: {_fmt(summary[metric + '_mean'])}** (median {_fmt(summary[metric + '_median'])}) "
            f"over **{summary['evaluated']} of {summary['expected']}** dataset(s)."
        )
    else:
        lines.append("**No dataset was evaluated.**")
    if report["benchmark"] == "seginw":
        if not summary["complete"]:
            lines += [
                "",
                f"> **Incomplete:** {len(report['missing_datasets'])} of the {summary['expected']} SegInW datasets "
                "are missing, so this mean is **not comparable** with the published means over all 25. "
                "The published columns below are also averaged over the same datasets for a like-for-like look.",
            ]
        refs = summary.get("reference", {})
        if refs:
            lines += [
                "",
                "| published (SysCV/sam-hq) | mean, all 25 | median, all 25 | mean, same datasets as ours |",
            ]
            lines.append("|---|---:|---:|---:|")
            for ref in refs.values():
                lines.append(
                    f"| {ref['label']} | {_fmt(ref['mean_all'])} | {_fmt(ref['median_all'])} | "
                    f"{_fmt(ref['mean_evaluated'])} |"
                )
    if not report["scoring_is_protocol"]:
        lines += [
            "",
            f"> **Scoring differs from the published protocol:** `{json.dumps(report['scoring'])}`.",
        ]
    if report["protocol_deviations"]:
        lines += ["", "> **The pipeline deviates from the protocol:**"]
        lines += [f"> - {d}" for d in report["protocol_deviations"]]
    if report.get("files", {}).get("chart"):
        lines += ["", f"![{label} per dataset]({report['files']['chart']})"]
    lines += ["", "## Per dataset", ""]
    lines += _dataset_table(report)
    failures = [(d["name"], f) for d in report["datasets"] for f in d["failed_images"]]
    if failures:
        lines += ["", f"## Failed images ({len(failures)})", ""]
        lines += [f"- {name}: {msg}" for name, msg in failures[:50]]
        if len(failures) > 50:
            lines.append(f"- ... and {len(failures) - 50} more (see report.json)")
    if report.get("missing_datasets"):
        lines += ["", "## Missing datasets", ""]
        lines.append(", ".join(report["missing_datasets"]))
    if report.get("ignored_folders"):
        lines += [
            "",
            "Folders that are not SegInW datasets (ignored): " + ", ".join(report["ignored_folders"]),
        ]
    lines += ["", "## Protocol", ""]
    lines += _protocol_lines(report)
    if report.get("reference_source"):
        lines += ["", "## Reference data", ""]
        lines += [f"- {line}" for line in report["reference_source"]]
        lines.append("- Stored in grounded as `evaluation/reference/seginw_published.csv`.")
    if report.get("files"):
        lines += ["", "## Files", ""]
        for kind, value in report["files"].items():
            shown = ", ".join(value) if isinstance(value, list) else value
            lines.append(f"- {kind}: {shown}")
    lines += ["", f"_Written by grounded {report['grounded_version']} on {report['created']}._", ""]
    return "\n".join(lines)


def _dataset_table(report: dict[str, Any]) -> list[str]:
    refs = [c for c in SHOWN_REFERENCES if c in report["summary"].get("reference", {})]
    ref_labels = [report["summary"]["reference"][c]["label"] for c in refs]
    header = [
        "dataset",
        "images",
        "mask AP",
        "box AP",
        "AP50 (mask)",
        *[f"{lab} (pub.)" for lab in ref_labels],
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    rows = {d["name"]: d for d in report["datasets"]}
    order = list(report.get("dataset_order") or rows)
    for name in order:
        d = rows.get(name)
        published = [_fmt((report.get("reference_values") or {}).get(name, {}).get(c)) for c in refs]
        if d is None:
            lines.append(f"| {name} | – | missing | missing | – | " + " | ".join(published) + " |")
            continue
        mask50 = d["mask"]["AP50"] if d.get("mask") else None
        lines.append(
            f"| {name} | {d['images']} | {_fmt(d['mask_ap'])} | {_fmt(d['box_ap'])} | {_fmt(mask50)} | "
            + " | ".join(published)
            + " |"
        )
    s = report["summary"]
    if s["evaluated"] > 1:
        pub_means = [_fmt(s["reference"][c]["mean_evaluated"]) for c in refs]
        pub_medians = [_fmt(s["reference"][c].get("median_evaluated")) for c in refs]
        mean = [
            f"**mean of {s['evaluated']}**",
            "",
            f"**{_fmt(s['mask_ap_mean'])}**",
            _fmt(s["box_ap_mean"]),
            "",
        ]
        median = [f"median of {s['evaluated']}", "", _fmt(s["mask_ap_median"]), _fmt(s["box_ap_median"]), ""]
        lines.append("| " + " | ".join([*mean, *pub_means]) + " |")
        lines.append("| " + " | ".join([*median, *pub_medians]) + " |")
    if len(rows) == 1 and report["benchmark"] == "coco":
        d = next(iter(rows.values()))
        per_cat = d.get("per_category_mask_ap") or d.get("per_category_box_ap") or {}
        kind = "mask" if d.get("per_category_mask_ap") else "box"
        lines += ["", f"### {kind} AP per category", "", "| category | AP |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in per_cat.items()]
    return lines


def _protocol_lines(report: dict[str, Any]) -> list[str]:
    p = report["protocol"]
    nodes = report["pipeline"].get("nodes", {})
    lines = [
        "- Prompt: the dataset's category names in file order joined with ` . ` (caption ends with ` .`); "
        "class *i* is category *i*.",
        f"- Detector: top-{p['top_k']} (query, class) pairs per image by score, box threshold {p['box_threshold']}, "
        f"NMS {'none' if p['nms_threshold'] is None else p['nms_threshold']}, class score = "
        f"{p['class_reduction']} over the class's tokens, boxes {'clipped' if p['clip_boxes'] else 'not clipped'}, "
        f"images resized by the {p.get('image_backend') or 'default'} backend.",
        "- Masks: the segmenter on those boxes; each mask scores its box's detector score"
        + (
            " (as published)."
            if report["scoring"]["mask_score"] == "detector"
            else f" ({report['scoring']['mask_score']})."
        ),
        "- AP: pycocotools COCOeval (IoU .50:.95, 100 detections), per dataset; headline = mean over datasets.",
        "- Details and sources: `evaluation/README.md`.",
        "",
        "Pipeline (`report.json` has every parameter):",
        "",
    ]
    for node, spec in nodes.items():
        params = spec.get("params", {})
        model = params.get("model", "")
        lines.append(f"- `{node}`: {spec.get('type') or spec.get('class', '')} `{model}`")
    for note in report.get("protocol_notes", []):
        lines.append(f"- note: {note}")
    return lines


def render_chart(report: dict[str, Any]) -> bytes | None:
    """A horizontal bar chart (PNG bytes) of our AP per dataset beside the published columns."""
    from matplotlib.figure import Figure

    metric = _headline_metric(report)
    datasets = [d for d in report["datasets"] if d.get(metric) is not None]
    if not datasets:
        return None
    if report["benchmark"] == "coco" and len(datasets) == 1:
        per_cat = datasets[0].get(f"per_category_{metric}") or {}
        names = [k for k, v in per_cat.items() if v is not None]
        series = {"grounded": [per_cat[k] for k in names]}
        title = f"{datasets[0]['name']}: {METRIC_LABELS[metric]} per category"
    else:
        names = [d["name"] for d in datasets]
        series = {"grounded (this run)": [d[metric] for d in datasets]}
        refs = report["summary"].get("reference", {})
        for col in SHOWN_REFERENCES:
            if col in refs and metric == "mask_ap":
                series[refs[col]["label"] + " (published)"] = [
                    (report.get("reference_values") or {}).get(n, {}).get(col, float("nan")) for n in names
                ]
        title = f"{report['title']}: {METRIC_LABELS[metric]} per dataset"
    if not names:
        return None
    height = max(3.0, 0.17 * len(names) * max(1, len(series)) + 1.5)
    fig = Figure(figsize=(8, height), dpi=100)
    ax = fig.add_subplot()
    bar = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        positions = [i + k * bar for i in range(len(names))]
        bars = ax.barh(positions, values, height=bar, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_yticks([i + bar * (len(series) - 1) / 2 for i in range(len(names))])
    ax.set_yticklabels(names)
    ax.margins(y=0.01)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(series)), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``mask_ap.png`` (when there is something to plot) and ``report.md`` atomically."""
    from grounded.core.files import atomic_write_bytes, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    chart = render_chart(report)
    report.setdefault("files", {})
    if chart is not None:
        atomic_write_bytes(out / CHART_FILE, chart)
        report["files"]["chart"] = CHART_FILE
        written["chart"] = out / CHART_FILE
    report["files"]["report"] = ["report.md", "report.json"]
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    written["json"] = out / "report.json"
    written["markdown"] = out / "report.md"
    return written


# ---------------------------------------------------------------------- assembling
def summarize(
    datasets: Sequence[dict[str, Any]], expected: int, reference: Reference | None = None
) -> dict[str, Any]:
    """Mean / median AP over the evaluated datasets, and the published means (all, and the same subset)."""

    def stats(key: str) -> tuple[float | None, float | None]:
        vals = [d[key] for d in datasets if d.get(key) is not None]
        if not vals:
            return None, None
        return statistics.fmean(vals), float(statistics.median(vals))

    mask_mean, mask_median = stats("mask_ap")
    box_mean, box_median = stats("box_ap")
    summary: dict[str, Any] = {
        "evaluated": len(datasets),
        "expected": expected,
        "complete": len(datasets) == expected,
        "mask_ap_mean": mask_mean,
        "mask_ap_median": mask_median,
        "box_ap_mean": box_mean,
        "box_ap_median": box_median,
    }
    if reference is not None:
        names = [d["name"] for d in datasets]
        summary["reference"] = {
            col: {
                "label": REFERENCE_LABELS.get(col, col),
                "mean_all": reference.mean(col),
                "median_all": reference.median(col),
                "mean_evaluated": reference.mean(col, names) if names else None,
                "median_evaluated": reference.median(col, names) if names else None,
            }
            for col in reference.columns
        }
    return summary


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
