"""Print JSON: phase-2 steps/s of one model and batch, bare PyTorch vs Ray Train + DeepSpeed (1 worker).

Inside one Ray Train worker, two identical copies of the Phase2Objective (demo model from
configs/demo.yaml unless --config) train on the same fixed batch of cached-feature-shaped tensors with
the same thread count: one through a plain AdamW loop, one through the DeepSpeed engine (ZeRO --zero),
timed in alternating blocks so that load from other processes hits both alike. The ratio is what
DeepSpeed and the Ray worker add per step (target >= 0.9); the Ray run's wall time with start-up is
reported beside it.
Usage: .venv/bin/python benchmarks/train_overhead.py [--rounds 4] [--per-round 8] [--warmup 3] [--threads 2] [--zero 2]
"""

from __future__ import annotations

import argparse
import functools
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
from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

from ltad.config import LTADConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make(cfg: LTADConfig, num_classes: int = 8):
    """(objective, batch): the phase-2 objective of a fresh model and one fixed batch."""
    from ltad.models.state import build_model
    from ltad.training.objectives import Phase2Objective

    model = build_model(cfg, num_classes)
    objective = Phase2Objective(
        model, [num_classes - c for c in range(num_classes)], cfg.phase2, batch_size=cfg.data.batch_size
    )
    g = torch.Generator().manual_seed(0)
    b, d, grid = cfg.data.batch_size, model.feature_dim, model.grid
    batch = {
        "patches": torch.randn(b, d, grid, grid, generator=g),
        "global_emb": torch.randn(b, model.embed_dim, generator=g),
        "class_id": torch.arange(b) % num_classes,
    }
    return objective, batch


def bare_step(objective, batch, p):
    """One plain PyTorch step function (AdamW, grad clipping) over the objective's trainable params."""
    params = [q for q in objective.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)

    def step():
        loss, _ = objective(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
        opt.step()

    return step


def interleaved(steps: dict, rounds: int, per_round: int, warmup: int) -> dict[str, float]:
    """Steps/s of each step function, timed in alternating blocks so load drift hits all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    spent = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            tic = time.perf_counter()
            for _ in range(per_round):
                step()
            spent[name] += time.perf_counter() - tic
    return {name: rounds * per_round / t for name, t in spent.items()}


def ray_worker(loop: dict, bench: dict) -> None:
    """In one Ray Train worker: the bare loop and the DeepSpeed engine on identical copies, interleaved."""
    import ray.train

    from ltad.training.dist import init_distributed
    from ltad.training.engine import build_engine, deepspeed_config, move_batch, param_groups
    from ltad.training.inputs import StageInput

    inp = StageInput.of(loop)
    cfg = inp.config
    torch.set_num_threads(bench["threads"])
    init_distributed(False)
    p = cfg.phase2
    torch.manual_seed(0)
    bare_objective, batch = make(cfg)
    torch.manual_seed(0)
    ds_objective, _ = make(cfg)
    ds = deepspeed_config(
        inp.deepspeed, cfg.scaling, batch_size=cfg.data.batch_size, lr=p.lr, weight_decay=p.weight_decay,
        grad_clip=p.grad_clip,
    )  # fmt: skip
    engine = build_engine(ds_objective, param_groups(ds_objective), ds)
    ds_batch = move_batch(batch, engine.device)

    def ds_step():
        loss, _ = engine(ds_batch)
        engine.backward(loss)
        engine.step()

    sps = interleaved(
        {"bare": bare_step(bare_objective, batch, p), "deepspeed": ds_step},
        bench["rounds"], bench["per_round"], bench["warmup"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # Train V2 keeps only metrics reported with a checkpoint
        Path(tmp, "steps_per_s.json").write_text(json.dumps(sps))
        ray.train.report(sps, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zero", type=int, default=2)
    add_json_flag(ap)
    args = ap.parse_args()
    cfg = LTADConfig.from_yaml(args.config).with_overrides(
        [
            f"scaling.zero_stage={args.zero}",
            "scaling.num_workers=1",
            f"scaling.cpus_per_worker={args.threads}",
        ]
    )
    import ray

    from ltad.training.inputs import stage_input
    from ltad.training.ray_run import fit
    from tools.services.ports import free_port

    ray.init(
        num_cpus=args.threads,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
    )
    tic = time.perf_counter()
    bench = {
        "threads": args.threads,
        "rounds": args.rounds,
        "per_round": args.per_round,
        "warmup": args.warmup,
    }
    run_cfg = cfg.with_overrides([f"run.output=/tmp/ltad-bench-{os.getpid()}"])
    result = fit(functools.partial(ray_worker, bench=bench), stage_input(run_cfg), name="overhead")
    wall = time.perf_counter() - tic
    ray.shutdown()
    bare_sps, ray_sps = result.metrics["bare"], result.metrics["deepspeed"]
    emit(
        {
            "benchmark": "train_overhead",
            "model": Path(args.config).name,
            "batch_size": cfg.data.batch_size,
            "threads": args.threads,
            "zero_stage": args.zero,
            "steps_each": args.rounds * args.per_round,
            "bare_pytorch_steps_per_s": round(bare_sps, 3),
            "ray_deepspeed_steps_per_s": round(ray_sps, 3),
            "ratio": round(ray_sps / bare_sps, 3),
            "target_ratio": 0.9,
            "ray_run_wall_s_with_startup": round(wall, 1),
            "measured": "in one Ray Train worker: bare and DeepSpeed loops timed in alternating blocks",
            "load_average": os.getloadavg()[0],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
