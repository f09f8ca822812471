"""Contract suites for third-party and built-in components.

    from clapkit.testing import HeadContract

    class TestMyHead(HeadContract):
        components = ["my_head"]   # omit to check every registered head
"""

from .contracts import (SUITES, AdapterContract, BackboneContract, Contract, DatasetContract,
                        DemoContract, HeadContract, LoggerContract, LossContract, ModuleContract,
                        PromptContract, RouterContract, SelectorContract)

__all__ = ["AdapterContract", "BackboneContract", "Contract", "DatasetContract", "DemoContract",
           "HeadContract", "LoggerContract", "LossContract", "ModuleContract", "PromptContract",
           "RouterContract", "SelectorContract", "SUITES"]
