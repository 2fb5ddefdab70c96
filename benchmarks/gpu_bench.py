"""The parts of benchmarks/gpu.sh, the GPU path's one prepared check (one part per process, so peak
memory is clean). Each prints one JSON object.

    precision             the card, bf16 support (torch.cuda.is_bf16_supported) and the precision ltad
                          picks from it (bf16, else fp16; ltad/training/precision.py); NCCL: a
                          one-process group and an all-reduce on the GPU
    phase2 --zero N       phase-2 steps/s, real samples/s and peak GPU memory of DeepSpeed ZeRO-N under
                          that precision on ViT-B-16-sized features (D = 3 x 768, 14 x 14); then a save
                          and restore: a new engine loaded from the checkpoint repeats the next steps
                          with the same losses
    encode --work D       synthetic 224-px shards in D encoded by ViT-B-16 (random weights: speed only)
                          into the feature cache under autocast (images/s; the cache's recorded
                          precision), then the training stream's rate over that cache (real samples/s)
    pipeline --work D     the real job on the GPU: Ray Train with use_gpu (NCCL), encode, both phases
                          and evaluation, a few steps

`--device cpu` runs a part on the CPU at toy sizes: a development check of this script, never a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ltad.config import LTADConfig  # noqa: E402
from ltad.training import precision as precisions  # noqa: E402

VIT = {"name": "ViT-B-16", "pretrained": "none", "layers": [5, 8, 11], "grid": 14, "image_size": 224}
RESTORE_TOLERANCE = 1e-2
"""Largest relative loss difference between the saved engine's next steps and the restored one's."""
TOY = {"name": "ltad-effnet-lite0", "pretrained": "none", "layers": [1, 2, 3], "grid": 8, "image_size": 64}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _process_group(device: torch.device) -> None:
    """A one-process group (NCCL on the GPU, gloo on the CPU), as Ray Train would have made."""
    from ltad.training.dist import init_distributed
    from tools.services.ports import free_port

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    init_distributed(device.type == "cuda")


def precision_part(device: torch.device) -> dict:
    import torch.distributed as dist

    mode = precisions.of_device(device)
    _process_group(device)
    x = torch.ones(4, device=device)
    dist.all_reduce(x)
    _sync(device)
    out = {
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "bf16_supported": precisions.bf16_supported(),
        "precision": mode,
        "backend": dist.get_backend(),
        "nccl_available": dist.is_nccl_available(),
        "all_reduce_ok": bool(torch.equal(x.cpu(), torch.ones(4))),
    }
    dist.destroy_process_group()
    return out


def phase2_part(device: torch.device, zero: int, steps: int, batch: int) -> dict:
    import torch.distributed as dist

    from ltad.models.state import build_model
    from ltad.training.engine import (
        build_engine,
        deepspeed_config,
        load_zero_config,
        move_batch,
        param_groups,
    )
    from ltad.training.loop import step_seed
    from ltad.training.objectives import Phase2Objective

    gpu = device.type == "cuda"
    _process_group(device)
    enc = VIT if gpu else TOY
    cfg = LTADConfig.from_dict(
        {
            "model": {"encoder": enc},
            "scaling": {"use_gpu": gpu, "zero_stage": zero},
            "data": {"batch_size": batch},
        }
    )

    def engine_of():
        torch.manual_seed(0)
        model = build_model(cfg, 15).to(device)
        objective = Phase2Objective(model, list(range(15, 0, -1)), cfg.phase2, batch_size=batch)
        p = cfg.phase2
        ds = deepspeed_config(
            load_zero_config(zero), cfg.scaling, batch_size=batch, lr=p.lr, weight_decay=p.weight_decay,
            grad_clip=p.grad_clip,
        )  # fmt: skip
        return build_engine(objective, param_groups(objective), ds), model, objective.n_real

    engine, model, n_real = engine_of()
    g = enc["grid"]
    generator = torch.Generator().manual_seed(1)
    data = {
        "patches": torch.randn(batch, model.feature_dim, g, g, generator=generator),
        "global_emb": torch.randn(batch, model.embed_dim, generator=generator),
        "class_id": torch.arange(batch) % 15,
    }
    if gpu:
        torch.cuda.reset_peak_memory_stats()

    def step(eng, i: int) -> float:
        torch.manual_seed(step_seed(0, 0, i))
        loss, _ = eng(move_batch(data, eng.device))
        eng.backward(loss)
        eng.step()
        return float(loss.detach())

    for i in range(3):
        step(engine, i)
    _sync(device)
    tic = time.perf_counter()
    for i in range(3, 3 + steps):
        step(engine, i)
    _sync(device)
    sps = steps / (time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else 0.0
    # save, take 3 more steps; a fresh engine loaded from the save must take the same 3 steps
    at = 3 + steps
    with tempfile.TemporaryDirectory(prefix="ltad-gpu-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag="ds", client_state={"step": at})
        after = [step(engine, i) for i in range(at, at + 3)]
        fresh, _, _ = engine_of()
        _, client = fresh.load_checkpoint(tmp, tag="ds")
        again = [step(fresh, i) for i in range(at, at + 3)]
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(after, again))
    restored = int((client or {}).get("step", -1))
    dist.destroy_process_group()
    return {
        f"phase2_zero{zero}_steps_per_s": round(sps, 2),
        f"phase2_zero{zero}_real_samples_per_s": round(sps * n_real, 1),
        f"phase2_zero{zero}_peak_gpu_mib": round(peak, 1),
        f"phase2_zero{zero}_restore_max_rel_loss_diff": float(f"{diff:.3g}"),
        f"phase2_zero{zero}_restore_ok": restored == at and diff < RESTORE_TOLERANCE,
        "phase2_batch": batch,
        "phase2_real_per_step": n_real,
    }


def _shards(work: Path, image_size: int, per_class: int) -> str:
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    root = synthesize(
        work / "synth", classes=4, image_size=image_size, train_per_class=per_class, test_per_class=4
    )
    split = make_split(read_dataset("synth", root), "exp", ratio=4, seed=0)
    out = str(work / "shards")
    prepare("synth", root, split.save(work / "split.json"), out, test_shard_samples=16, log=lambda _m: None)
    return out


def encode_part(device: torch.device, work: Path, batch: int, real_per_step: int, steps: int) -> dict:
    """The encode into the feature cache under the device's precision, then the training stream's rate
    over that cache: the real samples per second phase 2 could be fed (`real_per_step` per step)."""
    from ltad.config import EncoderConfig
    from ltad.data.manifest import read_manifest
    from ltad.io import storage
    from ltad.models.encoder import Encoder
    from ltad.training.data import training_batches
    from ltad.training.feature_cache import encode, manifest_uri

    gpu = device.type == "cuda"
    enc = VIT if gpu else TOY
    data = _shards(work, enc["image_size"], per_class=64 if gpu else 8)
    manifest = read_manifest(data)
    encoder = Encoder(EncoderConfig(**{**enc, "layers": tuple(enc["layers"])})).to(device)
    images = manifest.samples("train") + manifest.samples("test") + manifest.samples("val")
    tic = time.perf_counter()
    cache = encode(encoder, data, batch_size=batch, log=lambda _m: None)
    _sync(device)
    took = time.perf_counter() - tic
    recorded = storage.read_json(manifest_uri(cache))["extra"]["precision"]
    cfg = LTADConfig.from_dict(
        {
            "model": {"encoder": enc},
            "data": {"uri": data, "batch_size": real_per_step, "use_feature_cache": True},
        }
    )
    stream = training_batches(cfg, data, manifest, cache, seed=0, rank=0, world_size=1, start_step=0)
    next(stream)  # opening the sources is start-up, not rate
    tic = time.perf_counter()
    samples = sum(int(next(stream)["class_id"].shape[0]) for _ in range(steps))
    rate = samples / (time.perf_counter() - tic)
    return {
        "encode_images": images,
        "encode_images_per_s": round(images / took, 1),
        "encode_precision": recorded,
        "stream_real_samples_per_s": round(rate, 1),
    }


def pipeline_part(device: torch.device, work: Path) -> dict:
    import ray

    from ltad.training.pipeline import run_pipeline

    gpu = device.type == "cuda"
    data = _shards(work, 128, per_class=20)
    overrides = [
        f"data.uri={data}", f"run.output={work / 'out'}", f"scaling.use_gpu={str(gpu).lower()}",
        "scaling.num_workers=1", f"phase1.steps={20 if gpu else 2}", f"phase2.steps={40 if gpu else 2}",
        "phase2.stats_samples=32", "run.name=gpu-check", "run.max_failures=0",
    ]  # fmt: skip
    cfg = LTADConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").with_overrides(
        overrides
    )
    ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        num_cpus=2 if not gpu else None,
    )
    tic = time.perf_counter()
    metrics = run_pipeline(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    ray.shutdown()
    return {
        "pipeline_ok": metrics["n_evaluated"] > 0,
        "pipeline_wall_s": round(time.perf_counter() - tic, 1),
        "pipeline_image_AUROC": metrics["image_AUROC"],
        "pipeline_evaluated": metrics["n_evaluated"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("precision", "phase2", "encode", "pipeline"))
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--real-per-step", type=int, default=8, help="encode: phase 2's real samples per step")
    ap.add_argument("--work", default="")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU visible (torch.cuda.is_available() is False)")
    work = Path(args.work or tempfile.mkdtemp(prefix="ltad-gpu-"))
    if args.what == "precision":
        out = precision_part(device)
    elif args.what == "phase2":
        out = phase2_part(device, args.zero, args.steps, args.batch)
    elif args.what == "encode":
        out = encode_part(device, work, args.batch, args.real_per_step, args.steps)
    else:
        out = pipeline_part(device, work)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
