"""Contract suites for third-party and built-in components.

    from clapkit.testing import HeadContract

    class TestMyHead(HeadContract):
        components = ["my_head"]   # omit to check every registered head
"""

from .contracts import (AdapterContract, BackboneContract, Contract, DatasetContract,
                        HeadContract, LoggerContract, LossContract, ModuleContract,
                        PromptContract, RouterContract, SelectorContract, SUITES)

__all__ = ["AdapterContract", "BackboneContract", "Contract", "DatasetContract", "HeadContract",
           "LoggerContract", "LossContract", "ModuleContract", "PromptContract",
           "RouterContract", "SelectorContract", "SUITES"]
