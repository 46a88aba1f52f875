"""Domain layer: pure Python/numpy, no torch."""
