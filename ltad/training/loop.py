"""The step loop shared by both phases: fixed step count, metrics every N steps, checkpoints, a bar.

Training runs for a number of steps, not epochs (epochs shrink with the long tail). Logged values are
averaged over the interval and over ranks, so the reported loss does not depend on which rank is 0;
`bad_samples` is the number of corrupt training samples skipped (within `data.max_bad_samples`),
summed over ranks, since the phase started or last resumed; `samples_per_s` counts real samples of all
ranks; `lr` (and `lr_<group>`) is the optimizer's current learning rate. Rank 0 appends every logged
interval to the stage's history (history.py), which travels with each checkpoint. Every step ends by
reading Ray's preemption notice (preemption.py): when a node of the group is being drained, the
checkpoint of that step is written at once and the loop holds until Ray restarts the group, so a
preemption loses no step that ended before the notice was seen.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ltad.log import get_logger
from ltad.training.checkpoint import Finalize, restore, save_and_report
from ltad.training.dist import all_reduce, is_distributed
from ltad.training.engine import move_batch
from ltad.training.history import History
from ltad.training.preemption import PreemptionNotice


@dataclass(frozen=True)
class LoopSpec:
    phase: str
    steps: int
    log_every: int
    checkpoint_every: int
    seed: int = 0
    validate_every: int = 0  # steps between `validate` calls (at the next logged step); 0 = never
    root: str = ""  # the stage's run directory: its checkpoints (training/store.py)


log = get_logger("loop")

LOOP_LOGS = ("bad_samples", "steps_per_s", "samples_per_s", "lr")
"""What the loop reports beside the objective's logs (as `<phase>/<name>`)."""


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of one training step on one rank (the study's trainer uses it as rank 0)."""
    return seed * 1_000_003 + rank * 100_003 + step


def run_steps(
    engine,
    batches: Callable[[int], Iterator[dict[str, Any]]],
    spec: LoopSpec,
    *,
    rank: int,
    finalize: Finalize | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    notice: PreemptionNotice | None = None,
) -> dict[str, float]:
    """Train `engine` from the latest checkpoint to `spec.steps`; `batches(start_step)` yields batches.

    Returns the last reported metrics. Every rank must call this (reports are barriers). `finalize`
    maps the consolidated state saved with the final checkpoint (see checkpoint.save_and_report).
    `validate` (every rank, so it may gather parameters) runs at the first logged step at or after
    each multiple of `spec.validate_every`; what it returns (rank 0's values; unprefixed) joins that
    step's report and history. `notice` reads Ray's preemption notice (by default through Ray Train).
    """
    history = History(spec.phase) if rank == 0 else None
    start = restore(engine, spec.root, history)
    if start >= spec.steps:
        # the phase finished before (a restart, or a rerun of the job): its final checkpoint, with its
        # model.pt and history, is the result; nothing is trained or written again
        return _last_metrics(spec, history)
    if start:
        log.info(f"{spec.phase}: resuming from its checkpoint at step {start}")
    stream = batches(start)
    device = engine.device
    bar = _progress(spec, start) if rank == 0 else None
    sums: dict[str, float] = {}
    count = 0
    bad = 0  # corrupt training samples skipped by this rank's stream since this (re)start
    metrics: dict[str, float] = {}
    tic = time.perf_counter()
    validated = start // spec.validate_every if spec.validate_every else 0
    notice = notice or PreemptionNotice()
    for step in range(start + 1, spec.steps + 1):
        batch = next(stream)
        skipped = batch.pop("bad_skipped", None)
        bad += int(skipped.sum()) if skipped is not None else 0
        samples = _batch_size(batch)
        batch = move_batch(batch, device)
        torch.manual_seed(step_seed(spec.seed, rank, step))
        loss, logs = engine(batch)
        engine.backward(loss)
        engine.step()
        for k, v in {"loss": loss, **logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
        sums["samples"] = sums.get("samples", 0.0) + samples
        count += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
        preempted = notice.check(step) and step < spec.steps  # the last step's final checkpoint is next
        logged = step % spec.log_every == 0 or step == spec.steps
        if logged:
            metrics = _over_ranks(sums, count, bad)
            metrics["steps_per_s"] = count / max(time.perf_counter() - tic, 1e-9)
            per_step = metrics.pop("samples", 0.0) * (dist.get_world_size() if is_distributed() else 1)
            metrics["samples_per_s"] = per_step * metrics["steps_per_s"]
            metrics.update(learning_rates(engine))
            checks: dict[str, float] = {}
            if validate is not None and spec.validate_every and step // spec.validate_every > validated:
                validated = step // spec.validate_every
                checks = validate()
            metrics.update(checks)
            if history is not None:
                history.add(step, metrics)
            metrics = {k if k in checks else f"{spec.phase}/{k}": v for k, v in metrics.items()}
            sums, count, tic = {}, 0, time.perf_counter()
            if step == spec.steps:
                break
            if step % spec.checkpoint_every == 0 or preempted:
                save_and_report(engine, step, metrics, root=spec.root, history=history)
            else:
                _report(metrics, step)
        elif preempted:  # between logged steps: the checkpoint without a report (Tune sees none extra)
            save_and_report(engine, step, metrics, root=spec.root, history=history, report_to_ray=False)
        if preempted:
            log.warning(f"{spec.phase}: preemption checkpoint at step {step}: {notice.describe()}")
            notice.hold(agree=_max_over_ranks)  # returns only if Ray does not restart the group
    if bar is not None:
        bar.close()
    log.info(
        f"{spec.phase}: Ray's preemption notice read {notice.reads} times, {notice.seconds:.2f} s in all"
    )
    save_and_report(
        engine, spec.steps, metrics, root=spec.root, final=True, finalize=finalize, history=history
    )
    return metrics


def _max_over_ranks(n: int) -> int:
    return int(
        all_reduce(torch.tensor([n], dtype=torch.int64), dist.ReduceOp.MAX if is_distributed() else None)[0]
    )


def learning_rates(engine) -> dict[str, float]:
    """The current learning rate of each parameter group: `lr` for the main group (unnamed, see
    engine.param_groups), `lr_<name>` for a named one."""
    groups = engine.optimizer.param_groups
    out: dict[str, float] = {}
    for i, group in enumerate(groups):
        name = group.get("name")
        key = "lr" if not name else f"lr_{name}"
        out[key if key not in out else f"lr_{i}"] = float(group["lr"])
    return out


def _batch_size(batch: dict[str, Any]) -> int:
    """Real samples in a batch (its class ids)."""
    ids = batch.get("class_id")
    return int(ids.shape[0]) if isinstance(ids, torch.Tensor) else 0


def _report(metrics: dict[str, float], step: int) -> None:
    import ray.train

    ray.train.report(dict(metrics, step=step, final=False))


def _over_ranks(sums: dict[str, float], count: int, bad: int) -> dict[str, float]:
    """Interval means of `sums` averaged over ranks, plus `bad_samples` summed over ranks: one all-reduce."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(count, 1) for k in keys] + [float(bad)], dtype=torch.float64)
    if is_distributed():
        values = all_reduce(values)
        values[:-1] /= dist.get_world_size()
    return {**dict(zip(keys, values[:-1].tolist())), "bad_samples": float(values[-1])}


def _progress(spec: LoopSpec, start: int):
    from tqdm import tqdm

    return tqdm(
        total=spec.steps,
        initial=start,
        desc=spec.phase,
        file=sys.stderr,
        mininterval=2.0,
        ascii=True,
        dynamic_ncols=False,
    )


def _last_metrics(spec: LoopSpec, history: History | None) -> dict[str, float]:
    """The metrics of the last logged interval, as reported (rank 0, from the history; {} elsewhere)."""
    if history is None or not history.records:
        return {}
    last = history.records[-1]
    # as reported: validation values (`val_*`, from `validate`) unprefixed, the loop's own under the phase
    return {
        k if k.startswith("val_") else f"{spec.phase}/{k}": v
        for k, v in last.items()
        if k not in ("stage", "step", "time")
    }
