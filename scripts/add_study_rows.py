#!/usr/bin/env python
"""Append a later study run's rows of NEW methods to the committed study rows, after checking that the
run used the committed study's splits and features.

    python scripts/add_study_rows.py --rows runs/study-knn-class/rows.jsonl --check knn

A control that needs no training (e.g. `knn_class`, configs/study-knn-class.yaml) can be run on the
committed study's levels and seeds without re-running LTAD. `--check` names methods of the new run
that the committed rows already hold: each of their rows must match the committed row of the same
(level, seed) (same training counts, figures within --tol), which shows the splits and encoded
features are the same; those rows are not added again. Every other row is added, unless its (level,
seed, method) is already committed or its (level, seed) is not a committed group. The file is
rewritten whole (temp file, then rename). Prints a JSON summary; exit 1 if a check fails, 2 on bad
input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1max")


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"add_study_rows: rows file '{path}' does not exist")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(r: dict) -> tuple[str, int, str]:
    return (r["level"], int(r["seed"]), r["method"])


def max_difference(new: dict, old: dict) -> float:
    """Largest absolute difference between two rows' headline and per-class figures (inf if a figure
    is missing from one of them)."""
    pairs = [(new.get(f), old.get(f)) for f in FIGURES]
    pc_new, pc_old = new.get("per_class_image_AUROC", {}), old.get("per_class_image_AUROC", {})
    if set(pc_new) != set(pc_old):
        return math.inf
    pairs += [(pc_new[c], pc_old[c]) for c in pc_new]
    out = 0.0
    for a, b in pairs:
        if a is None or b is None:
            return math.inf
        if not (math.isnan(a) and math.isnan(b)):
            out = max(out, abs(float(a) - float(b)))
    return out


def merge(committed: list[dict], new: list[dict], check: set[str], tol: float) -> tuple[list[dict], dict]:
    """(rows to append, summary); raises ValueError naming the first row that cannot be added."""
    by_key = {_key(r): r for r in committed}
    groups = {(r["level"], int(r["seed"])) for r in committed}
    summary: dict = {"checked": {}, "added": {}}
    add = []
    for r in new:
        k = _key(r)
        if (k[0], k[1]) not in groups:
            raise ValueError(f"row {k} belongs to no committed (level, seed) group")
        if r["method"] in check:
            old = by_key.get(k)
            if old is None:
                raise ValueError(f"checked row {k} has no committed counterpart")
            if old.get("train_counts") != r.get("train_counts"):
                raise ValueError(f"row {k}: training counts differ from the committed row (another split)")
            diff = max_difference(r, old)
            c = summary["checked"].setdefault(r["method"], {"rows": 0, "max_abs_diff": 0.0})
            c["rows"] += 1
            c["max_abs_diff"] = max(c["max_abs_diff"], diff)
            if diff > tol:
                raise ValueError(f"row {k} differs from the committed row by {diff:.3g} (> --tol {tol:g})")
            continue
        if k in by_key:
            raise ValueError(f"row {k} is already committed; name its method in --check to compare it")
        counts = {(x["level"], int(x["seed"])): x.get("train_counts") for x in committed}
        if counts[(k[0], k[1])] != r.get("train_counts"):
            raise ValueError(f"row {k}: training counts differ from the committed group's (another split)")
        add.append(r)
        summary["added"][r["method"]] = summary["added"].get(r["method"], 0) + 1
    return add, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", required=True, type=Path, help="rows.jsonl of the new study run")
    p.add_argument("--into", type=Path, default=REPO / "docs/results/study-rows.jsonl")
    p.add_argument("--check", action="append", default=[], metavar="METHOD")
    p.add_argument("--tol", type=float, default=1e-4, help="largest difference a checked figure may show")
    args = p.parse_args(argv)
    committed, new = read_rows(args.into), read_rows(args.rows)
    try:
        add, summary = merge(committed, new, set(args.check), args.tol)
    except ValueError as e:
        print(f"add_study_rows: {e}", file=sys.stderr)
        return 1
    text = args.into.read_text()
    text += "".join(json.dumps(r, sort_keys=True) + "\n" for r in add)
    tmp = args.into.with_name(f".{args.into.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(args.into)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
