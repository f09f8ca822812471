"""Suites for the plain-object kinds: selector, dataset, logger, demo generator."""

from __future__ import annotations

import json
import random
import types
from typing import Any

import pytest
import torch

from ..data.base import ClipDataset, DatasetSource
from ..data.demo import MARKER, publish_demo
from ..errors import ClapkitError
from ..hookspecs import EVENT_HOOKS
from ..interfaces import Selector, class_quota
from . import context as C
from .base import Contract, who


class SelectorContract(Contract):
    """Selectors get :class:`SelectionInputs` exactly as the memory update builds them."""

    kind = "selector"

    def exercise(self, entry, obj: Any, ctx) -> None:
        obj.select(C.selection_inputs(ctx), 9)

    def _check(self, entry, idx: torch.Tensor, inputs, budget: int) -> None:
        n = len(inputs.labels)
        assert torch.is_tensor(idx) and idx.dtype == torch.long and idx.dim() == 1, \
            f"{who(entry)}: select returned {getattr(idx, 'dtype', type(idx))}, expected a 1-d " \
            f"LongTensor of positions"
        assert ((idx >= 0) & (idx < n)).all(), (
            f"{who(entry)}: select returned {idx.tolist()}, not positions in [0, {n}) (the "
            f"dataset indices are inputs.index; return positions)")
        assert len(set(idx.tolist())) == len(idx), f"{who(entry)}: duplicate positions"
        want = class_quota(inputs.labels, budget)
        got = torch.bincount(inputs.labels[idx], minlength=len(want)).tolist()
        assert got == [want[c] for c in range(len(want))], \
            f"{who(entry)}: per-class counts {got}, expected the class quota {list(want.values())}"

    def test_is_a_selector(self, entry, contract_ctx):
        assert isinstance(self.make(entry, contract_ctx), Selector), f"{who(entry)}"

    def test_selects_class_balanced_positions(self, entry, contract_ctx):
        inputs = C.selection_inputs(contract_ctx)
        self._check(entry, self.make(entry, contract_ctx).select(inputs, 9), inputs, 9)

    def test_without_monte_carlo_samples(self, entry, contract_ctx):
        inputs = C.selection_inputs(contract_ctx, samples=None)
        try:
            idx = self.make(entry, contract_ctx).select(inputs, 9)
        except ClapkitError:
            return   # a selector that needs samples may say so
        self._check(entry, idx, inputs, 9)

    def test_budget_larger_than_data_keeps_everything(self, entry, contract_ctx):
        inputs = C.selection_inputs(contract_ctx, per_class=(2, 1))
        idx = self.make(entry, contract_ctx).select(inputs, 10)
        assert sorted(idx.tolist()) == [0, 1, 2], f"{who(entry)}: kept {idx.tolist()} of 3"


class DatasetContract(Contract):
    kind = "dataset"

    def exercise(self, entry, obj: Any, ctx) -> None:
        ref = obj.refs(obj.splits()[0])[0]
        obj.load(ref, False, random.Random(0))

    def test_source_lists_items(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        assert isinstance(src, DatasetSource)
        assert src.classes and src.splits()
        for split in src.splits():
            refs = src.refs(split)
            assert all(0 <= r.label < len(src.classes) for r in refs)
            assert len({r.id for r in refs}) == len(refs), f"duplicate ids in split {split}"

    def test_items_follow_the_item_contract(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        split = src.splits()[0]
        bb = contract_ctx.backbone
        ds = ClipDataset(src, split, bb.transform(False), train=False)
        item = ds[0]
        assert set(item) >= {"id", "label", "index", "streams"}
        assert tuple(item["streams"]) == tuple(src.streams)
        for s, x in item["streams"].items():
            want = (src.num_frames, 3, bb.image_size, bb.image_size)
            assert tuple(x.shape) == want, \
                f"{who(entry)}: stream {s} has shape {tuple(x.shape)}, expected {want}"

    def test_loading_is_deterministic(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        ref = src.refs(src.splits()[0])[0]
        a = src.load(ref, True, random.Random(5))
        b = src.load(ref, True, random.Random(5))
        for s in src.streams:
            assert [im.tobytes() for im in a[s]] == [im.tobytes() for im in b[s]]

    def test_fingerprint_is_stable(self, entry, contract_ctx):
        src = self.make(entry, contract_ctx)
        split = src.splits()[0]
        assert src.fingerprint(split) == self.make(entry, contract_ctx).fingerprint(split)


class LoggerContract(Contract):
    kind = "logger"

    def _run(self, tmp_path, rank: int) -> Any:
        return types.SimpleNamespace(out_dir=tmp_path, rank=rank, recipe=None,
                                     class_names=list(C.CLASS_NAMES), num_tasks=2)

    def _fire_all(self, host, run) -> None:
        metrics = {"train/war": 0.5, "train/uar": 0.4, "valid/war": 0.5, "valid/uar": 0.45,
                   "best/valid_war": 0.5, "best/valid_uar": 0.45, "best/train_war": 0.5,
                   "best/train_uar": 0.4, "loss/total": 1.0, "loss/ce": 1.0, "lr/default": 0.1,
                   "valid/confusion": [[1] * 5 for _ in range(5)], "select_split": "valid"}
        h = host.hook
        h.clapkit_run_start(run=run)
        h.clapkit_task_start(run=run, task=0, classes=[0, 1])
        h.clapkit_stage_start(run=run, task=0, stage="s1", trainable=["head.w"])
        h.clapkit_epoch_end(run=run, task=0, stage="s1", epoch=0, metrics=metrics)
        h.clapkit_stage_end(run=run, task=0, stage="s1")
        h.clapkit_checkpoint_saved(run=run, path=str(run.out_dir / "ckpt.pt"))
        h.clapkit_task_end(run=run, task=0, metrics={"acc_seen": 0.5, "acc_task/0": 0.5})
        h.clapkit_run_end(run=run, summary={"final/valid_war": 0.5, "final/valid_uar": 0.45,
                                            "best/valid_uar": 0.45})

    def test_implements_event_hooks(self, entry, contract_ctx, tmp_path):
        from ..plugins import PluginHost
        obj = self.make(entry, contract_ctx)
        host = PluginHost()
        host.register_listener(obj)
        impl = {c.name for c in host.pm.get_hookcallers(obj) or []}
        assert impl & set(EVENT_HOOKS), "logger implements none of the event hooks"
        self._fire_all(host, self._run(tmp_path, 0))

    def test_non_zero_rank_writes_nothing(self, entry, contract_ctx, tmp_path, capsys):
        from ..plugins import PluginHost
        host = PluginHost()
        host.register_listener(self.make(entry, contract_ctx))
        self._fire_all(host, self._run(tmp_path, 1))
        assert not any(tmp_path.iterdir()), "rank 1 wrote files"
        assert capsys.readouterr().out == "", "rank 1 printed output"


class DemoContract(Contract):
    """A demo generator writes a tiny set, published with its marker, that the dataset
    plugin it names reads (every split lists items)."""

    kind = "demo"

    def make(self, entry, ctx, **changes) -> Any:
        root = ctx.work_dir / f"contract-demo-{entry.name}"
        return publish_demo(entry.factory, entry.name, int(entry.meta.get("version", 1)), root,
                            tiny=True)

    def test_builds(self, entry, contract_ctx):
        root = self.make(entry, contract_ctx)
        marker = json.loads((root / MARKER).read_text())
        assert marker["kind"] == entry.name and marker["tiny"] is True

    def test_declares_an_integer_version(self, entry):
        v = entry.meta.get("version")
        assert isinstance(v, int) and not isinstance(v, bool), \
            f"{who(entry)}: meta version must be an int (bump it when the data changes)"

    def test_the_named_dataset_reads_it(self, entry, contract_ctx):
        name = entry.meta.get("dataset")
        if name is None:
            pytest.skip("the generator names no dataset plugin")
        ds_entry = contract_ctx.host.registries["dataset"].get(name)
        root = self.make(entry, contract_ctx)
        src = C.build(ds_entry, contract_ctx, options={"root": str(root)})
        for split in src.splits():
            assert src.refs(split), f"{who(entry)}: split {split} of {name} is empty"
