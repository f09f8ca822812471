"""Reusable contract suites, one per component kind (DESIGN.md section 6).

Subclass a suite in a test module named ``test_*.py``; the clapkit pytest plugin parametrises
its ``entry`` fixture over every registered component of the suite's ``kind``, or only over
``components = ["my_name"]`` when the subclass sets it::

    from clapkit.testing import HeadContract

    class TestMyHead(HeadContract):
        components = ["my_head"]

Fixtures used: ``entry`` (the :class:`~clapkit.registry.ComponentEntry`), ``contract_ctx``
(a :class:`~clapkit.interfaces.BuildContext` with a small backbone), ``clapkit_host``.
The shared rules live in :mod:`.base`, the kinds' in :mod:`.backbone_suite`,
:mod:`.module_suites` and :mod:`.other_suites`.
"""

from __future__ import annotations

from .backbone_suite import BackboneContract
from .base import Contract, ModuleContract, core_keys, expect_close, expect_shape
from .module_suites import (AdapterContract, HeadContract, LossContract, PromptContract,
                            RouterContract)
from .other_suites import DatasetContract, DemoContract, LoggerContract, SelectorContract

SUITES: dict[str, type[Contract]] = {
    s.kind: s for s in (BackboneContract, PromptContract, AdapterContract, RouterContract,
                        HeadContract, LossContract, SelectorContract, DatasetContract,
                        LoggerContract, DemoContract)
}

__all__ = ["AdapterContract", "BackboneContract", "Contract", "DatasetContract", "DemoContract",
           "HeadContract", "LoggerContract", "LossContract", "ModuleContract", "PromptContract",
           "RouterContract", "SelectorContract", "SUITES", "core_keys", "expect_close",
           "expect_shape"]
