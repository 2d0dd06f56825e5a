"""The device mesh: named dims pp, dp_replicate, dp_shard, cp, tp, plus the flattened views components need.

Every dim is kept, size 1 included, so a component asks for a dim by name without asking which dims exist.
Flattened views: "dp" (dp_replicate x dp_shard: the data loader's rank and the sums over samples),
"dp_shard_cp" (what FSDP shards over) and "dp_cp" (the ranks whose losses add up to the step's loss).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from bessemer.parallel.dims import ParallelDims

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
_FLAT = {
    "dp": ("dp_replicate", "dp_shard"),
    "dp_shard_cp": ("dp_shard", "cp"),
    "dp_cp": ("dp_replicate", "dp_shard", "cp"),
}


@dataclass
class ParallelMesh:
    """The world mesh and its flattened views, each reachable by name: `mesh["tp"]`, `mesh["dp"]`."""

    world: DeviceMesh
    flat: dict[str, DeviceMesh]

    def __getitem__(self, name: str) -> DeviceMesh:
        # torch asks callers to keep flattened meshes themselves rather than slice them from the root again
        return self.flat[name] if name in self.flat else self.world[name]

    def fsdp(self, dims: ParallelDims) -> DeviceMesh:
        """1-D over dp_shard x cp (FSDP), or 2-D (dp_replicate, dp_shard x cp): HSDP, or with a shard dim of size 1,
        replicated data parallelism."""
        if dims.dp_replicate == 1:
            return self.flat["dp_shard_cp"]
        if dims.cp == 1:
            return self.world["dp_replicate", "dp_shard"]
        return self.world["dp_replicate", "dp_shard_cp"]


def build_mesh(dims: ParallelDims, device_type: str) -> ParallelMesh:
    """The world's mesh in the order pp, dp_replicate, dp_shard, cp, tp (tp innermost: neighbours share a node)."""
    shape = tuple(getattr(dims, name) for name in MESH_DIMS)
    world = init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS)
    # _flatten is how torch (2.11 to 2.13) names a view over several dims; there is no public spelling yet
    flat = {name: world[parts]._flatten(name) for name, parts in _FLAT.items()}
    return ParallelMesh(world, flat)
