"""Checks on the driver, before the first stage, that a job's locations work on every node of the cluster.

On one machine a local path means the same folder to the driver and every worker; on a cluster of
several nodes it does not (nothing is shared unless declared), and a job that writes its output or
checkpoints to a node-local folder fails minutes later, or worse, finishes with results scattered
over the nodes. So, on a multi-node cluster, every location that more than one process touches must
be an `s3://` URI, unless the config declares `run.shared_fs: true` (a filesystem mounted at the
same path on every node). Those locations are `data.uri` (which also holds the feature cache),
`data.cache_uri` (the feature caches, when set), `run.output`, `run.storage_path`, the sweep root and every level's data, and
`model.encoder.pretrained` when it names a weights file. Relative local paths are made absolute on
the driver first. Then a tiny task on every other node that can host a worker reads the data
manifest there, with the job's environment, so a node that cannot reach the data fails the job in
seconds with one line instead of after the first stage.

Multi-node rule (`is_multi_node`, on Ray's node list): more than one alive node; or a lone node
under an autoscaler (`ray up` left its config on the head, naming a worker type that may start:
with `min_workers: 0` a cluster starts as its head alone and adds nodes when work waits, so the work
lands on nodes yet to come); or a driver's node that cannot host one worker (no GPU while
`scaling.use_gpu`, fewer CPUs than `scaling.cpus_per_worker`, or, for prepare's tasks, no CPU: a
CPU-0 head), because then the workers run on other nodes. Every location a command can name and
what this does with it: docs/RELIABILITY.md "Preflight: every location".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ltad.config import LTADConfig, ScalingConfig
from ltad.data.manifest import read_manifest
from ltad.errors import ConfigError
from ltad.io import storage

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
KEYWORDS = ("bundled", "none")
REMOTE_TIMEOUT_S = 120.0
"""How long the manifest check waits for the other nodes (their runtime environment is set up first)."""


def is_weights_path(value: str) -> bool:
    """`model.encoder.pretrained` names a file (not 'bundled', 'none' or a hub tag such as 'openai')."""
    if value in KEYWORDS:
        return False
    return storage.is_s3(value) or "/" in value or "\\" in value or value.endswith(WEIGHT_SUFFIXES)


AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"
"""Where `ray up` leaves the autoscaler's config on the head (the driver of a submitted job runs there)."""


def is_multi_node(
    nodes: Iterable[Mapping[str, Any]], here: str, *, cpus: float, gpus: float = 0, autoscaling: bool = False
) -> bool:
    """Whether work asking `cpus` CPUs and `gpus` GPUs per worker may run on another node than the
    driver's (`here`, a NodeID of `nodes`, shaped like `ray.nodes()`); see the module docstring."""
    alive = [n for n in nodes if n.get("Alive")]
    if len(alive) > 1 or autoscaling:
        return True
    resources: Mapping[str, float] = next(
        (n.get("Resources", {}) for n in alive if n.get("NodeID") == here), {}
    )
    return resources.get("CPU", 0) < cpus or resources.get("GPU", 0) < gpus


def worker_demand(scaling: ScalingConfig) -> dict[str, float]:
    """What one training worker asks of a node (`is_multi_node`'s cpus and gpus)."""
    return {"cpus": scaling.cpus_per_worker, "gpus": 1.0 if scaling.use_gpu else 0.0}


def has_autoscaler(config: str = AUTOSCALER_CONFIG) -> bool:
    """Whether this node holds an autoscaler config that may start worker nodes (max_workers > 0)."""
    import yaml

    path = Path(config).expanduser()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    head = data.get("head_node_type")
    types = data.get("available_node_types") or {}
    if not types:
        return int(data.get("max_workers") or 0) > 0
    return any(int((t or {}).get("max_workers") or 0) > 0 for name, t in types.items() if name != head)


def run_locations(cfg: LTADConfig) -> list[tuple[str, str]]:
    """(config key, value) of every location of a training run that several processes touch."""
    out = [("data.uri", cfg.data.uri), ("run.output", cfg.run.output)]
    if cfg.data.cache_uri:  # '' means `{data.uri}/features`, checked with data.uri
        out.append(("data.cache_uri", cfg.data.cache_uri))
    if cfg.run.storage_path:  # '' means `{run.output}/ray`, checked with run.output
        out.append(("run.storage_path", cfg.run.storage_path))
    if is_weights_path(cfg.model.encoder.pretrained):
        out.append(("model.encoder.pretrained", cfg.model.encoder.pretrained))
    return out


def check_locations(locations: Iterable[tuple[str, str]], *, multi_node: bool, shared_fs: bool) -> None:
    """Raise one ConfigError naming the first location that a multi-node cluster cannot share."""
    if not multi_node or shared_fs:
        return
    for key, value in locations:
        if value and not storage.is_s3(value):
            raise ConfigError(
                f"{key} '{value}' is a local path, but this Ray cluster has several nodes that share no "
                f"disk: use an s3:// URI, or set run.shared_fs=true if '{value}' is on a filesystem "
                "mounted at the same path on every node"
            )


def absolute(value: str) -> str:
    """A local path made absolute (on the driver); URIs and '' unchanged."""
    if not value or storage.is_s3(value):
        return value
    return str(Path(value).expanduser().resolve())


def absolute_tracking(uri: str) -> str:
    """A `run.tracking_uri` that is a plain local path made absolute; URIs (http://, file:) and '' unchanged."""
    if not uri or "://" in uri or uri.startswith("file:"):
        return uri
    return absolute(uri)


def absolute_config(cfg: LTADConfig) -> LTADConfig:
    """`cfg` with its local locations (data, feature caches, output, storage, weights file, MLflow
    store) absolute."""
    encoder = cfg.model.encoder
    if is_weights_path(encoder.pretrained):
        encoder = dataclasses.replace(encoder, pretrained=absolute(encoder.pretrained))
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, encoder=encoder),
        data=dataclasses.replace(
            cfg.data, uri=absolute(cfg.data.uri), cache_uri=absolute(cfg.data.cache_uri)
        ),
        run=dataclasses.replace(
            cfg.run,
            output=absolute(cfg.run.output),
            storage_path=absolute(cfg.run.storage_path),
            tracking_uri=absolute_tracking(cfg.run.tracking_uri),
        ),
    )


# --------------------------------------------------------------------------- the connected cluster


def cluster_is_multi_node(cpus: float, gpus: float = 0) -> bool:
    """`is_multi_node` for the cluster Ray is connected to, from the driver's node."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return is_multi_node(ray.nodes(), here, cpus=cpus, gpus=gpus, autoscaling=has_autoscaler())


def _read_manifest_here(data_uri: str) -> str | None:
    """On a node: None if the manifest of `data_uri` reads, else one line saying why not."""
    from ltad.errors import UserError

    try:
        read_manifest(data_uri)
    except UserError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as one line, the job stops on it
        return f"{type(exc).__name__}: {exc}"
    return None


def check_manifest_on_nodes(data_uri: str, scaling: ScalingConfig, key: str = "data.uri") -> int:
    """Read the manifest of `data_uri` on every other alive node that can host a worker; the count.

    The task needs no resources (it never waits for a busy node) and runs in the job's runtime
    environment, with the S3 settings the driver passes on (ltad.training.cluster.connect).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [
        n
        for n in ray.nodes()
        if n.get("Alive")
        and n.get("NodeID") != here
        and (not scaling.use_gpu or n.get("Resources", {}).get("GPU", 0) >= 1)
    ]
    if not nodes:
        return 0
    task = ray.remote(num_cpus=0, max_retries=0)(_read_manifest_here)
    refs = {
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            data_uri
        ): n
        for n in nodes
    }
    ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=REMOTE_TIMEOUT_S)
    for ref in waiting:
        node = refs[ref]
        raise ConfigError(
            f"{key} '{data_uri}': node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) did not answer "
            f"the manifest check within {REMOTE_TIMEOUT_S:.0f} s"
        )
    for ref in ready:
        problem = ray.get(ref)
        if problem:
            node = refs[ref]
            raise ConfigError(
                f"{key} '{data_uri}' cannot be read on node {node['NodeManagerAddress']} "
                f"({node['NodeID'][:8]}) where workers run: {problem}"
            )
    return len(nodes)


def check_run(cfg: LTADConfig, log=None, given: Iterable[tuple[str, str]] = ()) -> LTADConfig:
    """Preflight of a training run on the connected cluster; the config with absolute local paths.
    `given`: (flag, location) of what the command adds, e.g. `ltad evaluate --checkpoint`."""
    cfg = absolute_config(cfg)
    multi = cluster_is_multi_node(**worker_demand(cfg.scaling))
    check_locations([*run_locations(cfg), *given], multi_node=multi, shared_fs=cfg.run.shared_fs)
    if multi and cfg.data.uri:
        read_manifest(cfg.data.uri)  # the driver's own reading first: its error names no node
        checked = check_manifest_on_nodes(cfg.data.uri, cfg.scaling)
        if log is not None:
            log(f"preflight: multi-node cluster; data manifest readable on {checked} other node(s)")
    return cfg


def sweep_locations(space: Any) -> list[tuple[str, str]]:
    """(key, value) of a sweep's shared locations: its root, every level's data, the feature caches
    (`data.cache_uri` of the base config, when set), the weights file."""
    out = [("root", space.root)]
    out += [(f"levels[{i}].data", lv.data) for i, lv in enumerate(space.levels)]
    if space.base.data.cache_uri:
        out.append(("data.cache_uri", space.base.data.cache_uri))
    if is_weights_path(space.base.model.encoder.pretrained):
        out.append(("model.encoder.pretrained", space.base.model.encoder.pretrained))
    return out


def check_sweep(space: Any, log=None) -> Any:
    """Preflight of a sweep (ltad.sweep.space.Space); the space with absolute local paths."""
    base = absolute_config(space.base)
    levels = tuple(dataclasses.replace(lv, data=absolute(lv.data)) for lv in space.levels)
    space = dataclasses.replace(space, base=base, levels=levels, root=absolute(space.root))
    multi = cluster_is_multi_node(**worker_demand(base.scaling))
    check_locations(sweep_locations(space), multi_node=multi, shared_fs=base.run.shared_fs)
    if multi:
        for i, lv in enumerate(space.levels):
            read_manifest(lv.data)
            checked = check_manifest_on_nodes(lv.data, base.scaling, key=f"levels[{i}].data")
        if log is not None:
            log(f"preflight: multi-node cluster; level manifests readable on {checked} other node(s)")
    return space
