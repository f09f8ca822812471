"""Built-in router components."""
