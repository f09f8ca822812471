"""``clapkit cache build|info|verify``: the feature cache from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ClapkitError


@click.group("cache")
def cache() -> None:
    """Build and inspect HDF5 feature caches (frozen image features per split)."""


@cache.command("build")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (TOML value syntax), e.g. cache.dir=/tmp/c.")
@click.option("--split", "splits", multiple=True,
              help="Only these splits (default: the recipe's train/valid/test splits).")
@click.option("--device", default=None, help="Encode on this device (default: run.device).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build_cmd(recipe: Path, overrides: tuple[str, ...], splits: tuple[str, ...],
              device: str | None, quiet: bool) -> None:
    """Encode every split/stream of RECIPE's dataset with its backbone into the cache."""
    import torch

    from .. import cache as fc
    from ..build import build_component
    from ..interfaces import BuildContext
    from ..plugins import get_plugin_host
    from ..recipe import load_recipe

    host = get_plugin_host()
    rec = load_recipe(recipe, host, overrides)       # also loads the recipe's plugin modules
    dev = torch.device(_device(device or rec.run.device))
    ctx = BuildContext(host=host, recipe_file=str(recipe), seed=rec.run.seed, device=dev,
                       work_dir=Path.cwd())
    backbone = build_component(rec.backbone, ctx).to(dev)
    source = build_component(rec.data, ctx, backbone=backbone)
    available = source.splits()
    plan = fc.cache_plan(rec.data.keys, rec.cache, available)
    if splits:
        bad = [s for s in splits if s not in available]
        if bad:
            raise ClapkitError(f"{recipe}: split(s) {', '.join(bad)} not in the dataset "
                               f"(splits: {', '.join(available)})")
        planned = {p[0]: p for p in plan}
        plan = [planned.get(s, (s, False, 1)) for s in splits]
    if not plan:
        raise ClapkitError(f"{recipe}: no split to cache (dataset splits: "
                           f"{', '.join(available) or 'none'})")
    cache_dir = Path(rec.cache.dir)                  # relative to the working directory
    for split, train, views in plan:
        paths = fc.ensure_caches(backbone, source, split, train=train, views=views,
                                 cache_dir=cache_dir, batch_size=rec.cache.batch_size,
                                 seed=rec.run.seed, num_workers=rec.data.keys.num_workers,
                                 progress=not quiet)
        for p in paths:
            i = fc.info(p)
            click.echo(f"{split:<8} {i.attributes.get('stream')!s:<10} "
                       f"{i.attributes.get('mode')}-v{i.attributes.get('view')}  "
                       f"{list(i.shape)}  {p}")


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@cache.command("info")
@click.argument("file", type=click.Path(path_type=Path))
def info_cmd(file: Path) -> None:
    """Shape, dtype, fingerprints, size, creation time and completeness of FILE."""
    from . import info
    if not file.exists():
        raise ClapkitError(f"cache file not found: {file}")
    for line in info(file).lines():
        click.echo(line)


@cache.command("verify")
@click.argument("file", type=click.Path(path_type=Path))
def verify_cmd(file: Path) -> None:
    """Re-check FILE's structure, counters, ids and values; exit 2 when it is unusable."""
    from . import verify
    problem = verify(file)
    if problem:
        raise ClapkitError(f"{file}: {problem}")
    click.echo(f"{file}: ok")
