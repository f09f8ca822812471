"""Built-in dataset components."""
