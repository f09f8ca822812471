"""Built-in logger components."""
