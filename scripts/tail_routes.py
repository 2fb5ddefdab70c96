#!/usr/bin/env python
"""Issue 27's routes for the tail without CLIP, on the validation data with lobe pseudo-defects.

python scripts/tail_routes.py --out runs/tail-routes --rows docs/results/tail-routes.jsonl --only 0 1
Each candidate is configs/study-validation.yaml (validation dataset seed 1, exp:100, seed 0) with
`test_defects: lobe` (the anomalous test images are lobe copies of the normal test images, sharing no
mask shape or fill recipe with any test defect of the reported study) and a few overrides of
configs/study-model.yaml, run by jobs/study.py into OUT/<n>. Its rows are appended to --rows with the
candidate's label and two costs: `feature_bytes_per_image` (the fp16 patch features one image puts in
the feature cache: D x g x g x 2) and `phase2_step_s` (phase-2 training seconds per step; kNN rows
have `fit_s`, bank and scoring). Features route (item 2): the current grid 8 at 128 px against grid 16
(layer 1 pooled to stride 8, layer 2 at its own stride 8, layer 3 upsampled), and the Lite2 trunk
(`ltad-effnet-lite2`, the `lite2` extra) at both grids. Semantic route (item 3):
one learned abnormal anchor shared by every class (`model.semantic.abnormal_anchor: shared`), trained
on Perlin-region pseudo-anomalies of the training images encoded into the cache
(`phase2.pseudo_anomaly: cached`), against the paper's per-class anchors on the same pseudo-anomalies.
Resumable: a finished candidate is not run again, and its rows are not appended twice.
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

GRID16 = ["model.encoder.grid=16"]
LITE2 = ["model.encoder.name=ltad-effnet-lite2"]
SHARED = ["model.semantic.abnormal_anchor=shared", "phase2.pseudo_anomaly=cached"]
# (label, config overrides, methods)
CANDIDATES = [
    ("lite0 grid 8 (current)", [], ["ltad", "rec_only", "sem_only", "knn"]),
    ("lite0 grid 16 (stride 8)", GRID16, ["knn"]),
    ("shared abnormal anchor, cached Perlin pseudo-anomalies", SHARED, ["ltad", "sem_only"]),
    ("per-class anchors, cached Perlin pseudo-anomalies", ["phase2.pseudo_anomaly=cached"],
     ["ltad", "sem_only"]),
    ("lite0 grid 16 (stride 8): rec_only", GRID16, ["rec_only"]),
    ("shared abnormal anchor, feature pseudo-anomalies", ["model.semantic.abnormal_anchor=shared"],
     ["ltad", "sem_only"]),
    ("lite2 grid 8", LITE2, ["knn", "rec_only"]),
    ("lite2 grid 16 (stride 8)", [*LITE2, *GRID16], ["knn"]),
]  # fmt: skip


def feature_bytes(spec_path: Path) -> int:
    """fp16 bytes of one image's patch features under the candidate's encoder config."""
    from ltad.models.encoder import Encoder
    from ltad.study.run import model_config
    from ltad.study.spec import load_spec

    spec = load_spec(spec_path)
    enc = model_config(spec, spec.seeds[0]).model.encoder
    return Encoder(enc).feature_dim * enc.grid * enc.grid * 2


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: every (candidate, method) with its validation figures and costs; for each `ltad`
    row, LTAD minus the current encoder's `rec_only` per tail class, paired, with the study's interval."""
    from ltad.study.paired import paired_class_cells

    ref = next((r for r in rows if r["method"] == "rec_only" and r["candidate"] == CANDIDATES[0][0]), None)
    out = []
    for r in rows:
        vs = "rec_only" if r["method"] == "ltad" and ref is not None else None
        paired = ""
        if vs is not None and ref is not None:
            p = paired_class_cells([{**r, "method": "a"}, {**ref, "method": "b"}], r["level"], "a", "b")
            paired = (
                p.describe() + ", per class " + ", ".join(f"{100 * d:+.1f}" for d in p.diffs) if p else ""
            )
        step = f"{r['phase2_step_s'] * 1000:.0f} ms" if "phase2_step_s" in r else f"fit+score {r['fit_s']} s"
        out.append(
            f"| {r['candidate']} | {r['method']} | {100 * r['image_AUROC']:.1f} | "
            f"{100 * r['tail_image_AUROC']:.1f} | {paired} | {r['feature_bytes_per_image'] / 1024:.1f} KiB | "
            f"{step} |"
        )
    return out


def test_lines(study_rows: list[dict], knn16_rows: list[dict]) -> list[str]:
    """On the reported study's test data: the grid-16 kNN against the committed grid-8 kNN and against
    LTAD and its class-bank variant, paired by seed at every level (the study's t-interval)."""
    from ltad.study.paired import paired_class_cells, paired_rows

    knn16_rows = [r for r in knn16_rows if r["method"] == "knn"]
    rows = [*study_rows, *({**r, "method": "knn16"} for r in knn16_rows)]
    out = []
    for lv in dict.fromkeys(r["level"] for r in knn16_rows):
        parts = []
        for first, second in (("knn16", "knn"), ("ltad", "knn16"), ("ltad_mb", "knn16")):
            p = paired_rows(rows, lv, first, second, "image_AUROC")
            if p is not None:
                parts.append(f"{first} - {second} {p.describe()} [{p.verdict(0.0, strict=True)}]")
        tail = paired_class_cells(rows, lv, "ltad", "knn16") if lv.endswith("100") else None
        if tail is not None:
            parts.append(f"tail classes ltad - knn16 {tail.describe()}")
        mean = [100 * r["image_AUROC"] for r in knn16_rows if r["level"] == lv]
        out.append(f"- {lv}: knn16 mean {sum(mean) / len(mean):.1f}; " + "; ".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="folder of the candidates' runs")
    p.add_argument("--rows", required=True, type=Path, help="JSONL the labelled rows are appended to")
    p.add_argument("--only", type=int, nargs="*", help="candidate numbers to run (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="only print the routes table of --rows")
    p.add_argument(
        "--test",
        nargs=2,
        type=Path,
        metavar=("STUDY_ROWS", "KNN16_ROWS"),
        help="only print the grid-16 kNN's paired comparisons on the reported study's test data",
    )
    args = p.parse_args(argv)
    if args.test:
        study_rows, knn16 = ([json.loads(x) for x in f.read_text().splitlines() if x] for f in args.test)
        print("\n".join(test_lines(study_rows, knn16)))
        return 0
    if args.table:
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line]
        print("\n".join(table(rows)))
        return 0
    if args.out is None:
        p.error("--out is required unless --table")
    base = yaml.safe_load((REPO / "configs/study-validation.yaml").read_text())
    done = set()
    if args.rows.is_file():
        done = {json.loads(line).get("candidate") for line in args.rows.read_text().splitlines() if line}
    for n, (label, overrides, methods) in enumerate(CANDIDATES):
        if args.only and n not in args.only:
            continue
        out = args.out / str(n)
        out.mkdir(parents=True, exist_ok=True)
        spec = out.parent / f"spec-{n}.yaml"
        fields = {"test_defects": "lobe", "label": f"tail routes (issue 27): {label}"}
        spec.write_text(yaml.safe_dump({**base, **fields, "set": overrides, "methods": methods}))
        argv_ = ["--config", str(spec), "--out", str(out), "--work", str(args.out / "work")]
        code = study.main([*argv_, "--threads", str(args.threads)])
        if code != 0:
            return code
        if label in done:
            continue
        per_image = feature_bytes(spec)
        steps = yaml.safe_load((REPO / base["config"]).read_text())["phase2"]["steps"]
        rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line]
        with open(args.rows, "a") as f:
            for r in rows:
                cost = {"feature_bytes_per_image": per_image, "overrides": overrides}
                if "phase2_s" in r:
                    cost["phase2_step_s"] = round(r["phase2_s"] / steps, 4)
                f.write(json.dumps({"candidate": label, **r, **cost}, sort_keys=True) + "\n")
        print({r["method"]: round(r["image_AUROC"], 4) for r in rows}, label, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
