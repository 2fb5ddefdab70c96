"""GPU figures for benchmarks/gpu.sh (one measurement per process, so peak memory is clean).

    encoder             ViT-B-16 images/s at 224 px (bf16 autocast, random weights: speed only)
    phase2 --zero N     phase-2 steps/s and peak GPU memory of DeepSpeed ZeRO-N (bf16 autocast),
                        ViT-B-16-sized cached features (D = 3 x 768, 14 x 14), one process
    pipeline --work D   the real job path on the GPU: synthetic shards in D, Ray Train with
                        use_gpu=True (NCCL, bf16), both phases and evaluation, a few steps
Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ltad.config import LTADConfig  # noqa: E402

VIT = {"name": "ViT-B-16", "pretrained": "none", "layers": [5, 8, 11], "grid": 14, "image_size": 224}


def encoder(batch: int, iters: int) -> dict:
    from ltad.config import EncoderConfig
    from ltad.models.encoder import Encoder

    enc = Encoder(EncoderConfig(**{**VIT, "layers": tuple(VIT["layers"])})).cuda()
    x = torch.rand(batch, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            enc.encode_images(x)
        torch.cuda.synchronize()
        tic = time.perf_counter()
        for _ in range(iters):
            enc.encode_images(x)
        torch.cuda.synchronize()
    return {
        "encoder_vit_b16_224_images_per_s": round(batch * iters / (time.perf_counter() - tic), 1),
        "batch": batch,
    }


def phase2(zero: int, steps: int, batch: int) -> dict:
    from ltad.models.state import build_model
    from ltad.training.dist import init_distributed
    from ltad.training.engine import (
        build_engine,
        deepspeed_config,
        load_zero_config,
        move_batch,
        param_groups,
    )
    from ltad.training.objectives import Phase2Objective
    from tools.services.ports import free_port

    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    os.environ.update(env)
    init_distributed(True)
    cfg = LTADConfig.from_dict(
        {
            "model": {"encoder": VIT},
            "scaling": {"use_gpu": True, "zero_stage": zero},
            "data": {"batch_size": batch},
        }
    )
    model = build_model(cfg, 15).cuda()
    objective = Phase2Objective(model, list(range(15, 0, -1)), cfg.phase2, batch_size=batch)
    p = cfg.phase2
    ds = deepspeed_config(
        load_zero_config(zero),
        cfg.scaling,
        batch_size=batch,
        lr=p.lr,
        weight_decay=p.weight_decay,
        grad_clip=p.grad_clip,
    )
    engine = build_engine(objective, param_groups(objective), ds)
    data = {
        "patches": torch.randn(batch, model.feature_dim, 14, 14),
        "global_emb": torch.randn(batch, model.embed_dim),
        "class_id": torch.arange(batch) % 15,
    }
    torch.cuda.reset_peak_memory_stats()

    def step():
        loss, _ = engine(move_batch(data, engine.device))
        engine.backward(loss)
        engine.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    sps = steps / (time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.distributed.destroy_process_group()
    return {
        f"phase2_zero{zero}_steps_per_s": round(sps, 2),
        f"phase2_zero{zero}_peak_gpu_mib": round(peak, 1),
        "batch": batch,
    }


def pipeline(work: Path) -> dict:
    import ray

    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize
    from ltad.training.pipeline import run_pipeline

    root = synthesize(work / "synth", classes=4, image_size=128, train_per_class=20, test_per_class=8)
    split = make_split(read_dataset("synth", root), "exp", ratio=10, seed=0)
    prepare(
        "synth",
        root,
        split.save(work / "split.json"),
        str(work / "shards"),
        test_shard_samples=8,
        log=lambda _m: None,
    )
    overrides = [
        f"data.uri={work / 'shards'}", f"run.output={work / 'out'}", "scaling.use_gpu=true", "scaling.num_workers=1",
        "phase1.steps=20", "phase2.steps=40", "phase2.stats_samples=64", "run.name=gpu-smoke",
    ]  # fmt: skip
    cfg = LTADConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").with_overrides(
        overrides
    )
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    tic = time.perf_counter()
    metrics = run_pipeline(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    ray.shutdown()
    return {
        "pipeline_use_gpu_nccl_bf16_ok": True,
        "pipeline_wall_s": round(time.perf_counter() - tic, 1),
        "pipeline_image_AUROC": metrics["image_AUROC"],
        "pipeline_evaluated": metrics["n_evaluated"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("encoder", "phase2", "pipeline"))
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--work", default="/tmp/ltad-gpu-bench")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU visible")
    if args.what == "encoder":
        out = encoder(batch=64, iters=args.steps // 2)
    elif args.what == "phase2":
        out = phase2(args.zero, args.steps, args.batch)
    else:
        out = pipeline(Path(args.work))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
