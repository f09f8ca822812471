"""``run.threads`` / ``clapkit run --threads`` and the metrics file every run writes.

The thread count decides the order of float sums (hence the figures) and whether OpenMP
threads oversubscribe a loaded machine, so a run sets it before building anything, records it
(``recipe.toml``, ``summary.json``) and gives the process its old count back afterwards.
``metrics.jsonl`` is written whatever loggers the recipe lists.
"""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

import engine_standins as es
from clapkit import cli as cli_mod
from clapkit import hookimpl
from clapkit.errors import RecipeError
from clapkit.plugins import default_host, get_plugin_host
from clapkit.recipe import load_recipe

ONE_EPOCH = es.BASE_RECIPE.replace("epochs = 2", "epochs = 1")


class ThreadProbe:
    """Records torch's thread count when the run starts and at each epoch end."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def clapkit_run_start(self, run):
        self.seen.append(torch.get_num_threads())

    @hookimpl
    def clapkit_epoch_end(self, run, task, stage, epoch, metrics):
        self.seen.append(torch.get_num_threads())


def _cli(args):
    with pytest.raises(SystemExit) as ex:
        cli_mod.main(args)
    return ex.value.code


def _events(path):
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_threads_option_is_applied_recorded_and_undone(tmp_path):
    path = es.write_recipe(tmp_path, ONE_EPOCH)        # no [log] section at all
    out = tmp_path / "out"
    probe = ThreadProbe()
    host = default_host()                       # the one the command line uses
    host.register_listener(probe)
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    try:
        code = _cli(["run", str(path), "--threads", str(want), "--out", str(out),
                     "--set", f'cache.dir="{tmp_path / "cache"}"'])
    finally:
        host.unregister_listener(probe)
    assert code == 0
    assert probe.seen and set(probe.seen) == {want}            # the whole run, every epoch
    assert torch.get_num_threads() == before                   # the process gets it back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"] == want
    written = tomllib.loads((out / "recipe.toml").read_text())
    assert written["run"]["threads"] == want
    # the metrics file although the recipe lists no logger (console is the default one)
    events = _events(out / "metrics.jsonl")
    assert events[0] == "run_start" and events[-1] == "run_end"
    assert events.count("epoch_end") == 2                       # two stages, one epoch each


def test_a_listed_jsonl_logger_replaces_the_default_one(tmp_path):
    """A recipe that configures the jsonl logger gets it with its options, once."""
    path = es.write_recipe(tmp_path, ONE_EPOCH + '\n[log.events]\nplugin = "jsonl"\n'
                           'file = "events.jsonl"\n\n[log.console]\nplugin = "console"\n')
    out = tmp_path / "out"
    assert _cli(["run", str(path), "--out", str(out),
                 "--set", f'cache.dir="{tmp_path / "cache"}"']) == 0
    assert not (out / "metrics.jsonl").exists()
    assert _events(out / "events.jsonl").count("epoch_end") == 2


def test_the_default_thread_count_is_one(tmp_path):
    recipe = load_recipe(es.write_recipe(tmp_path), get_plugin_host())
    assert recipe.run.threads == 1


@pytest.mark.parametrize("value, problem", [("-1", ">= 0 and <= 1024"),
                                            ("100000", ">= 0 and <= 1024"),
                                            ("'two'", "expected an integer"),
                                            ("1.5", "expected an integer")])
def test_bad_thread_counts_are_refused_by_key(tmp_path, value, problem):
    path = es.write_recipe(tmp_path)
    path.write_text(path.read_text().replace("progress = false",
                                             f"progress = false\nthreads = {value}"))
    with pytest.raises(RecipeError) as ex:
        load_recipe(path, get_plugin_host())
    msg = str(ex.value)
    assert str(path) in msg and "run.threads" in msg and problem in msg


def test_the_cli_refuses_a_thread_count_out_of_range(tmp_path, capsys):
    path = es.write_recipe(tmp_path)
    assert _cli(["run", str(path), "--threads", "5000"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("folder", ["../..", "/tmp/elsewhere", "a/../../b"])
def test_the_metrics_file_never_leaves_the_run_folder(tmp_path, folder):
    path = es.write_recipe(tmp_path, es.BASE_RECIPE + f'\n[log.jsonl]\nplugin = "jsonl"\n'
                           f'dir = "{folder}"\n')
    with pytest.raises(RecipeError) as ex:
        load_recipe(path, get_plugin_host())
    msg = str(ex.value)
    assert str(path) in msg and "log.jsonl.dir" in msg and "inside the run folder" in msg
