"""The ``clapkit`` command line (click).

User errors (:class:`~clapkit.errors.ClapkitError`) exit with status 2 and one readable line;
``--debug`` shows the traceback instead. Plugins add subcommands through the
``clapkit_add_commands`` hook.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ClapkitError, user_message
from .plugins import PluginHost, default_host
from .registry import KINDS


def host() -> PluginHost:
    """The process-wide plugin host (entry points loaded once)."""
    return default_host()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clapkit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """clapkit: compose CLIP fine-tuning components (plugins) in TOML recipes and run them."""


# --- plugins --------------------------------------------------------------------------------

@cli.command("plugins")
@click.option("--kind", type=click.Choice(KINDS), help="Only components of this kind.")
@click.option("--hooks", is_flag=True, help="Also list the hooks each plugin implements.")
def plugins_cmd(kind: str | None, hooks: bool) -> None:
    """List registered components: kind, name, provider, version, summary."""
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    h = host()
    rows = [(e.kind, e.name, e.provider, e.version, e.summary)
            for e in h.registries.all_entries() if kind is None or e.kind == kind]
    _table(["kind", "name", "provider", "version", "summary"], rows)
    if hooks:
        click.echo()
        _table(["plugin", "provider", "hooks"],
               [(p.name, p.provider, ", ".join(p.hooks)) for p in h.plugins.values()])
    if h.broken:
        click.echo()
        click.echo(f"{len(h.broken)} plugin(s) failed to load"
                   + (":" if debug else " (clapkit --debug plugins shows the tracebacks):"))
        for b in h.broken:
            click.echo(f"  {b.describe()}")
            if debug and b.traceback:
                click.echo("    " + b.traceback.rstrip().replace("\n", "\n    "))


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


# --- recipes --------------------------------------------------------------------------------

@cli.group("recipe")
def recipe_group() -> None:
    """Check or print recipes."""


_trust_option = click.option(
    "--trust-run-code", "trust_code", is_flag=True,
    help="Import the plugin modules the run folder's recipe names even when they are shipped "
         "in the run folder (that runs their code; without it they are refused).")

_set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                           help="Override a recipe key (TOML value syntax), e.g. run.seed=3.")


@recipe_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@_set_option
@click.option("--static", is_flag=True,
              help="Only validate keys and values; do not build the pipeline.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when data or weights are not on this machine (a stand-in was "
                   "used): the status says whether the recipe runs here as it is.")
def recipe_check(file: Path, overrides: tuple[str, ...], static: bool, strict: bool) -> None:
    """Validate FILE and build its pipeline as a run would (data, backbone without network,
    components, stage parameter globs), without training. Stand-ins used for data or
    weights that are not on this machine are listed as notes (with --strict: errors)."""
    from .recipe import load_recipe
    if static and strict:
        raise ClapkitError("--static and --strict contradict each other: --strict builds the "
                           "recipe to find the data and weights it lacks, --static builds "
                           "nothing")
    if static:
        recipe = load_recipe(file, host(), overrides)
        click.echo(f"{file}: ok ({len(recipe.components())} components, "
                   f"{len(recipe.stages)} stages; not built)")
        return
    from .recipe_check import check_recipe, missing_on_machine
    report = check_recipe(file, host(), overrides)
    for note in report.notes:
        click.echo(f"note: {note}")
    missing = missing_on_machine(report) if strict else []
    if missing:
        for line in missing:
            click.echo(f"missing: {line}", err=True)
        click.echo(f"{file}: valid, but {len(missing)} thing(s) it needs are not on this "
                   "machine (--strict)", err=True)
        raise click.exceptions.Exit(1)
    stages = ", ".join(f"{n}: {k} tensors" for n, k in report.stages.items())
    click.echo(f"{file}: ok ({len(report.recipe.components())} components, "
               f"{len(report.recipe.stages)} stages trainable: {stages or 'none'})")


@recipe_group.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@_set_option
def recipe_show(file: Path, overrides: tuple[str, ...]) -> None:
    """Print FILE fully resolved (extends, overrides, defaults) as TOML."""
    from .recipe import load_recipe
    click.echo(load_recipe(file, host(), overrides).to_toml(), nl=False)


# --- run ------------------------------------------------------------------------------------

@cli.command("run")
@click.argument("file", type=click.Path(path_type=Path))
@_set_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Output folder (default: run.out_dir of the recipe).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the output.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in the output folder (its checkpoints, logs, ...).")
@click.option("--threads", type=click.IntRange(0, 1024), default=None, metavar="N",
              help="CPU threads torch uses for the run (sets run.threads; recipe default 1, "
                   "0 = torch's default of one per core). Figures depend on it.")
@click.option("--seeds", default=None, metavar="LIST",
              help="Run once per seed (e.g. 0,1,2 or 0-4) into OUT/seed-<s>, then write "
                   "OUT/aggregate.json (mean, std, values of every summary figure).")
def run_cmd(file: Path, overrides: tuple[str, ...], out_dir: Path | None, resume: bool,
            overwrite: bool, threads: int | None, seeds: str | None) -> None:
    """Train and evaluate the recipe FILE (into a folder no other run holds: continue one
    with --resume, replace it with --overwrite)."""
    if threads is not None:          # after the --set overrides: the option wins
        overrides = (*overrides, f"run.threads={threads}")
    from .engine import runner
    if seeds is not None:
        from .aggregate import AGGREGATE_FILE, parse_seeds
        from .results_table import format_aggregate
        got = runner.run_seeds(file, parse_seeds(seeds), out_dir=out_dir, overrides=overrides,
                               resume=resume, overwrite=overwrite, host=host())
        root = Path(got["out_dir"])
        click.echo(f"=== {len(got['runs'])} seeds ({root / AGGREGATE_FILE}) ===")
        for line in format_aggregate(root):
            click.echo(line)
        return
    runner.run_recipe(file, overrides=overrides, out_dir=out_dir, resume=resume,
                      overwrite=overwrite, host=host())


# --- eval, predict, runs ---------------------------------------------------------------------

@cli.command("eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="Run folder: the checkpoint to evaluate (default: best when the run "
                   "selected one, else last -- the model its summary reports).")
@click.option("--split", type=click.Choice(["valid", "test"]), default="valid", show_default=True,
              help="The recipe's data.valid_split or data.test_split (else the 'test' split).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the JSON (run folder: the run; recipe: runs/<name>-eval).")
@_set_option
@_trust_option
def eval_cmd(target: Path, checkpoint: str | None, split: str, out_dir: Path | None,
             overrides: tuple[str, ...], trust_code: bool) -> None:
    """Evaluate TARGET: a run folder (its recipe.toml and checkpoint) or a recipe file (the
    pipeline as built, e.g. zero-shot). Prints and writes top1/top5, WAR, UAR, per-class
    accuracy and the confusion matrix (RUN_DIR/eval-<ckpt>-<split>.json or OUT/eval.json)."""
    from .evaluation import eval_target, format_result
    result, dest = eval_target(target, host(), checkpoint=checkpoint, split=split,
                               out=out_dir, overrides=overrides, trust_code=trust_code)
    for line in format_result(result):
        click.echo(line)
    click.echo(f"written: {dest}")


@cli.command("probe")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for probe.json (default: run.out_dir of the recipe).")
@_set_option
def probe_cmd(recipe: Path, out_dir: Path | None, overrides: tuple[str, ...]) -> None:
    """Linear-probe baseline of RECIPE: logistic regression (L-BFGS) on its frozen, cached
    image features, L2 strength chosen on validation data ([probe] section); prints and
    writes the test metrics to OUT/probe.json."""
    from .baselines.probe import run_probe
    from .evaluation import format_result
    result, dest = run_probe(recipe, host(), out=out_dir, overrides=overrides)
    for line in format_result(result):
        click.echo(line)
    click.echo(f"  chosen C = {result['C']:.4g} (L2 strength {result['l2_strength']:.4g}, "
               f"on {result['valid']}); train accuracy {100 * result['train_acc']:.1f}%")
    click.echo(f"written: {dest}")


@cli.command("predict")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="The checkpoint of the run to predict with (default: best when the run "
                   "selected one, else last).")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes shown per input (by probability).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write every probability to this JSON file.")
@_set_option
@_trust_option
def predict_cmd(run_dir: Path, inputs: tuple[Path, ...], checkpoint: str | None, top: int,
                json_out: Path | None, overrides: tuple[str, ...], trust_code: bool) -> None:
    """Predicted class and probabilities for each INPUT (video files, frame folders, images),
    through the run's eval transforms and face/context crops (faces detected)."""
    import json as _json

    from .atomic import atomic_write_text
    from .evaluation import default_checkpoint, load_run_recipe, prepare
    from .predict import format_predictions, predict
    recipe = load_run_recipe(run_dir, host(), overrides, trust_code=trust_code)
    checkpoint = checkpoint or default_checkpoint(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise ClapkitError(f"{run_dir}: no {checkpoint} checkpoint at {path}")
    prep = prepare(recipe, host(), checkpoint=path, checkpoint_name=checkpoint,
                   work_dir=run_dir)
    rows, notes = predict(prep, inputs, host())
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for line in format_predictions(rows, top):
        click.echo(line)
    if json_out is not None:
        atomic_write_text(json_out, _json.dumps(rows, indent=2) + "\n")


@cli.command("runs")
@click.argument("folder", required=False, default="runs", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex"]),
              default=None, help="Print a results table instead (last, avg, forgetting, "
              "BWT, backbone, memory; mean ± std over the seeds of `run --seeds`).")
def runs_cmd(folder: Path, fmt: str | None) -> None:
    """One line per run folder under FOLDER (default runs/): recipe, status, epochs, best
    valid UAR (classification runs) or last/average accuracy (incremental runs), test
    WAR/UAR, the WAR/UAR of each `clapkit eval` result in the folder (percent), and what of a
    damaged folder could not be read; or, with --format, a results table."""
    from .runs import describe_run, find_runs, format_rows
    if not folder.is_dir():
        raise ClapkitError(f"{folder}: no such folder (clapkit run writes runs/<name> by "
                           "default)")
    if fmt is not None:
        from .results_table import collect_results, format_table
        results = collect_results(folder)
        if not results:
            raise ClapkitError(f"{folder}: no finished run or seed aggregate to tabulate "
                               "(a run writes summary.json when it ends)")
        click.echo(format_table(results, fmt), nl=False)
        return
    rows = [describe_run(r) for r in find_runs(folder)]
    if not rows:
        click.echo(f"no run folders under {folder} (a run folder holds recipe.toml)")
        return
    for line in format_rows(rows):
        click.echo(line)


# --- commands that live in their own modules ------------------------------------------------

def _add_lazy_groups() -> None:
    for module, attr in (("clapkit.cache.cli", "cache"), ("clapkit.data.cli", "data")):
        cli.add_command(getattr(importlib.import_module(module), attr))


_extended = False


def get_cli() -> click.Group:
    """The CLI with the core's command groups and every plugin's commands added."""
    global _extended
    if not _extended:
        _add_lazy_groups()
        host().hook.clapkit_add_commands(cli=cli)
        _extended = True
    return cli


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rc = get_cli().main(args=args, prog_name="clapkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClapkitError as exc:
        if debug:
            raise
        click.echo(f"error: {user_message(exc)}", err=True)
        sys.exit(2)
    except OSError as exc:        # a path the user gave that the system refuses: one line
        if debug:
            raise
        click.echo(f"error: {exc.strerror or exc}"
                   + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
                   + " (--debug shows the traceback)", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
