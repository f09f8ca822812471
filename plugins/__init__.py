"""Built-in clapkit components (import package ``clapkit_plugins``).

Each module is one pluggy plugin, registered through the ``clapkit`` entry-point group in
pyproject.toml exactly as a third-party package registers its own.
"""
