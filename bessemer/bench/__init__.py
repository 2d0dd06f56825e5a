"""Benchmarks: training throughput on synthetic tokens, and two runs' loss curves compared."""
