"""The training engine: tasks -> stages -> epochs (DESIGN.md section 4).

``run_recipe(path, overrides=..., out_dir=..., resume=...)`` is what ``clapkit run`` calls;
``RunState`` is the ``run`` argument of every event hook.
"""

from .state import RunState

__all__ = ["RunState", "run_recipe"]


def run_recipe(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    """See :func:`clapkit.engine.runner.run_recipe`."""
    from .runner import run_recipe as _run
    return _run(*args, **kwargs)
