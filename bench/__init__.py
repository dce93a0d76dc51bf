"""Benchmarks (figures printed, not tests); see bench/README.md."""
