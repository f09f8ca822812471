"""Built-in loss components."""
