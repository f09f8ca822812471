"""Built-in prompt components."""
