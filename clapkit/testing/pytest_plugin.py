"""pytest plugin (entry point ``pytest11``): runs the contract suites over registered components.

Any test class deriving from a :mod:`clapkit.testing.contracts` suite gets its ``entry``
fixture parametrised over every component of the suite's kind (built-in or third-party), or
over the names in the class attribute ``components``. Options:

``--clapkit-backbone NAME``   the backbone the suites build text-side components with.
``--clapkit-plugin MODULE``   also load this plugin module (repeatable), for a plugin that is
                              not installed by entry point: ``pytest --clapkit-plugin my_heads``.

One plugin host serves the whole session: collection (parametrisation) and the
``clapkit_host`` / ``contract_ctx`` fixtures see the same registries.
"""

from __future__ import annotations

from typing import Any

import pytest

from .contracts import Contract


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("clapkit")
    group.addoption("--clapkit-backbone", default=None,
                    help="backbone component used to build components in contract suites")
    group.addoption("--clapkit-plugin", action="append", default=[], metavar="MODULE",
                    help="load this clapkit plugin module (dotted name on sys.path) so the "
                         "contract suites test its components; repeatable")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--clapkit-plugin", default=None):
        session_host(config)          # a module that does not load is a usage error, now


def session_host(config: pytest.Config) -> Any:
    """The session's plugin host: every installed plugin plus ``--clapkit-plugin`` modules."""
    host = getattr(config, "_clapkit_host", None)
    if host is None:
        from ..errors import ClapkitError
        from ..plugins import get_plugin_host
        try:
            host = get_plugin_host()
            for module in config.getoption("--clapkit-plugin", default=None) or []:
                host.load_module(module, source="--clapkit-plugin")
        except ClapkitError as exc:
            raise pytest.UsageError(str(exc)) from None
        config._clapkit_host = host  # type: ignore[attr-defined]
    return host


@pytest.fixture(scope="session")
def clapkit_host(pytestconfig):
    """The session's plugin host (the one the contract suites were parametrised from)."""
    return session_host(pytestconfig)


@pytest.fixture(scope="session")
def contract_ctx(clapkit_host, pytestconfig, tmp_path_factory):
    """A BuildContext with a small backbone, 5 classes in 2 tasks and 2 streams."""
    from .context import make_context
    return make_context(clapkit_host, pytestconfig.getoption("--clapkit-backbone"),
                        tmp_path_factory.mktemp("contract-work"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    cls = metafunc.cls
    if cls is None or not issubclass(cls, Contract) or "entry" not in metafunc.fixturenames:
        return
    registry = session_host(metafunc.config).registries[cls.kind]
    names = cls.components if cls.components is not None else registry.names()
    entries = [registry.get(n) for n in names]
    metafunc.parametrize("entry", entries, ids=[f"{e.provider}:{e.name}" for e in entries])
