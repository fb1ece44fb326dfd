"""Benchmarks: pynode's agents side by side with the upstream ones, in one run (see bench/README.md)."""
