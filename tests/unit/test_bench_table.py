"""The README benchmark table reads every figure from the benchmarks' committed JSON, or says none is there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.bench_table import benchmark_rows, benchmark_table

ROOT = Path(__file__).resolve().parents[2]


def _write_with_provenance(tmp_path: Path, name: str, result: dict) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from record import emit
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    emit(result, str(tmp_path / name), ["--json", str(tmp_path / name)])


def test_a_row_quotes_its_json_and_where_it_came_from(tmp_path, capsys):
    _write_with_provenance(
        tmp_path,
        "bench-train_overhead.json",
        {
            "bare_pytorch_steps_per_s": 0.412,
            "ray_deepspeed_steps_per_s": 0.398,
            "ratio": 0.966,
            "steps_each": 32,
        },
    )
    assert json.loads(capsys.readouterr().out)["ratio"] == 0.966  # emit prints the figures too
    saved = json.loads((tmp_path / "bench-train_overhead.json").read_text())
    prov = saved["provenance"]
    assert prov["command"].startswith("python ") and prov["command"].endswith("bench-train_overhead.json")
    assert prov["git_commit"] and prov["machine"]["cpus"] >= 1 and prov["date"].endswith("Z")
    row = next(r for r in benchmark_rows(tmp_path) if r.startswith("| `benchmarks/train_overhead.py`"))
    assert "bare 0.412 vs Ray + DeepSpeed 0.398 steps/s, **ratio 0.966**" in row
    assert "`docs/results/bench-train_overhead.json`" in row and prov["date"][:10] in row


def test_missing_json_says_so_and_the_table_keeps_its_shape(tmp_path):
    table = benchmark_table(tmp_path)
    lines = table.strip().splitlines()
    assert lines[0] == "| script | what it compares | measured |" and len(lines) == 2 + 9
    stream = next(r for r in lines if r.startswith("| `benchmarks/stream.py`"))
    assert "**no committed figures**: `bench-stream.json` not yet in docs/results/" in stream
    assert "docs/results/bench-stream.json" not in stream  # never cites a file that is not there
