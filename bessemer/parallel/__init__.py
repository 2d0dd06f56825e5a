"""Parallelism applied to a plain model from outside, in one fixed order (see parallelize.py)."""

from bessemer.parallel.dims import ParallelDims

__all__ = ["ParallelDims"]
