"""Built-in backbone components."""
