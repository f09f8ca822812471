"""pytest plugin (entry point ``pytest11``): runs the contract suites over registered components.

Any test class deriving from a :mod:`clapkit.testing.contracts` suite gets its ``entry``
fixture parametrised over every component of the suite's kind (built-in or third-party), or
over the names in the class attribute ``components``. Options:

``--clapkit-backbone NAME``  the backbone the suites build text-side components with.
"""

from __future__ import annotations

import pytest

from .contracts import Contract


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("clapkit")
    group.addoption("--clapkit-backbone", default=None,
                    help="backbone component used to build components in contract suites")


@pytest.fixture(scope="session")
def clapkit_host():
    """A plugin host with every installed clapkit plugin loaded."""
    from ..plugins import get_plugin_host
    return get_plugin_host()


@pytest.fixture(scope="session")
def contract_ctx(clapkit_host, request, tmp_path_factory):
    """A BuildContext with a small backbone, 5 classes in 2 tasks and 2 streams."""
    from .context import make_context
    return make_context(clapkit_host, request.config.getoption("--clapkit-backbone"),
                        tmp_path_factory.mktemp("contract-work"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    cls = metafunc.cls
    if cls is None or not issubclass(cls, Contract) or "entry" not in metafunc.fixturenames:
        return
    from ..plugins import get_plugin_host
    host = _host_for(metafunc.config, get_plugin_host)
    registry = host.registries[cls.kind]
    names = cls.components if cls.components is not None else registry.names()
    entries = [registry.get(n) for n in names]
    metafunc.parametrize("entry", entries, ids=[f"{e.provider}:{e.name}" for e in entries])


def _host_for(config: pytest.Config, factory):
    host = getattr(config, "_clapkit_host", None)
    if host is None:
        host = factory()
        config._clapkit_host = host  # type: ignore[attr-defined]
    return host
