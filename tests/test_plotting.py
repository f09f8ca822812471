"""The figures a person reads: learning-curve task labels that never overlap (however many
short stages), stage bands with a legend, and a heatmap whose axes name the tasks."""

from __future__ import annotations

import itertools

import pytest

import clapkit.plotting as plotting


@pytest.fixture
def captured(monkeypatch, tmp_path):
    figs = []

    def keep(fig, path, dpi):
        fig.canvas.draw()
        figs.append(fig)
        return path

    monkeypatch.setattr(plotting, "save_figure_atomic", keep)
    return figs


def _history(tasks: int) -> list[dict]:
    """20 epochs of `task` then 1 of `balanced_finetune` per task (the demo's short stage)."""
    out = []
    for t in range(tasks):
        for stage, n in (("task", 20), ("balanced_finetune", 1)):
            out += [{"task": t, "stage": stage, "epoch": e, "train/war": 0.5,
                     "loss/total": 1.0} for e in range(n)]
    return out


@pytest.mark.parametrize("tasks", [5, 10])
def test_task_labels_do_not_overlap(captured, tmp_path, tasks):
    plotting.plot_learning_curves(_history(tasks), tmp_path / "lc.png")
    fig = captured[-1]
    top = fig.axes[0]
    labels = [t for t in top.texts if t.get_text().startswith("task ")]
    assert [t.get_text() for t in labels] == [f"task {i}" for i in range(tasks)]
    boxes = [t.get_window_extent() for t in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend_texts == ["stage task", "stage balanced_finetune"]


def test_many_tasks_are_labelled_sparsely(captured, tmp_path):
    plotting.plot_learning_curves(_history(50), tmp_path / "lc.png")
    labels = [t for t in captured[-1].axes[0].texts if t.get_text().startswith("task ")]
    assert 0 < len(labels) <= 20


def test_heatmap_names_the_tasks(captured, tmp_path):
    plotting.plot_accuracy_matrix([[0.5], [0.4, 0.6], [0.3, 0.2, 0.9]], tmp_path / "m.png")
    ax = captured[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["task 0", "task 1", "task 2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["task 0", "task 1", "task 2"]
    assert sorted(t.get_text() for t in ax.texts) == ["20.0", "30.0", "40.0", "50.0", "60.0",
                                                      "90.0"]
