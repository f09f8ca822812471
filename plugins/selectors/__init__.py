"""Built-in selector components."""
