"""The report of ``grounded eval video``: ``report.json`` (every number, fractions in [0, 1]) and ``report.md``
(for people, in percent), the Markdown rendered from the JSON document so they never disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["render_video_markdown", "write_video_report"]

_COLUMNS = {
    "davis": ("J&F", "J", "F", "J-Recall", "F-Recall"),
    "mots": ("HOTA", "DetA", "AssA", "MOTSA", "IDF1", "IDSW"),
}


def _cell(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if name == "IDSW" else f"{100.0 * value:.1f}"


def render_video_markdown(report: dict[str, Any]) -> str:
    """The human-readable report (Markdown) of a video report document."""
    columns = _COLUMNS[report["benchmark"]]
    summary = report["summary"]
    head = columns[0]
    lines = [f"# {report['title']}", ""]
    others = ", ".join(f"{c} {_cell(c, summary[c])}" for c in columns[1:])
    what = f"{summary['sequences']} sequence(s)"
    if report["benchmark"] == "davis":
        what += f", {summary['objects']} object(s)"
    lines.append(
        f"**{head}: {_cell(head, summary[head])}** ({others}) over {what}, {summary['frames']} frames."
    )
    lines += ["", "Numbers in percent (IDSW: a count); `report.json` has them as fractions.", ""]
    lines += ["## Per sequence", ""]
    header = ["sequence", "frames", *(["objects"] if report["benchmark"] == "davis" else []), *columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for seq in report["sequences"]:
        cells = [seq["name"], str(seq["frames"])]
        if report["benchmark"] == "davis":
            cells.append(str(seq["objects"]))
        cells += [_cell(c, seq.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("objects"):
        lines += ["", "## Per object", "", "| object | " + " | ".join(columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for name, scores in report["objects"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(c, scores[c]) for c in columns) + " |")
    if report.get("not_scored"):
        lines += [
            "",
            "Not scored (no ground-truth pixel on the scored frames): " + ", ".join(report["not_scored"]),
        ]
    lines += ["", "## Protocol", ""]
    lines += [f"- {line}" for line in report["protocol"]]
    run = report["run"]
    lines += ["", "## Run", ""]
    if run["ran_models"]:
        lines.append(
            f"- Ran the tracker: {run['frames_run']} frames in {run['seconds']:.1f} s"
            + (f" ({run['frames_per_second']:.2f} frames/s)" if run.get("frames_per_second") else "")
            + f"; results in `{run['predictions']}`."
        )
    else:
        lines.append(f"- Scored the results in `{run['predictions']}` (no model was run).")
    if report.get("pipeline"):
        pipeline = report["pipeline"]
        lines.append(f"- Pipeline `{pipeline.get('pipeline')}` (`report.json` has every parameter):")
        tracker = pipeline.get("tracker") or {}
        model = f" `{tracker['model']}`" if tracker.get("model") else ""
        lines.append(f"  - tracker: {tracker.get('type')}{model}")
        for node, spec in (pipeline.get("detector") or {}).items():
            if report["benchmark"] == "mots":
                model = (spec.get("params") or {}).get("model", "")
                lines.append(f"  - {node}: {spec.get('type') or spec.get('class', '')} `{model}`")
    for key, value in (report.get("settings") or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", f"_Written by grounded {report['grounded_version']} on {report['created']}._", ""]
    return "\n".join(lines)


def write_video_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``out``, each atomically."""
    from grounded.core.files import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.setdefault("files", {})["report"] = ["report.md", "report.json"]
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", render_video_markdown(report))
    return {"json": out / "report.json", "markdown": out / "report.md"}
