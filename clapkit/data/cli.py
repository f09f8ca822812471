"""``clapkit data``: generated demo sets, face boxes, dataset summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _build_source(dataset: str, root: str, sets: tuple[str, ...]) -> Any:
    """A dataset plugin's source from ``root`` plus ``--set key=value`` options."""
    from ..config import structure
    from ..interfaces import BuildContext
    from ..plugins import get_plugin_host
    from ..recipe import parse_override

    host = get_plugin_host()
    entry = host.registries["dataset"].get(dataset)
    options: dict[str, Any] = {"root": root}
    for text in sets:                      # a.b=v sets options["a"]["b"] (dict options)
        parts, value = parse_override(text)
        node = options
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    cfg = structure(entry.config_cls, options, file="<command line>", key=f"data ({dataset})")
    return entry.factory(cfg, BuildContext(host=host, section="data"))


@click.group("data")
def data() -> None:
    """Datasets: generated demo data, face boxes, summaries."""


@data.command("make-demo")
@click.option("--out", "out", default=".clapkit_demo", show_default=True,
              type=click.Path(file_okay=False), help="Folder to write the demo sets into.")
@click.option("--kind", default="all", show_default=True,
              help="A registered demo generator (see `clapkit plugins --kind demo`), or all.")
@click.option("--seed", default=0, show_default=True, help="Generator seed.")
@click.option("--force", is_flag=True, help="Regenerate even when an up-to-date set exists.")
def make_demo(out: str, kind: str, seed: int, force: bool) -> None:
    """Generate the demo datasets (seconds, no download) in their real on-disk layouts."""
    from ..plugins import default_host as host
    from .demo import ensure_demo

    h = host()
    registry = h.registries["demo"]
    for e in (list(registry) if kind == "all" else [registry.get(kind)]):
        root = ensure_demo(e.name, Path(out) / e.name, seed=seed, force=force, host=h)
        hint = f'plugin = "{e.meta["dataset"]}", ' if e.meta.get("dataset") else ""
        click.echo(f"{e.name}: {root}  (recipe [data]: {hint}root = \"{root}\")")


@data.command("detect-faces")
@click.argument("dataset_root", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", required=True, help="Dataset plugin: caer, caer_s, daisee, raer.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Box file to write (default: the dataset's face_boxes path).")
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Other dataset options, e.g. --set annotations.train=lists/train.txt")
@click.option("--frames", type=click.IntRange(1, 1024), default=3, show_default=True,
              help="Frames per clip to detect on (per-clip layouts).")
@click.option("--force", is_flag=True, help="Replace an existing box file.")
def detect_faces(dataset_root: str, dataset: str, out: str | None, splits: tuple[str, ...],
                 sets: tuple[str, ...], frames: int, force: bool) -> None:
    """Write face boxes for DATASET_ROOT with OpenCV's Haar cascade, in the box-file layout
    the dataset reads (needs: pip install 'clapkit[faces]')."""
    from tqdm import tqdm

    from ..progress import progress_off
    from .faces import HaarFaceDetector, detect_dataset_faces, write_box_file

    detector = HaarFaceDetector()  # fails early, before any listing, without OpenCV
    source = _build_source(dataset, dataset_root, sets)
    target = Path(out) if out else getattr(source, "face_file", None)
    if target is None:
        target = Path(dataset_root) / f"{dataset}_faces.json"
    table, found, total = detect_dataset_faces(
        source, splits or None, detector, frames,
        progress=lambda it: tqdm(list(it), desc="faces", unit="item",
                                 disable=progress_off(True)))
    write_box_file(table, Path(target), force=force)
    click.echo(f"{dataset}: a face in {found} of {total} items; wrote {target}")
    if out or getattr(source, "face_file", None) is None:
        click.echo(f'use it with: face_boxes = "{target}"')


@data.command("info")
@click.argument("dataset_root", type=click.Path())
@click.option("--dataset", required=True, help="Dataset plugin name.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Dataset options.")
def info(dataset_root: str, dataset: str, sets: tuple[str, ...]) -> None:
    """Splits, class counts and face-box coverage of a dataset."""
    source = _build_source(dataset, dataset_root, sets)
    click.echo(f"{dataset}: {len(source.classes)} classes, streams {', '.join(source.streams)},"
               f" {source.num_frames} frame(s) per item")
    for split in source.splits():
        counts = source.class_counts(split)
        click.echo(f"  {split}: {sum(counts)} items; per class: "
                   + ", ".join(f"{c}={n}" for c, n in zip(source.classes, counts)))
        report = getattr(source, "box_reports", {}).get(split)
        if report is not None:
            click.echo(f"    face boxes: {report.found} of {report.total} "
                       f"({report.source or 'no box file'})")

