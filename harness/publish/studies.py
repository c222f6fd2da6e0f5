"""Tuning studies (`d2o-bench tune`'s study.json files) as publish shows them: which studies are
results, and the table of helpfulness at matched harm. The files are read by the one study reader,
`harness.selection.parse_study`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from harness.errors import BadInput
from harness.instruments import checks
from harness.publish.notes import refusal_bias_line
from harness.publish.pooling import csv_text
from harness.selection import STUDY_FILE, parse_study

FRONTIER_COLUMNS = ("preset", "method", "study", "selection_rule", "selected_trial", "trials", "harm_level",
                    "helpful_at_matched_harm")
FRONTIER_NOTE = ("From `d2o-bench tune` studies: the validation helpfulness each method reaches at the matched "
                 "harm level (the study's `helpful_at_matched_harm`), the trial its selection rule picked, and "
                 "how many trials completed. The frontier plots show every trial on validation data and the "
                 "method's test result with its 95% intervals.")


def cell(value: Any, digits: Optional[int] = None) -> str:
    if value is None:
        return "—"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def load_studies(directory: Path) -> list[dict]:
    """Every `study.json` under `directory`, in path order, checked; BadInput when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput(f"publish: --studies {directory}: no such directory")
    paths = sorted(directory.rglob(STUDY_FILE))
    if not paths:
        raise BadInput(f"publish: no {STUDY_FILE} under {directory}")
    return [parse_study(path).checked for path in paths]


def studies_with_valid_objectives(studies: list[dict], table: dict) -> tuple[list[dict], list[str]]:
    """The studies whose objectives come from instruments that passed their checks in the entries
    of the study's preset, and a line naming each study left out (with the failed figure): a
    frontier drawn on a failed instrument's numbers is not a result either."""
    kept, left_out = [], []
    for study in studies:
        rows = [r for r in table["rows"] if r["preset"] == study["preset"]]
        invalid = {}
        for row in rows:
            for entry in row["runs"]:
                invalid.update(checks.invalid_metrics(checks.entry_validation(entry)))
        bad = [m for m in (study["objectives"]["harm"], study["objectives"]["help"]) if checks.is_invalid(m, invalid)]
        if not bad:
            kept.append(study)
            continue
        why = "; ".join("{} comes from {}, which failed its check ({})".format(m, *checks.failure_of(m, invalid))
                        for m in bad)
        left_out.append(f"Study {study['study_name']} ({study['method']}, preset {study['preset']}) is left out: {why}.")
    return kept, left_out


def frontier_notes(table: dict, studies: list[dict]) -> list[str]:
    """Under the frontier table: the studies left out, and the refusal rules' bias when the
    studies' objectives are refusal-rule metrics."""
    notes = list(table.get("studies_left_out") or [])
    for preset in sorted({s["preset"] for s in studies}):
        objectives = {m for s in studies if s["preset"] == preset for m in s["objectives"].values()}
        bias = refusal_bias_line([r for r in table.get("rows", []) if r["preset"] == preset], objectives)
        if bias:
            notes.append(f"Preset {preset}: {bias}")
    return notes


def frontier_rows(studies: list[dict]) -> list[dict]:
    rows = []
    for study in sorted(studies, key=lambda s: (s["preset"], s["method"], s["study_name"], str(s["path"]))):
        matched = study["helpful_at_matched_harm"] or {}
        rows.append({
            "preset": study["preset"], "method": study["method"], "study": study["study_name"],
            "selection_rule": study["selection_rule"], "selected_trial": study["selected_trial"],
            "trials": sum(1 for t in study["trials"] if t["state"] == "COMPLETE"),
            "harm_level": None if matched.get("harm_level") is None else float(matched["harm_level"]),
            "helpful_at_matched_harm": None if matched.get("value") is None else float(matched["value"]),
        })
    return rows


def render_frontier_csv(studies: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FRONTIER_COLUMNS)
    for row in frontier_rows(studies):
        writer.writerow([csv_text(row[c]) if isinstance(row[c], str) else
                         "" if row[c] is None else repr(row[c]) for c in FRONTIER_COLUMNS])
    return buffer.getvalue()


