"""Predicted-vs-measured results of GPU validation runs, for reports.

Validation runs write `validation.json` files under `reports/validation/` (any depth). A report reads, loosely,
these fields of each file and ignores the rest:

    gpu        GPU preset name (e.g. "a100-80gb"), compared case-insensitively with the report's
    model      model preset name (e.g. "llama-2-13b"), compared the same way
    allocator  optional: the allocator the run used
    metrics    {name: {"predicted": number, "measured": number, "rel_error": number (optional)}}
    date, device   optional, shown when present

rel_error, when absent, is (predicted - measured) / measured. Files that cannot be read, or lack `gpu`, `model` or
`metrics`, are listed as skipped with the reason; they never stop a report.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field


@dataclass
class ValidationRow:
    file: str
    allocator: str
    metric: str
    predicted: float | None
    measured: float | None
    rel_error: float | None
    date: str = ""
    device: str = ""


@dataclass
class ValidationFindings:
    root: str
    rows: list[ValidationRow] = field(default_factory=list)
    files_matched: list[str] = field(default_factory=list)
    files_other: int = 0  # readable files for another GPU or model
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def find_validation(root: str, gpu: str, model: str) -> ValidationFindings:
    """Every `validation.json` under `root` whose gpu and model match."""
    found = ValidationFindings(root)
    if not os.path.isdir(root):
        return found
    for path in sorted(glob.glob(os.path.join(root, "**", "validation.json"), recursive=True)):
        rel = os.path.relpath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            found.skipped.append(f"{rel}: {exc}")
            continue
        if (
            not isinstance(data, dict)
            or not all(k in data for k in ("gpu", "model", "metrics"))
            or not isinstance(data["metrics"], dict)
        ):
            found.skipped.append(f"{rel}: needs the fields gpu, model and metrics (a dict)")
            continue
        if str(data["gpu"]).lower() != gpu.lower() or str(data["model"]).lower() != model.lower():
            found.files_other += 1
            continue
        found.files_matched.append(rel)
        for name, m in data["metrics"].items():
            if not isinstance(m, dict):
                continue
            predicted, measured = _number(m.get("predicted")), _number(m.get("measured"))
            rel_error = _number(m.get("rel_error"))
            if rel_error is None and predicted is not None and measured:
                rel_error = (predicted - measured) / measured
            found.rows.append(
                ValidationRow(
                    rel,
                    str(data.get("allocator", "")),
                    str(name),
                    predicted,
                    measured,
                    rel_error,
                    str(data.get("date", "")),
                    str(data.get("device", "")),
                )
            )
    return found
