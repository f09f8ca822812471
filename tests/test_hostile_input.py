"""Hostile and broken input (issue 18): each case is refused with one line naming the file or
key (exit 2, no traceback), writes nothing outside the run folder and imports nothing from a
run folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clapkit.cli import main


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m clapkit ARGS`` in ``cwd`` (which ``-m`` puts first on ``sys.path``)."""
    return subprocess.run([sys.executable, "-m", "clapkit", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The ``clapkit`` console script next to this interpreter."""
    exe = Path(sys.executable).with_name("clapkit")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _main_exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``clapkit ARGS`` run in this process."""
    with pytest.raises(SystemExit) as code:
        main(args)
    return code.value.code, capsys.readouterr().err


# --- case 1: a run folder's recipe.toml is not trusted as code ------------------------------

def _booby_trapped_run(folder: Path) -> Path:
    """A downloaded 'run folder' whose recipe lists a plugin module shipped beside it; the
    module writes PWNED into the folder when imported."""
    folder.mkdir()
    (folder / "recipe.toml").write_text('plugins = ["evil"]\n[run]\nname = "x"\n')
    (folder / "evil.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('PWNED').write_text('ran')\n")
    return folder


@pytest.mark.parametrize("runner", [_cli, _script], ids=["python -m clapkit", "console script"])
def test_eval_inside_a_run_folder_does_not_import_its_code(tmp_path, runner):
    run = _booby_trapped_run(tmp_path / "run")
    res = runner("eval", ".", cwd=run)
    assert res.returncode == 2, res.stderr
    assert not (run / "PWNED").exists()
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "evil" in err and "--trust-run-code" in err
    assert "PYTHONPATH" not in err            # no advice that would run the shipped code


def test_predict_and_eval_from_elsewhere_refuse_the_shipped_module(tmp_path, capsys):
    run = _booby_trapped_run(tmp_path / "run")
    (tmp_path / "img.png").write_bytes(b"")
    rc, err = _main_exit(["predict", str(run), str(tmp_path / "img.png")], capsys)
    assert rc == 2 and "would be imported from the run folder" in err
    rc, err = _main_exit(["eval", str(run)], capsys)
    assert rc == 2 and "PYTHONPATH" not in err
    assert not (run / "PWNED").exists() and "evil" not in sys.modules


def test_trust_run_code_is_the_explicit_opt_in(tmp_path):
    run = _booby_trapped_run(tmp_path / "run")
    res = _script("eval", "--trust-run-code", ".", cwd=run)
    assert (run / "PWNED").read_text() == "ran"       # imported, as asked
    assert res.returncode == 2 and "[data] is missing" in res.stderr   # then the recipe


def test_a_symlinked_module_in_the_run_folder_is_refused(tmp_path):
    run = _booby_trapped_run(tmp_path / "run")
    real = tmp_path / "elsewhere.py"
    (run / "evil.py").rename(real)
    (run / "evil.py").symlink_to(real)
    res = _cli("eval", ".", cwd=run)
    assert res.returncode == 2 and "--trust-run-code" in res.stderr, res.stderr
    assert not (tmp_path / "PWNED").exists() and not (run / "PWNED").exists()


def test_a_namespace_package_portion_in_the_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "nspkg").mkdir(parents=True)                   # no __init__.py: a namespace package
    (run / "recipe.toml").write_text('plugins = ["nspkg.evil"]\n[run]\nname = "x"\n')
    (run / "nspkg" / "evil.py").write_text(
        "import pathlib\npathlib.Path(__file__).parent.with_name('PWNED').write_text('ran')\n")
    res = _script("eval", str(run), cwd=tmp_path)
    assert res.returncode == 2 and "would be imported from the run folder" in res.stderr
    assert "PYTHONPATH" not in res.stderr and not (run / "PWNED").exists()
    res = _cli("eval", ".", cwd=run)
    assert res.returncode == 2 and "would be imported from the run folder" in res.stderr
    assert not (run / "PWNED").exists()
    res = _script("eval", "--trust-run-code", str(run), cwd=tmp_path)
    assert (run / "PWNED").read_text() == "ran"          # the module is real code: opt-in runs it


# --- case 2: every size option has a bound --------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


STAGED = REPO / "recipes" / "demo_caer_staged.toml"     # has [adapters.temporal]


@pytest.mark.parametrize("override,bound", [
    ("adapters.temporal.heads=1000000", "from 1 to 128"),
    ("adapters.temporal.depth=100000000000000000000000000000", "at most 2**53"),
    ("adapters.temporal.depth=1000", "from 1 to 48"),
    ("adapters.temporal.depth=1e29", "expected an integer"),
    ("adapters.temporal.dim_head=100000000", "from 1 to 512"),
    ("cache.views=1000000000", "from 1 to 1000"),
    ("probe.grid=100000000", "from 2 to 1000"),
    ("data.batch_size=9223372036854775808", "at most 2**53"),     # above sys.maxsize
    ("data.batch_size=100000000", "from 1 to 65536"),
    ("memory.size=100000000000", "from 0 to 10000000"),
])
@pytest.mark.parametrize("static", [True, False], ids=["static", "built"])
def test_recipe_check_refuses_sizes_past_their_bound(override, bound, static, capsys):
    """Refused while reading the recipe, before anything is built or allocated."""
    args = ["recipe", "check", str(STAGED), "--set", override] + (["--static"] if static else [])
    rc, err = _main_exit(args, capsys)
    key = override.split("=")[0]
    assert rc == 2 and bound in err and f"--set {key}" in err, err
    assert len(err.strip().splitlines()) == 1


def test_attention_width_of_the_temporal_adapter_is_bounded(capsys):
    rc, err = _main_exit(["recipe", "check", "--static", str(STAGED), "--set",
                          "adapters.temporal.heads=128", "--set",
                          "adapters.temporal.dim_head=512"], capsys)
    assert rc == 2 and "heads x dim_head must be at most 8192" in err


@pytest.mark.parametrize("override,bound", [
    ("prompts.soft.n_ctx=100000000", "from 1 to 75"),
])
def test_prompt_context_length_is_bounded(tmp_path, override, bound, capsys):
    recipe = tmp_path / "coop.toml"
    recipe.write_text(f'extends = "{REPO / "recipes" / "demo_caer_staged.toml"}"\n'
                      '[prompts.soft]\nplugin = "coop"\n')
    rc, err = _main_exit(["recipe", "check", "--static", str(recipe), "--set", override],
                         capsys)
    assert rc == 2 and bound in err, err


@pytest.mark.parametrize("seeds,message", [
    ("0-1000000000", "names more than 1000 seeds"),            # was a list of 1e9 ints
    ("0-600,601-1200", "names more than 1000 seeds"),
    ("99999999999999999999", "above the largest seed 4294967295"),
])
def test_run_seeds_is_bounded(tmp_path, seeds, message, capsys):
    """Case 2: ``--seeds`` starts one run per seed; it is refused before any list is built."""
    rc, err = _main_exit(["run", str(STAGED), "--seeds", seeds, "--out", str(tmp_path / "o")],
                         capsys)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_detect_faces_frames_is_bounded(tmp_path, capsys):
    rc, err = _main_exit(["data", "detect-faces", str(tmp_path), "--dataset", "caer",
                          "--frames", "1000000000"], capsys)
    assert rc == 2 and "--frames" in err and "1<=x<=1024" in err, err


#: size options still unbounded (none now; the test fails when one gains a bound, so the
#: list only shrinks)
NOT_YET_BOUNDED: set[str] = set()


SIZE_NAME = ("heads", "depth", "layers", "n_ctx", "size", "views", "grid", "batch", "queue",
             "dim", "frames", "samples", "length", "bank", "reduction", "top_k", "images",
             "max_iter", "vocab", "ratio")


def _unbounded_size_options() -> set[str]:
    """``kind:name.field`` of every integer option named like a size without an upper bound,
    over the core sections and every registered component."""
    import typing

    import attrs

    from clapkit import recipe as R
    from clapkit.plugins import get_plugin_host
    from clapkit.validators import ranges_of

    found: set[str] = set()

    def walk(cls: type, where: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in attrs.fields(cls):
            tp = hints.get(f.name)
            if isinstance(tp, type) and attrs.has(tp):
                walk(tp, f"{where}.{f.name}")
                continue
            if "int" not in str(tp) or not any(s in f.name for s in SIZE_NAME):
                continue
            if not any(r.hi is not None for r in ranges_of(f.validator)) \
                    and not isinstance(f.validator, attrs.validators.in_(()).__class__):
                found.add(f"{where}.{f.name}")

    for e in get_plugin_host().registries.all_entries():
        if attrs.has(e.config_cls):
            walk(e.config_cls, f"{e.kind}:{e.name}")
    for key, cls in R.PLAIN_SECTIONS.items():
        walk(cls, key)
    return found


def test_every_size_option_has_an_upper_bound():
    assert _unbounded_size_options() == NOT_YET_BOUNDED


# --- case 3: no tracebacks: deep nesting, junk run folders in clapkit runs ------------------

@pytest.mark.parametrize("body", [
    "x = " + "[" * 5000 + "]" * 5000,                       # the parser's RecursionError
    "x = " + "[" * 40 + "]" * 40,                           # parses, but deeper than any key
    "x = " + "{a = " * 3000 + "1" + "}" * 3000,
    "[" + ".".join(["a"] * 3000) + "]\nb = 1",
], ids=["arrays-5000", "arrays-40", "inline-tables-3000", "dotted-table-3000"])
def test_deeply_nested_recipe_is_one_line(tmp_path, body, capsys):
    f = tmp_path / "deep.toml"
    f.write_text(f'[run]\nname = "x"\n{body}\n')
    rc, err = _main_exit(["recipe", "check", "--static", str(f)], capsys)
    assert rc == 2 and f"{f}: arrays or tables nest deeper than 32 levels" in err
    assert len(err.strip().splitlines()) == 1


def test_deeply_nested_override_is_one_line(capsys):
    rc, err = _main_exit(["recipe", "check", "--static", str(STAGED), "--set",
                          "run.x=" + "[" * 3000 + "]" * 3000], capsys)
    assert rc == 2 and "--set run.x: arrays or tables nest deeper" in err
    rc, err = _main_exit(["recipe", "check", "--static", str(STAGED), "--set",
                          ".".join(["a"] * 3000) + "=1"], capsys)
    assert rc == 2 and "more than 32 dotted parts" in err


GOOD_SUMMARY = '{"epochs": 4, "best/valid_uar": 0.625, "best/test_war": 0.5, ' \
    '"best/test_uar": 0.4}'


JUNK: dict[str, dict[str, str | bytes | None]] = {
    # folder name -> files (None: a folder of that name; bytes: raw content)
    "empty-summary": {"summary.json": ""},
    "non-json-summary": {"summary.json": "{not json"},
    "list-summary": {"summary.json": "[1, 2, 3]"},
    "wrong-types": {"summary.json": '{"epochs": "ten", "best/valid_uar": "high", '
                                    '"last_acc": [1], "avg_incremental_acc": {}}'},
    "infinite-epochs": {"summary.json": '{"epochs": Infinity, "best/valid_uar": NaN}'},
    "summary-is-a-folder": {"summary.json": None, "metrics.jsonl": ""},
    "bad-jsonl": {"metrics.jsonl": '[1]\n"x"\n{"event": "epoch_end", "metrics": [1]}\n'
                                   '{"event": "task_end", "metrics": {"test/war": "x"}}\n'},
    "jsonl-is-a-folder": {"metrics.jsonl": None},
    "checkpoints-is-a-file": {"checkpoints": "not a folder"},
    "recipe-not-toml": {"recipe.toml": "[[[", "summary.json": GOOD_SUMMARY},
    "recipe-run-is-a-string": {"recipe.toml": 'run = "x"\n', "summary.json": GOOD_SUMMARY},
    "recipe-deep": {"recipe.toml": "x = " + "[" * 3000 + "]" * 3000 + "\n",
                    "summary.json": GOOD_SUMMARY},
    "recipe-not-utf8": {"recipe.toml": b"\xff\xfe[run]\n", "metrics.jsonl": b"\xff\xfe\n"},
    "no-recipe": {"recipe.toml": "DELETE", "summary.json": GOOD_SUMMARY},
    "dangling-summary-link": {"summary.json": "LINK:missing-target.json"},
}


def _write_run(folder: Path, files: dict[str, str | bytes | None]) -> None:
    folder.mkdir(parents=True)
    (folder / "recipe.toml").write_text(f'[run]\nname = "{folder.name}"\n')
    for name, content in files.items():
        path = folder / name
        if content is None:
            path.mkdir(exist_ok=True)
        elif content == "DELETE":
            path.unlink()
        elif isinstance(content, str) and content.startswith("LINK:"):
            path.symlink_to(folder / content[5:])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.fixture
def junk_runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    _write_run(root / "good", {"summary.json": GOOD_SUMMARY,
                               "eval-best-test.json": '{"war": 0.75, "uar": 0.7}',
                               "eval-last-valid.json": "[]"})      # a junk eval file: skipped
    _write_run(root / "incremental", {"summary.json": '{"epochs": 6, "last_acc": 0.42, '
                                                      '"avg_incremental_acc": 0.55}'})
    for name, files in JUNK.items():
        _write_run(root / name, files)
    old = time.time() - 3600             # files that stopped changing: no run is writing them
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (old, old))
    return root


def test_runs_lists_good_runs_and_marks_junk_ones(junk_runs, capsys):
    with pytest.raises(SystemExit) as code:
        main(["runs", str(junk_runs)])
    out, err = capsys.readouterr()
    assert code.value.code == 0 and "Traceback" not in err, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == {str(junk_runs / n) for n in ("good", "incremental", *JUNK)}
    good = lines[str(junk_runs / "good")]
    assert " done " in good and "62.5" in good and "50.0/40.0" in good
    assert "best-test 75.0/70.0" in good                    # the figures clapkit eval wrote
    assert "last-valid" not in good
    inc = lines[str(junk_runs / "incremental")]
    assert "42.0/55.0" in inc                               # last / average accuracy
    for name in JUNK:
        if name in ("bad-jsonl", "jsonl-is-a-folder", "checkpoints-is-a-file",
                    "infinite-epochs", "wrong-types", "recipe-run-is-a-string"):
            continue           # readable where it matters; junk values show as "-"
        assert " damaged " in lines[str(junk_runs / name)], (name, lines[str(junk_runs / name)])
    assert "  ?  " in lines[str(junk_runs / "recipe-run-is-a-string")]   # name unknown
    assert "summary.json is empty" in lines[str(junk_runs / "empty-summary")]
    assert "summary.json holds a list" in lines[str(junk_runs / "list-summary")]
    assert "recipe.toml missing" in lines[str(junk_runs / "no-recipe")]
    assert "recipe.toml is not valid TOML" in lines[str(junk_runs / "recipe-deep")]
    assert "summary.json unreadable" in lines[str(junk_runs / "dangling-summary-link")]


def test_results_table_survives_junk_run_folders(junk_runs, capsys):
    for name, text in (("agg-list", "[1]"), ("agg-types", '{"runs": 5, "n": "x", "seeds": 3, '
                       '"memory_size": "big", "last_acc": {"mean": "x"}}'), ("agg-empty", "")):
        (junk_runs / name).mkdir()
        (junk_runs / name / "aggregate.json").write_text(text)
    with pytest.raises(SystemExit) as code:
        main(["runs", str(junk_runs), "--format", "markdown"])
    out, err = capsys.readouterr()
    assert code.value.code == 0 and "Traceback" not in err, err
    assert "incremental" in out and "42.0" in out


# --- case 4: metrics only inside the run folder ---------------------------------------------

@pytest.mark.parametrize("where", ["/tmp/elsewhere", "../..", "logs/../../x", "~/x", "C:/x"])
@pytest.mark.parametrize("plugin,key", [("jsonl", "dir"), ("plots", "subdir"),
                                        ("tensorboard", "subdir")])
def test_logger_folders_outside_the_run_are_refused(tmp_path, plugin, key, where, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'extends = "{STAGED}"\n[log.{plugin}]\nplugin = "{plugin}"\n'
                      f'{key} = "{where}"\n')
    rc, err = _main_exit(["recipe", "check", "--static", str(recipe)], capsys)
    if where == "~/x":            # a folder named "~" inside the run folder: allowed
        assert rc == 0, err
        return
    assert rc == 2 and f"log.{plugin}.{key}" in err and "inside the run folder" in err, err
    assert len(err.strip().splitlines()) == 1


# --- case 5: frames overwritten in place change the dataset fingerprint ---------------------

def test_a_frame_overwritten_in_place_changes_the_fingerprint(tmp_path):
    from PIL import Image

    from clapkit.data.base import file_identity

    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(clip / f"{i}.png")
    folder_stat = os.stat(clip)
    before = file_identity(clip)
    # same name, same entry count; the folder's mtime is put back as it was
    Image.new("RGB", (8, 8), (255, 255, 255)).save(clip / "1.png")
    os.utime(clip / "1.png", ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns + 12345))
    os.utime(clip, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))
    after = file_identity(clip)
    assert before.split(":")[:3] == after.split(":")[:3]    # what the old identity compared
    assert after != before
    assert file_identity(clip) == after                     # stable while nothing changes


def test_the_dataset_fingerprint_follows_an_overwritten_frame(tmp_path):
    """The fingerprint the feature cache keys on (DatasetSource.fingerprint) changes when a
    frame of a frame-folder item is overwritten in place: no stale cached features."""
    from PIL import Image

    from clapkit.data.base import DatasetSource, ItemRef

    clips = []
    for c in range(2):
        clip = tmp_path / f"clip{c}"
        clip.mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (c * 100, i, 0)).save(clip / f"{i}.png")
        clips.append(clip)

    class Frames(DatasetSource):
        classes, streams, num_frames = ["a", "b"], ("image",), 3

        def splits(self) -> list[str]:
            return ["train"]

        def refs(self, split: str) -> list[ItemRef]:
            return [ItemRef(id=p.name, label=c, path=str(p)) for c, p in enumerate(clips)]

        def load(self, ref, train, rng):  # never called here
            raise AssertionError

    src = Frames()
    before = src.fingerprint("train")
    assert src.fingerprint("train") == before
    frame, folder = clips[1] / "2.png", clips[1]
    st = os.stat(folder)
    frame.write_bytes(frame.read_bytes() + b"\0")           # overwritten in place
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.fingerprint("train") != before


# --- case 6: a held cache lock says who holds it and how long the build waits ---------------

def test_a_cache_lock_of_a_live_process_is_reported_not_waited_on_silently(tmp_path, caplog):
    import logging
    import socket

    from clapkit.cache.lock import BuildLock
    from clapkit.errors import ClapkitError

    target = tmp_path / "feat.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = BuildLock(target, timeout=0.4, poll=0.05)
        lock.path.write_text(f"{holder.pid} {socket.gethostname()} {time.time() - 90:.0f}\n")
        with caplog.at_level(logging.WARNING, logger="clapkit.cache.lock"), \
                pytest.raises(ClapkitError, match=f"held by another builder \\(pid {holder.pid}"):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait()
    said = [r.getMessage() for r in caplog.records if "cache lock" in r.getMessage()]
    assert len(said) == 1                                  # once, when the wait starts
    assert f"pid {holder.pid} (alive) on this host" in said[0]
    assert "for 9" in said[0] and "waiting up to 0.4 s" in said[0]
    assert lock.path.read_text().split()[0] == str(holder.pid)     # not taken away


def test_a_cache_lock_naming_another_host_says_so(tmp_path, caplog):
    import logging

    from clapkit.cache.lock import BuildLock
    from clapkit.errors import ClapkitError

    lock = BuildLock(tmp_path / "feat.h5", timeout=0.2, poll=0.05)
    lock.path.write_text("4242 some-other-node 0\n")
    with caplog.at_level(logging.WARNING, logger="clapkit.cache.lock"), \
            pytest.raises(ClapkitError, match="pid 4242 on some-other-node"):
        lock.acquire()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "host some-other-node (another machine" in said and "waiting up to" in said


# --- case 8: eval and incremental figures in runs (in case 3); confusion of seen classes ----

def test_incremental_confusion_figures_show_only_the_seen_classes(tmp_path, monkeypatch):
    """Case 8: after task 0 of 3 (2 of 6 classes seen) the confusion figures are 2x2."""
    from types import SimpleNamespace

    import clapkit_plugins.loggers.plots as plots
    from clapkit.interfaces import BuildContext
    from clapkit.plugins import get_plugin_host

    drawn: list[tuple[list[list[int]], list[str] | None, str]] = []
    monkeypatch.setattr(plots, "plot_confusion",
                        lambda conf, names, path, **kw: drawn.append((conf, names, path.name)))
    entry = get_plugin_host(autoload_third_party=False).registries.logger.get("plots")
    logger = entry.factory(entry.config_cls(), BuildContext())
    run = SimpleNamespace(out_dir=tmp_path / "run", recipe=SimpleNamespace(
        run=SimpleNamespace(name="inc"), stages=[]), rank=0,
        class_names=[f"c{i}" for i in range(6)], num_tasks=3,
        task_classes=[[0, 1], [2, 3], [4, 5]])
    full = [[i * 6 + j for j in range(6)] for i in range(6)]
    logger.clapkit_epoch_end(run=run, task=0, stage="s", epoch=0,
                             metrics={"valid/confusion": full, "valid/uar": 0.5})
    logger.clapkit_task_end(run=run, task=1, metrics={"valid/confusion": full})
    assert [(len(c), len(c[0]), n, f) for c, n, f in drawn] == [
        (2, 2, ["c0", "c1"], "confusion_best_t0.png"),
        (4, 4, ["c0", "c1", "c2", "c3"], "confusion_final_t1.png")]
    assert drawn[0][0] == [[0, 1], [6, 7]]


def test_incremental_console_confusion_shows_only_the_seen_classes(tmp_path, capsys):
    from types import SimpleNamespace

    from clapkit.interfaces import BuildContext
    from clapkit.plugins import get_plugin_host

    entry = get_plugin_host(autoload_third_party=False).registries.logger.get("console")
    logger = entry.factory(entry.config_cls(), BuildContext())
    run = SimpleNamespace(out_dir=tmp_path / "run", recipe=SimpleNamespace(
        run=SimpleNamespace(name="inc"), stages=[]), rank=0,
        class_names=[f"class{i}" for i in range(6)], num_tasks=3,
        task_classes=[[0, 1], [2, 3], [4, 5]])
    full = [[7 if i == j else 0 for j in range(6)] for i in range(6)]
    logger.clapkit_task_end(run=run, task=0, metrics={"valid/confusion": full,
                                                       "acc_seen": 1.0})
    out = capsys.readouterr().out
    assert "class1" in out and "class2" not in out, out      # 2 of 6 classes seen
