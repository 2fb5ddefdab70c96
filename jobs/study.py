"""Quality study: LTAD vs its ablations and a kNN baseline across imbalance levels and seeds.

python jobs/study.py --spec configs/study.yaml --out runs/study         # the full study (~1 h, 2 CPUs)
python jobs/study.py --spec configs/study-smoke.yaml --out runs/smoke  # the CI smoke (~2 min)
Resumable: rerun the same command after an interruption. Writes rows.jsonl, report.md, summary.json
and plots/ under --out; `--report-only` rewrites the report from the rows already there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ltad.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/study.py", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="configs/study.yaml", metavar="YAML", help="study config")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (local)")
    parser.add_argument("--work", metavar="DIR", help="dataset + feature cache folder (default: OUT/work)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from OUT's rows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ltad.study.report import write_report
    from ltad.study.run import pin_spec, run_study
    from ltad.study.spec import load_spec

    try:
        spec = load_spec(args.spec)
        out = Path(args.out)
        if args.report_only:
            pin_spec(out, spec)
        else:
            run_study(spec, out, Path(args.work) if args.work else None)
        report = write_report(spec, out)
    except UserError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
    print(f"study: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
