"""Every contract suite against every registered component (built-in or installed)."""

from clapkit.testing import (AdapterContract, BackboneContract, DatasetContract, DemoContract,
                             HeadContract,
                             LoggerContract, LossContract, PromptContract, RouterContract,
                             SelectorContract)


class TestBackbones(BackboneContract):
    pass


class TestPrompts(PromptContract):
    pass


class TestAdapters(AdapterContract):
    pass


class TestRouters(RouterContract):
    pass


class TestHeads(HeadContract):
    pass


class TestLosses(LossContract):
    pass


class TestSelectors(SelectorContract):
    pass


class TestDatasets(DatasetContract):
    pass


class TestLoggers(LoggerContract):
    pass


class TestDemoGenerators(DemoContract):
    pass
