"""A batch predict's output: a plan written first, one committed part per fixed chunk, a manifest last.

Layout under --out (a local folder or an s3:// prefix):

    plan.json                     written first: the sorted inputs' count and sha256, the model's
                                  sha256, the part size, whether maps are drawn
    parts/errors-NNNNNN.parquet   the part's unreadable inputs (path, error); written before ...
    parts/scores-NNNNNN.parquet   ... the part's scores (SCORES_COLUMNS): its commit, written whole
                                  (a local temp file renamed, one S3 PUT)
    maps/R.png, overlays/R.png    only with --maps
    manifest.json                 written last: every part with its counts, and the totals

Part i holds inputs [i * part_size, (i + 1) * part_size) of the sorted input list. A part whose scores
file exists is done: a rerun skips it and writes every other part whole again (its errors file first,
so a stale one is replaced), hence each input is a row of exactly one scores or errors file. Nothing
here imports Ray: `ltad.inference.ray_predict` runs `score_part` in a Ray Data actor pool.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ltad.errors import ConfigError, DataError
from ltad.eval.outputs import SCORES_COLUMNS
from ltad.eval.visualize import overlay_panel
from ltad.inference.predict import ERRORS_COLUMNS, OUTPUTS, SUFFIXES, find_images, output_names, unique_names
from ltad.inference.predictor import Predictor
from ltad.io import storage

FORMAT = "ltad-batch-predict/1"
PLAN, MANIFEST, PARTS = "plan.json", "manifest.json", "parts"
WRITTEN = (PLAN, MANIFEST, PARTS, "maps", "overlays")
"""Everything a batch predict writes under --out (what --overwrite removes)."""
SCORES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("class", pa.string()),
        ("gt_label", pa.string()),
        ("pred_score", pa.float64()),
        ("pred_score_normalised", pa.float64()),
        ("pred_anomalous", pa.int8()),
        ("pred_class", pa.string()),
    ]
)
ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("error", pa.string())])
assert tuple(SCORES_SCHEMA.names) == SCORES_COLUMNS and tuple(ERRORS_SCHEMA.names) == ERRORS_COLUMNS


def list_inputs(images: str) -> tuple[list[str], list[str]]:
    """(image URIs sorted, output names) of a local folder or glob, or of every image under an s3://
    prefix; none is a DataError naming --images."""
    if not storage.is_s3(images):
        files, root = find_images(images)
        return [str(f) for f in files], [n.as_posix() for n in output_names(files, root)]
    prefix = images.rstrip("/")
    uris = [u for u in storage.list(prefix) if PurePosixPath(u).suffix.lower() in SUFFIXES]
    if not uris:
        raise DataError(f"--images '{images}' holds no image files ({', '.join(SUFFIXES)})")
    rels = [Path(u[len(prefix) + 1 :]) for u in uris]
    return uris, [n.as_posix() for n in unique_names(rels)]


def inputs_digest(uris: Sequence[str]) -> str:
    h = hashlib.sha256()
    for u in uris:
        h.update(u.encode() + b"\n")
    return h.hexdigest()


def model_digest(folder: Path) -> str:
    """sha256 over the export's file names and bytes (a local folder)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a batch predict's --out was made from; a rerun must match it to resume."""

    images: str
    model: str
    inputs: int
    inputs_sha256: str
    model_sha256: str
    part_size: int
    maps: bool
    format: str = FORMAT

    @property
    def parts(self) -> int:
        return math.ceil(self.inputs / self.part_size)

    def bounds(self, part: int) -> tuple[int, int]:
        return part * self.part_size, min(self.inputs, (part + 1) * self.part_size)

    def mismatch(self, other: Plan) -> str | None:
        """The first difference that forbids resuming `other` as this plan, in words (None: none)."""
        if other.format != self.format:
            return f"its format is {other.format}"
        if (other.inputs, other.inputs_sha256) != (self.inputs, self.inputs_sha256):
            return f"it was made from other images ({other.inputs} from {other.images})"
        if other.model_sha256 != self.model_sha256:
            return f"it was made with another model ({other.model})"
        if other.part_size != self.part_size:
            return f"its part size is {other.part_size}, not {self.part_size}"
        if other.maps != self.maps:
            return "it was made " + ("with" if other.maps else "without") + " --maps"
        return None


def part_uri(out: str, kind: str, part: int) -> str:
    return storage.join(out, PARTS, f"{kind}-{part:06d}.parquet")


def committed_parts(out: str) -> set[int]:
    """Parts whose scores file exists (one listing of parts/)."""
    done = set()
    for uri in storage.list(storage.join(out, PARTS)):
        name = uri.rsplit("/", 1)[-1]
        if name.startswith("scores-") and name.endswith(".parquet"):
            done.add(int(name[len("scores-") : -len(".parquet")]))
    return done


def start(out: str, plan: Plan, overwrite: bool) -> set[int]:
    """Prepare --out for `plan`: remove earlier outputs (`overwrite`), refuse another plan or other
    outputs, write plan.json when new; returns the parts already committed."""
    if not storage.is_s3(out) and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder")
    if overwrite:
        remove_outputs(out)
    found = storage.read_optional(storage.join(out, PLAN))
    if found is None:
        if not storage.is_s3(out):
            other = [n for n in (*OUTPUTS, PARTS, MANIFEST) if (Path(out) / n).exists()]
        else:
            other = [n for n in (PARTS, "maps") if storage.list(storage.join(out, n))]
            other += [MANIFEST] if storage.exists(storage.join(out, MANIFEST)) else []
        if other:
            raise ConfigError(
                f"--out '{out}' already holds predictions without a {PLAN} ({', '.join(other)}); "
                "choose a new folder or add --overwrite"
            )
        storage.write_json(storage.join(out, PLAN), asdict(plan))
        return set()
    try:
        earlier = Plan(**json.loads(found))
    except (TypeError, ValueError):
        raise DataError(f"{storage.join(out, PLAN)} is not a batch predict plan; use --overwrite") from None
    why = plan.mismatch(earlier)
    if why:
        raise ConfigError(
            f"--out '{out}' holds a batch predict that this run cannot resume: {why}; "
            "choose a new --out or add --overwrite"
        )
    return {p for p in committed_parts(out) if p < plan.parts}


def remove_outputs(out: str) -> None:
    """Delete what a batch predict (or a local predict) wrote under `out`, nothing else."""
    names = set(WRITTEN) | set(OUTPUTS)
    if storage.is_s3(out):
        prefix = out.rstrip("/") + "/"
        for uri in storage.list(out):
            if uri[len(prefix) :].split("/", 1)[0] in names:
                storage.delete(uri)
        return
    import shutil

    for name in names:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def decode(uri: str) -> np.ndarray:
    """The RGB pixels of a local or s3:// image; a DataError naming it when it cannot be read."""
    try:
        data = storage.read_bytes(uri)
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image '{uri}': {exc or type(exc).__name__}") from None


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class PartCounts:
    part: int
    scored: int
    failed: int
    anomalous: int


def score_part(
    predictor: Predictor,
    out: str,
    part: int,
    uris: Sequence[str],
    names: Sequence[str],
    images: Sequence[np.ndarray | str],
    maps: bool,
) -> PartCounts:
    """Score one part's decoded images (an error message in place of an unreadable one), draw its maps
    when asked, then commit it: the errors file, then the scores file."""
    errors = [(u, im) for u, im in zip(uris, images) if isinstance(im, str)]
    ok = [(u, n, im) for u, n, im in zip(uris, names, images) if not isinstance(im, str)]
    columns: dict[str, list[Any]] = {name: [] for name in SCORES_COLUMNS}
    for start_at in range(0, len(ok), predictor.batch_size):
        batch = ok[start_at : start_at + predictor.batch_size]
        result = predictor.predict_rgb([rgb for _, _, rgb in batch])
        for i, (uri, name, rgb) in enumerate(batch):
            if maps:
                nmap = result.maps_normalised[i]
                grey = Image.fromarray(np.round(nmap * 255).astype(np.uint8), mode="L")
                storage.write_bytes(storage.join(out, "maps", name), _png(grey))
                panel = overlay_panel(rgb, nmap, None, 0.5, value_range=(0.0, 1.0), title=name)
                storage.write_bytes(storage.join(out, "overlays", name), _png(panel))
            for key, value in zip(
                SCORES_COLUMNS,
                (
                    uri,
                    "",
                    "",
                    float(result.scores[i]),
                    float(result.scores_normalised[i]),
                    int(result.decisions[i]),
                    result.pred_class[i],
                ),
            ):
                columns[key].append(value)
    errors_table = pa.table(
        {"path": [u for u, _ in errors], "error": [e for _, e in errors]}, schema=ERRORS_SCHEMA
    )
    storage.write_bytes(part_uri(out, "errors", part), _table_bytes(errors_table))
    scores_table = pa.table(columns, schema=SCORES_SCHEMA)
    storage.write_bytes(part_uri(out, "scores", part), _table_bytes(scores_table))  # the commit
    return PartCounts(part, len(ok), len(errors), int(sum(columns["pred_anomalous"])))


def read_counts(out: str, part: int) -> PartCounts:
    """The counts of a committed part, from its files."""
    scores = pq.read_table(io.BytesIO(storage.read_bytes(part_uri(out, "scores", part))))
    errors = storage.read_optional(part_uri(out, "errors", part))
    if errors is None:
        raise DataError(f"{part_uri(out, 'errors', part)} is missing beside its scores part; use --overwrite")
    failed = pq.read_metadata(io.BytesIO(errors)).num_rows
    anomalous = int(pa.compute.sum(scores.column("pred_anomalous")).as_py() or 0)
    return PartCounts(part, scores.num_rows, failed, anomalous)


def write_manifest(out: str, plan: Plan, parts: Sequence[PartCounts], seconds: float) -> dict[str, Any]:
    """manifest.json, last: refused (a DataError) unless every input is in exactly one part's rows."""
    parts = sorted(parts, key=lambda c: c.part)
    missing = sorted(set(range(plan.parts)) - {c.part for c in parts})
    for c in parts:
        lo, hi = plan.bounds(c.part)
        if c.scored + c.failed != hi - lo:
            raise DataError(
                f"part {c.part} of {out} holds {c.scored + c.failed} rows for {hi - lo} inputs; use --overwrite"
            )
    if missing:
        raise DataError(f"{out} lacks parts {missing[:5]} of {plan.parts}; rerun the same command to resume")
    body = {
        "format": FORMAT,
        "plan": asdict(plan),
        "scored": sum(c.scored for c in parts),
        "failed": sum(c.failed for c in parts),
        "anomalous": sum(c.anomalous for c in parts),
        "seconds": round(seconds, 3),
        "parts": [
            {
                "scores": f"{PARTS}/scores-{c.part:06d}.parquet",
                "errors": f"{PARTS}/errors-{c.part:06d}.parquet",
                "scored": c.scored,
                "failed": c.failed,
                "anomalous": c.anomalous,
            }
            for c in parts
        ],
    }
    storage.write_json(storage.join(out, MANIFEST), body)
    return body


def read_rows(out: str, kind: str) -> pa.Table:
    """Every part's scores (kind 'scores') or errors ('errors') of a finished batch predict, in order."""
    manifest = storage.read_json(storage.join(out, MANIFEST))
    tables = [
        pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, p[kind])))) for p in manifest["parts"]
    ]
    schema = SCORES_SCHEMA if kind == "scores" else ERRORS_SCHEMA
    return pa.concat_tables(tables) if tables else schema.empty_table()
