"""Benchmark suites (tritonsagan-bench) and their recorded results under bench/results/."""
