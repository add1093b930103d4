"""The node flags that every command run under torchrun shares (`train`, `datagen`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from speculators.config.base import StrictModel


def too_many_processes(nproc: int, gpus: int) -> str | None:
    """The error for `nproc` processes on a node showing `gpus` GPUs (one process per GPU), or
    None when they fit. `gpus` 0 with --device cuda still allows the one process that then
    reports the missing GPU itself."""
    if nproc <= max(gpus, 1):
        return None
    return (
        f"--nproc-per-node {nproc}: only {gpus} GPU(s) are visible on this node (one process "
        "per GPU; counted from CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`). Lower "
        "--nproc-per-node, or use --device cpu."
    )


class NodesConfig(StrictModel):
    """How many nodes, which one this is, and where they meet. Each command adds its own
    `nproc_per_node` (its default differs)."""

    nnodes: int = Field(1, ge=1, description="Number of nodes (run the same command on each).")
    node_rank: int = Field(0, ge=0, description="This node's rank, 0..NNODES-1.")
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT of torchrun's rendezvous on the first node (multi-node)."
    )

    @model_validator(mode="after")
    def _check_nodes(self) -> NodesConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"--node-rank {self.node_rank} must be below --nnodes {self.nnodes} "
                "(nodes are numbered from 0)."
            )
        if self.rdzv_endpoint is not None:
            host, colon, port = self.rdzv_endpoint.rpartition(":")
            if not colon:
                host, port = port, "29400"  # torchrun's default port
            if not host.strip() or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"--rdzv-endpoint {self.rdzv_endpoint!r} is not HOST:PORT with a port "
                    "1-65535 (e.g. --rdzv-endpoint node0:29400)."
                )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, an address of the "
                "first node that every node can reach (e.g. --rdzv-endpoint node0:29400)."
            )
        return self
