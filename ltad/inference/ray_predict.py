"""`ltad predict` as a Ray Data job: parts read and decoded in tasks, scored by an actor pool.

The driver lists the inputs (sorted), writes or checks the plan (`ltad.inference.batch`), and feeds
only the parts not yet committed to a streaming Ray Data pipeline: `map` decodes one part's images in
a light task (`READ_CPUS`), `map_batches` with a callable class (`Scorer`, one part per call) loads the
model once per actor, scores the part and commits it. GPU actors (one GPU each) when the cluster has
GPUs, CPU actors otherwise. The driver sees only one small row per part (its counts) and writes the
manifest when every part is committed, so its memory does not grow with the images. Ray must be
connected by the caller (`ltad.training.cluster.connect`).

`LTAD_PREDICT_FAULT_AFTER=N` (read on the driver, for the resume tests) makes every actor fail when it
starts its (N+1)-th part, after committing N: the job stops as a killed one would.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from ltad.errors import ConfigError, DataError
from ltad.inference import batch
from ltad.inference.model_files import download_model
from ltad.io import storage

READ_CPUS = 0.25
"""CPU of a decode task: small, so decoding fits beside actors that hold the other CPUs."""
FAULT_VAR = "LTAD_PREDICT_FAULT_AFTER"


class Interrupted(DataError):
    """The Ray Data job stopped before every part was committed; a rerun resumes it."""


@dataclass
class Resources:
    """Per actor: CPUs, GPUs, torch threads, device."""

    cpus: float
    gpus: float
    threads: int
    device: str


def actor_resources(workers: int) -> Resources:
    """One GPU per actor when the cluster has GPUs; else up to one CPU each, leaving READ_CPUS free."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), float(total.get("CPU", 0))
    if gpus:
        if workers > gpus:
            raise ConfigError(f"--workers {workers}: this Ray cluster has {gpus} GPUs (one per worker)")
        return Resources(min(1.0, max(0.0, (cpus - READ_CPUS) / workers)), 1.0, 1, "cuda")
    share = min(1.0, (cpus - READ_CPUS) / workers)
    if share < 0.25:
        raise ConfigError(f"--workers {workers} is more than this Ray cluster's {cpus:g} CPUs can run")
    return Resources(share, 0.0, 1, "cpu")


def default_workers() -> int:
    """Without --workers: one actor per GPU, else one per CPU (less the decode tasks' share)."""
    total = ray.cluster_resources()
    return int(total.get("GPU", 0)) or max(1, int(float(total.get("CPU", 1)) - READ_CPUS))


def read_part(row: dict[str, Any]) -> dict[str, Any]:
    """Decode one part's images (Ray Data `map`); an unreadable one becomes its error message."""
    shapes, pixels, errors = [], [], []
    for uri in row["uris"]:
        try:
            rgb = batch.decode(uri)
            shapes.append(list(rgb.shape))
            pixels.append(rgb.tobytes())
            errors.append("")
        except DataError as exc:
            shapes.append([0, 0, 3])
            pixels.append(b"")
            errors.append(str(exc))
    return {**row, "shapes": shapes, "pixels": pixels, "errors": errors}


class Scorer:
    """The model once per actor; each call scores and commits one part (`batch.score_part`)."""

    def __init__(
        self, model: str, out: str, device: str, batch_size: int, maps: bool, threads: int, fault_after: int
    ) -> None:
        import numpy as np
        import torch

        from ltad.inference.predictor import Predictor

        torch.set_num_threads(threads)
        self.np, self.out, self.maps, self.fault_after, self.done = np, out, maps, fault_after, 0
        if storage.is_s3(model):
            with tempfile.TemporaryDirectory(prefix="ltad-model-") as tmp:
                self.predictor = Predictor.load(download_model(model, Path(tmp)), device, batch_size)
        else:
            self.predictor = Predictor.load(model, device, batch_size)

    def __call__(self, table: pa.Table) -> dict[str, list[int]]:
        np = self.np
        counts = []
        for row in table.to_pylist():
            if self.fault_after >= 0 and self.done >= self.fault_after:
                raise RuntimeError(f"{FAULT_VAR}={self.fault_after}: failing part {row['part']} on purpose")
            images = [
                err or np.frombuffer(px, np.uint8).reshape(shape)
                for px, shape, err in zip(row["pixels"], row["shapes"], row["errors"])
            ]
            counts.append(
                batch.score_part(
                    self.predictor, self.out, row["part"], row["uris"], row["names"], images, self.maps
                )
            )
            self.done += 1
        return {
            "part": [c.part for c in counts],
            "scored": [c.scored for c in counts],
            "failed": [c.failed for c in counts],
            "anomalous": [c.anomalous for c in counts],
        }


def fault_after() -> int:
    raw = os.environ.get(FAULT_VAR, "")
    try:
        return int(raw) if raw else -1
    except ValueError:
        raise ConfigError(f"{FAULT_VAR} must be an int, got {raw!r}") from None


def run(
    images: str,
    model: str,
    out: str,
    *,
    workers: int | None,
    batch_size: int,
    part_size: int,
    maps: bool,
    overwrite: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Score every image under `images` into `out` on the connected Ray cluster; returns the manifest."""
    from ltad.data.progress import Progress
    from ltad.inference.export import read_meta

    started = time.monotonic()
    uris, names = batch.list_inputs(images)
    with tempfile.TemporaryDirectory(prefix="ltad-model-") as tmp:
        local = download_model(model, Path(tmp)) if storage.is_s3(model) else Path(model)
        read_meta(local)  # a clear error here rather than in every actor
        digest = batch.model_digest(local)
    plan = batch.Plan(
        images, model, len(uris), batch.inputs_digest(uris), digest, part_size, maps, batch.FORMAT
    )
    done = batch.start(out, plan, overwrite)
    pending = [p for p in range(plan.parts) if p not in done]
    counts = [batch.read_counts(out, p) for p in sorted(done)]
    if done:
        log(f"resuming {out}: {len(done)} of {plan.parts} parts already committed")
    if pending:
        workers = workers or default_workers()
        res = actor_resources(workers)
        items = []
        for p in pending:
            lo, hi = plan.bounds(p)
            items.append({"part": p, "uris": uris[lo:hi], "names": names[lo:hi]})
        del uris, names
        ray.data.DataContext.get_current().enable_progress_bars = False  # our Progress lines instead
        source = ray.data.from_items(items, override_num_blocks=len(items))
        del items
        ds = source.map(read_part, num_cpus=READ_CPUS).map_batches(
            Scorer,
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=res.cpus,
            num_gpus=res.gpus,
            fn_constructor_kwargs={
                "model": model,
                "out": out,
                "device": res.device,
                "batch_size": batch_size,
                "maps": maps,
                "threads": res.threads,
                "fault_after": fault_after(),
            },
        )
        progress = Progress("predict", total=plan.inputs, unit="images", log=log, every=10.0)
        progress.add(sum(c.scored + c.failed for c in counts))
        try:
            for row in ds.iter_rows():
                counts.append(batch.PartCounts(row["part"], row["scored"], row["failed"], row["anomalous"]))
                progress.add(row["scored"] + row["failed"])
        except Exception as exc:  # a Ray task or actor error: what is committed stays, a rerun resumes
            committed = len(batch.committed_parts(out))
            first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise Interrupted(
                f"the batch predict into {out} stopped with {committed} of {plan.parts} parts committed "
                f"({first}); rerun the same command to score the rest"
            ) from None
        finally:
            progress.finish()
    return batch.write_manifest(out, plan, counts, time.monotonic() - started)
