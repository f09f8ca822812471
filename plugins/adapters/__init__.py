"""Built-in adapter components."""
