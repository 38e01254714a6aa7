"""Baselines the benchmark compares against that need training of their own (DreamBooth)."""
