"""Benchmarks: figures, not tests. Each prints one JSON line per figure (see benchmarks.common)."""
