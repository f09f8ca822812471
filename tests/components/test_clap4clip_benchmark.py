"""benchmarks/clap4clip_step.py: rows and JSON keys (tiny sizes; the real grid is slow)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "clap4clip_step.py"


def test_step_benchmark_writes_one_row_per_setting(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("clap4clip_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "rows.jsonl"
    rc = mod.main(["--json", str(out), "--tasks", "1", "3", "--samples", "2", "--dim", "16",
                   "--batch", "4", "--classes-per-task", "2", "--warmup", "1", "--steps", "2",
                   "--context", "both"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2                          # contexts x hierarchy x tasks
    for r in rows:
        assert {"tasks", "num_samples", "hierarchical", "step_s", "peak_mb"} <= set(r)
        assert r["step_s"] > 0 and r["peak_mb"] >= 0 and r["num_samples"] == 2
    assert {(r["tasks"], r["hierarchical"], r["context"]) for r in rows} == {
        (t, h, c) for t in (1, 3) for h in (False, True) for c in ("per_batch", "per_sample")}
    assert "per_sample" in capsys.readouterr().out
