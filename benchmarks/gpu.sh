#!/usr/bin/env bash
# GPU figures in one go on a single-GPU machine (from the repository root, after `make setup`); prints one
# JSON object: ViT-B-16 encoder images/s at 224 px, phase-2 steps/s and peak GPU memory with ZeRO-2 vs
# ZeRO-3 (bf16), and a short real pipeline (Ray Train, use_gpu, NCCL, bf16) as a smoke test of the GPU path.
# Record the output in the README with the date and the GPU model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
WORK=$(mktemp -d /tmp/ltad-gpu-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
GPU=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
echo "gpu.sh: $GPU" >&2
{
  "$PY" benchmarks/gpu_bench.py encoder
  "$PY" benchmarks/gpu_bench.py phase2 --zero 2
  "$PY" benchmarks/gpu_bench.py phase2 --zero 3
  "$PY" benchmarks/gpu_bench.py pipeline --work "$WORK"
} > "$WORK/parts.jsonl"
"$PY" - "$WORK/parts.jsonl" "$GPU" <<'PYEOF'
import datetime, json, sys
out = {"benchmark": "gpu", "gpu": sys.argv[2], "date": datetime.date.today().isoformat()}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        part = json.loads(line)
        part.pop("batch", None)
        out.update(part)
print(json.dumps(out, indent=1))
PYEOF
