#!/usr/bin/env python
"""Re-run the validation candidates that the fixed-batch synthesis and phase-1 balancing touch.

python scripts/validation-round.py --out runs/val-fixed-batch --rows docs/results/validation-rows.jsonl
Each candidate is configs/study-validation.yaml (validation dataset seed 1, exp:100, seed 0) with a few
overrides of configs/study-model.yaml, run by jobs/study.py into OUT/<n>; its rows are appended to
--rows with the candidate's label (docs/RESULTS.md, fourth validation round). Candidates that only
change synthesis skip the synthesis-free methods (rec_only, no_vae): those do not depend on it; the
ltad_mb candidates (a labelled variant beyond the paper: LTAD's fused score plus per-class kNN banks,
docs/RESULTS.md) choose its bank weight and the smallest class that gets a bank.
Resumable like the study itself: a finished candidate is not run again, and its rows are not appended twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs import study  # noqa: E402

ALL = ["ltad", "rec_only", "sem_only", "no_vae", "oracle"]
SYNTH = ["ltad", "sem_only", "oracle"]
BANK = {"memory_bank_weight": 1.0, "memory_bank_min_images": 10}
# (label, config overrides, methods, study spec fields)
CANDIDATES = [
    ("fixed batch: reported config (synthesis 0.5 of 16, phase 1 class-balanced)", [],
     [*ALL, "knn", "ltad_mb"], BANK),
    ("fixed batch: phase-1 sampling ~ sqrt(count) (phase1.class_balance 0.5, the old sampling)",
     ["phase1.class_balance=0.5"], ALL, {}),
    ("fixed batch: synthesis ratio 0.25", ["phase2.synthesis_ratio=0.25"], SYNTH, {}),
    ("fixed batch: synthesis ratio 0.75", ["phase2.synthesis_ratio=0.75"], SYNTH, {}),
    ("ltad_mb: bank weight 0.5", [], ["ltad_mb"], {**BANK, "memory_bank_weight": 0.5}),
    ("ltad_mb: bank weight 2", [], ["ltad_mb"], {**BANK, "memory_bank_weight": 2.0}),
    ("ltad_mb: banks from 5 images", [], ["ltad_mb"], {**BANK, "memory_bank_min_images": 5}),
    ("ltad_mb: banks from 30 images", [], ["ltad_mb"], {**BANK, "memory_bank_min_images": 30}),
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rows", required=True, type=Path, help="JSONL the labelled rows are appended to")
    p.add_argument("--only", type=int, nargs="*", help="candidate numbers to run (default: all)")
    args = p.parse_args(argv)
    base = yaml.safe_load((REPO / "configs/study-validation.yaml").read_text())
    done = set()
    if args.rows.is_file():
        done = {json.loads(line).get("candidate") for line in args.rows.read_text().splitlines() if line}
    for n, (label, overrides, methods, fields) in enumerate(CANDIDATES):
        if args.only and n not in args.only:
            continue
        out = args.out / str(n)
        out.mkdir(parents=True, exist_ok=True)
        spec = out.parent / f"spec-{n}.yaml"
        spec.write_text(yaml.safe_dump({**base, **fields, "set": overrides, "methods": methods}))
        code = study.main(["--config", str(spec), "--out", str(out), "--work", str(args.out / "work")])
        if code != 0:
            return code
        if label in done:
            continue
        rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line]
        with open(args.rows, "a") as f:
            for r in rows:
                f.write(json.dumps({"candidate": label, **r}, sort_keys=True) + "\n")
        print({r["method"]: round(r["image_AUROC"], 4) for r in rows}, label, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
