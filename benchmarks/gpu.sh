#!/usr/bin/env bash
# The GPU path's one prepared check, end to end on one GPU, in at most 8 minutes (from the repository
# root, after `make setup`): the card's bf16 support and the precision ltad picks from it (bf16, else
# fp16), NCCL, DeepSpeed ZeRO-2 and ZeRO-3 phase-2 speed with a save/restore each, the encode into the
# feature cache under that precision, phase 2's real samples/s against the training stream's rate, and
# the real job (Ray Train, use_gpu, NCCL) on synthetic data. Parts: benchmarks/gpu_bench.py.
# Writes one JSON object to $1 (default gpu-check.json) and prints it; exits 1 naming each missed
# target, and at once with one line where no CUDA GPU is visible. Not yet run on a GPU (docs/SCALE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-check.json}
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu.sh: no CUDA GPU visible (torch.cuda.is_available() is False): this check runs on a GPU machine only" >&2
  exit 1
fi
WORK=$(mktemp -d /tmp/ltad-gpu-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
part() {  # one part in its own process, bounded in time; its JSON line into the parts file
  local limit=$1; shift
  timeout "$limit" "$PY" benchmarks/gpu_bench.py "$@" 2>>"$WORK/stderr.log" | grep '^{' >>"$WORK/parts.jsonl" \
    || echo "{\"failed_$1\": \"exit or timeout after ${limit} s: see the stderr of gpu_bench.py $*\"}" >>"$WORK/parts.jsonl"
}
part 60 precision
part 90 phase2 --zero 2
part 90 phase2 --zero 3
REAL=$("$PY" -c 'import json,sys; print(next((json.loads(l)["phase2_real_per_step"] for l in open(sys.argv[1]) if "phase2_real_per_step" in l), 8))' "$WORK/parts.jsonl")
part 120 encode --work "$WORK/encode" --real-per-step "$REAL"
part 180 pipeline --work "$WORK/pipeline"
"$PY" - "$WORK/parts.jsonl" "$OUT" <<'PYEOF'
import datetime, json, sys
out = {"benchmark": "gpu", "date": datetime.date.today().isoformat()}
for line in open(sys.argv[1]):
    out.update(json.loads(line))
want = "bf16" if out.get("bf16_supported") else "fp16"
targets = {
    "precision detected (bf16 where supported, else fp16)": out.get("precision") == want,
    "NCCL all-reduce": out.get("backend") == "nccl" and out.get("all_reduce_ok") is True,
    "ZeRO-2 save/restore": out.get("phase2_zero2_restore_ok") is True,
    "ZeRO-3 save/restore": out.get("phase2_zero3_restore_ok") is True,
    "encode under the detected precision": out.get("encode_precision") == want,
    "training stream >= phase 2's real samples/s (ZeRO-2)": out.get("stream_real_samples_per_s", 0)
    >= out.get("phase2_zero2_real_samples_per_s", float("inf")),
    "the job on the GPU (Ray Train, NCCL)": out.get("pipeline_ok") is True,
}
out["targets"] = targets
out["missed"] = [name for name, ok in targets.items() if not ok]
text = json.dumps(out, indent=1)
open(sys.argv[2], "w").write(text + "\n")
print(text)
if out["missed"]:
    print(f"gpu.sh: missed: {'; '.join(out['missed'])}", file=sys.stderr)
    sys.exit(1)
PYEOF
