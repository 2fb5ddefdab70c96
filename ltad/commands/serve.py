"""`ltad serve`: an exported model behind HTTP on Ray Serve (POST /predict, GET /healthz).

Joins the Ray cluster in RAY_ADDRESS (else starts a local one), runs the application of
`ltad.inference.serve.build_app` and serves until Ctrl-C (then it removes the application, and stops
Serve when it started Ray itself). Listens on 127.0.0.1 unless --host says otherwise. The model is
checked here first, so a bad --model is one line, not a replica that fails to start.
"""

from __future__ import annotations

import argparse
import signal
import time
from dataclasses import asdict

from ltad.errors import ConfigError
from ltad.io.uri import resolve

APP_NAME = "ltad"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="exported model (torch or ONNX): a directory (on every node a replica may run on) or s3:// prefix",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", default="8000", help="HTTP port")
    p.add_argument("--replicas", default="1", help="model replicas (each loads the model once)")
    p.add_argument(
        "--gpus-per-replica", default="0", help="GPUs per replica (> 0 scores on CUDA; 0.5 shares one)"
    )
    p.add_argument("--max-batch-size", default="8", help="images scored in one forward pass at most")
    p.add_argument("--batch-wait-ms", default="10", help="how long a batch waits to fill before it runs")
    p.add_argument("--max-body-mb", default="20", help="larger request bodies are refused with 413")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve an exported model over HTTP with Ray Serve", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 < n < 65536:
        raise ConfigError(f"--port must be an int in 1..65535, got {value!r}")
    return n


def options(args: argparse.Namespace):
    """The ServeOptions of the flags (errors name the flag), with the model checked to be an export."""
    from ltad.inference.serve import ServeOptions

    values = {
        "model": resolve(args.model, "--model"),
        "replicas": args.replicas,
        "gpus_per_replica": args.gpus_per_replica,
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "max_body_mb": args.max_body_mb,
    }
    try:
        opts = ServeOptions.from_args(values)
    except ConfigError as exc:  # 'serve option 'max_batch_size'' -> '--max-batch-size'
        message = str(exc)
        for key in values:
            message = message.replace(f"serve option '{key}'", "--" + key.replace("_", "-"))
        raise ConfigError(message) from None
    check_model(opts.model)
    return opts


def check_model(model: str) -> None:
    """A local export's files, or an s3:// prefix's export.json, before any replica tries to load it."""
    from ltad.errors import DataError
    from ltad.inference.export import read_meta
    from ltad.io import storage
    from ltad.io.uri import is_s3

    if not is_s3(model):
        read_meta(model)
    elif not storage.exists(storage.join(model, "export.json")):
        raise DataError(f"--model '{model}' is not an exported ltad model: export.json missing")


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    listen = port(args.port)
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"ltad serve needs the 'serve' extra ({exc.name} is not installed): pip install 'ltad[serve]'"
        ) from None
    from ltad.inference.serve import build_app
    from ltad.training.cluster import connect
    from ltad.training.ray_map import check_reachable

    started = connect()
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped container or `kill`: shut down as on Ctrl-C
    try:
        check_reachable(
            ("--model", opts.model),
            work="ltad serve's replicas",
            fix="give the model as an s3:// prefix (or serve on a one-node Ray)",
        )
        serve.start(http_options={"host": args.host, "port": listen})
        serve.run(build_app(asdict(opts)), name=APP_NAME, route_prefix="/")
        print(
            f"serving {opts.model} on http://{args.host}:{listen} (POST /predict, GET /healthz), "
            f"{opts.replicas} replica(s); Ctrl-C stops",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        if started:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(APP_NAME)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """The first SIGTERM stops serving; later ones (a supervisor repeating it) do not cut the shutdown."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
