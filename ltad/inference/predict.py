"""`ltad predict` over a folder or glob: `ltad.Predictor` plus outputs that survive bad input.

Under the output directory, for every image at relative path R (relative to --images, or to a
glob's fixed leading folder): `maps/R.png` (the normalised anomaly map at the image's own size,
0..255 with the decision threshold at 128) and `overlays/R.png` (image | map | empty ground truth |
prediction), R's suffix replaced by .png (kept, as `name.jpg.png`, where two inputs would collide);
maps and overlays only with `--maps` (they cost more than the scoring at small model sizes).
`scores.csv` (columns `SCORES_COLUMNS`, shared with `ltad evaluate`) is written row by row and
flushed, so an interrupted run keeps the rows it finished. An unreadable image becomes a row of
`errors.csv` (path, error) and the run goes on. A folder that already holds predictions is refused:
nothing is ever overwritten.
"""

from __future__ import annotations

import csv
import glob
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ltad.data.progress import Progress
from ltad.errors import ConfigError, DataError
from ltad.eval.outputs import SCORES_COLUMNS
from ltad.eval.visualize import save_overlay
from ltad.inference.predictor import Predictor, read_image
from ltad.log import get_logger

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
OUTPUTS = ("scores.csv", "errors.csv", "maps", "overlays")
ERRORS_COLUMNS = ("path", "error")
log = get_logger(__name__)


def find_images(images: str, flag: str = "--images") -> tuple[list[Path], Path]:
    """Image files of a directory (recursive) or a glob, sorted; plus the folder their names are relative
    to. None is a DataError naming `flag`."""
    path = Path(images)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        root = path
    else:
        files = sorted(
            Path(p) for p in glob.glob(images, recursive=True) if Path(p).suffix.lower() in SUFFIXES
        )
        root = glob_base(images)
    if not files:
        raise DataError(f"{flag} '{images}' matches no image files ({', '.join(SUFFIXES)})")
    return files, root


def glob_base(pattern: str) -> Path:
    """The leading folders of a glob without wildcards: 'data/*/x*.png' -> data."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def output_names(files: list[Path], root: Path) -> list[Path]:
    """Each image's relative output path: R with suffix .png, or R + '.png' where that would collide."""
    return unique_names([f.relative_to(root) if f.is_relative_to(root) else Path(f.name) for f in files])


def unique_names(rels: list[Path]) -> list[Path]:
    """Relative image paths as output names: suffix .png, or name + '.png' where two would collide."""
    plain = [r.with_suffix(".png") for r in rels]
    counts: dict[Path, int] = {}
    for p in plain:
        counts[p] = counts.get(p, 0) + 1
    return [p if counts[p] == 1 else r.with_name(r.name + ".png") for p, r in zip(plain, rels)]


@dataclass
class Summary:
    scored: int
    failed: int
    anomalous: int
    seconds: float


class _Rows:
    """A CSV opened at its first row, flushed after every row (absent when nothing was written)."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path, self.columns = path, columns
        self.file: IO[str] | None = None
        self.writer: csv.writer | None = None  # type: ignore[valid-type]

    def write(self, row: list) -> None:
        if self.file is None:
            self.file = self.path.open("x", newline="")
            self.writer = csv.writer(self.file)
            self.writer.writerow(self.columns)
        assert self.writer is not None
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def check_out(out: Path) -> None:
    """Refuse an output folder holding earlier predictions (nothing is overwritten)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder")
    found = [name for name in OUTPUTS if (out / name).exists()]
    if found:
        raise ConfigError(
            f"--out '{out}' already holds predictions ({', '.join(found)}); choose a new folder"
        )


def predict_folder(predictor: Predictor, images: str, out: str | Path, maps: bool = False) -> Summary:
    """Score every image of a folder or glob into `out` (see the module docstring); maps and overlays
    only with `maps`."""
    files, root = find_images(images)
    out = Path(out)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(files, root)
    scores, errors = _Rows(out / "scores.csv", SCORES_COLUMNS), _Rows(out / "errors.csv", ERRORS_COLUMNS)
    progress = Progress("predict", total=len(files), unit="images", log=log.info, every=10.0)
    started, scored, failed, anomalous = time.monotonic(), 0, 0, 0
    try:
        for start in range(0, len(files), predictor.batch_size):
            batch: list[tuple[Path, Path, np.ndarray]] = []
            for path, name in zip(files[start : start + predictor.batch_size], names[start:]):
                try:
                    batch.append((path, name, np.asarray(read_image(path))))
                except DataError as exc:
                    errors.write([str(path), str(exc)])
                    log.warning("skipped %s", exc)
                    failed += 1
            if batch:
                result = predictor.predict_rgb([rgb for _, _, rgb in batch])
                for i, (path, name, rgb) in enumerate(batch):
                    if maps:
                        write_images(out, name, rgb, result.maps_normalised[i])
                    scores.write(
                        [
                            str(path),
                            "",
                            "",
                            f"{result.scores[i]:.6g}",
                            f"{result.scores_normalised[i]:.6g}",
                            int(result.decisions[i]),
                            result.pred_class[i],
                        ]
                    )
                scored += len(batch)
                anomalous += int(result.decisions.sum())
            progress.add(min(predictor.batch_size, len(files) - start))
    finally:
        progress.finish()
        scores.close()
        errors.close()
    return Summary(scored, failed, anomalous, time.monotonic() - started)


def write_images(out: Path, name: Path, rgb: np.ndarray, nmap: np.ndarray) -> None:
    """maps/name (the normalised map, 0..255) and overlays/name under a local folder."""
    for folder in ("maps", "overlays"):
        (out / folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(nmap * 255).astype(np.uint8), mode="L").save(out / "maps" / name)
    save_overlay(out / "overlays" / name, rgb, nmap, None, 0.5, value_range=(0.0, 1.0), title=str(name))
