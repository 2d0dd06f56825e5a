"""Parallelism applied to a plain model from outside, in one fixed order (see parallelize.py)."""

from bessemer.parallel.dims import ParallelDims, check_layout
from bessemer.parallel.mesh import build_mesh
from bessemer.parallel.parallelize import ParallelModel, materialize, parallelize

__all__ = ["ParallelDims", "ParallelModel", "build_mesh", "check_layout", "materialize", "parallelize"]
