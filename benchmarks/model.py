"""Print JSON: speed and size of the default LTAD model on the CPU (224 px, batch 8, MVTec's 15 classes).

Times (median of --repeats after one warm-up) for encoding a batch, each phase objective's forward and
forward+backward on cached features, starting phase 2 (text embeddings of the frozen names), and
scoring; trainable parameters per phase vs frozen encoder parameters; peak RSS of this process after
each stage (importing torch + open_clip alone is ~850 MB).
The machine's load average is printed too: on a shared CPU the times scale with it.
Usage: .venv/bin/python benchmarks/model.py [--batch 8] [--image-size 224] [--classes 15] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

from ltad.config import EncoderConfig, ModelConfig, Phase2Config  # noqa: E402
from ltad.models.ltad import LTAD  # noqa: E402
from ltad.training.objectives import Phase1Objective, Phase2Objective  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def count(params) -> int:
    return sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    add_json_flag(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(image_size=args.image_size))
    start = time.perf_counter()
    model = LTAD(cfg, args.classes)
    build_s = time.perf_counter() - start
    peaks = {"after_build": peak_mb()}
    images = torch.rand(args.batch, 3, args.image_size, args.image_size)
    class_id = torch.arange(args.batch) % args.classes
    enc = model.encoder.encode_images(images)
    batch = {"patches": enc.patches.half(), "global_emb": enc.global_emb.half(), "class_id": class_id}
    counts = [100 // (c + 1) for c in range(args.classes)]

    def step(objective) -> Callable[[], None]:
        def run() -> None:
            objective.zero_grad(set_to_none=True)
            objective(batch)[0].backward()

        return run

    p1 = Phase1Objective(model, counts).train()
    p1_fwd = timed(lambda: p1(batch), args.repeats)
    p1_step = timed(step(p1), args.repeats)
    peaks["after_phase1"] = peak_mb()
    start = time.perf_counter()
    p2 = Phase2Objective(model, counts, Phase2Config(), batch_size=args.batch).train()
    phase2_start_s = time.perf_counter() - start
    p2_fwd = timed(lambda: p2(batch), args.repeats)
    p2_step = timed(step(p2), args.repeats)
    peaks["after_phase2"] = peak_mb()
    model.eval()
    model.fit_standardisation([(enc.patches, class_id)])
    with torch.no_grad():
        score_s = timed(
            lambda: model.score(enc.patches, enc.global_emb, (args.image_size,) * 2), args.repeats
        )
        encode_s = timed(lambda: model.encoder.encode_images(images), args.repeats)
    result = {
        "config": {"batch": args.batch, "image_size": args.image_size, "classes": args.classes},
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "weights": model.encoder.weights_provenance(),
        "feature_dim": model.feature_dim,
        "grid": model.grid,
        "embed_dim": model.embed_dim,
        "seconds": {
            "build": round(build_s, 3),
            "encode": encode_s,
            "phase1_forward": p1_fwd,
            "phase1_forward_backward": p1_step,
            "phase2_start_text_cache": round(phase2_start_s, 3),
            "phase2_forward": p2_fwd,
            "phase2_forward_backward": p2_step,
            "score": score_s,
        },
        "params": {
            "phase1_trainable": count(p1.parameters()),
            "phase2_trainable": count(p2.parameters()),
            "frozen_encoder": count(model.encoder.parameters()),
            "total": count(model.parameters()),
        },
        "peak_rss_mb": {**peaks, "final": peak_mb()},
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
