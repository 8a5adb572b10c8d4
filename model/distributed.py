"""Data-parallel training across processes: `torchrun --nproc-per-node N $(which cmkp-train) ...`.

torchrun sets RANK, WORLD_SIZE and the rendezvous address; `Ranks.from_environment()` joins the process group
(gloo on CPU, NCCL on CUDA, each rank on its own GPU by LOCAL_RANK). Every rank builds the same global batches
from the same seed and trains on its share of each (posts rank, rank + N, ...), so that the optimiser steps over
the same global batch as a single process would; each loss term is re-weighted so that the gradients that
DistributedDataParallel averages equal the single process's (see `global_term_scale`). Validation decodes a
share of the batches on each rank and gathers the candidates, so every rank takes the same decisions; rank 0
alone writes the run directory. Without WORLD_SIZE (or with 1) every method is a no-op on one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_environment(cls, device: torch.device) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch: list[int]) -> list[int]:
        """This rank's posts of a global batch; a batch smaller than the world is trained whole on every rank
        (its terms' weights then come out as 1 / world each, see `global_term_scale`)."""
        return batch if len(batch) < self.world else batch[self.rank::self.world]

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, items: list) -> list:
        """Every rank's `items`, concatenated in rank order, on every rank."""
        if self.world == 1:
            return items
        parts: list = [None] * self.world
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group once every rank is done: a gloo group left to the interpreter's exit can
        abort the process ("terminate called without an active exception") after its work is written."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


ONE_PROCESS = Ranks()      # training without torchrun


def global_term_scale(local: dict[str, int], ranks: Ranks) -> dict[str, float]:
    """Weights of the loss terms of one rank's share of a global batch.

    Each term of the model's loss is a mean over items (keyphrases, posts) of the batch it sees. Over the global
    batch it is sum_r n_r mean_r / N; DistributedDataParallel averages the ranks' gradients (divides by the
    world size W), so rank r's term is weighted by n_r W / N: the averaged gradient is the global batch's.
    """
    names = sorted(local)
    totals = ranks.sum([float(local[name]) for name in names])
    return {name: local[name] * ranks.world / total if total else 0.0 for name, total in zip(names, totals)}


def sync_buffers(model: torch.nn.Module, ranks: Ranks, skip: str = "memory.") -> None:
    """Rank 0's buffers (normalisation statistics, the aggregation weight) on every rank, so that every rank
    validates the model rank 0 saves; the keyphrase memory is built identically on every rank and skipped."""
    if ranks.world == 1:
        return
    for name, buffer in model.named_buffers():
        if not name.startswith(skip):
            dist.broadcast(buffer, src=0)


def data_parallel(model: torch.nn.Module, ranks: Ranks):
    """The module training calls: `model` itself on one process, its DistributedDataParallel wrapper on several
    (built again whenever the set of parameters that learn changes)."""
    if ranks.world == 1:
        return model
    # Not every parameter takes part in every batch (absent modalities); buffers are synchronised before
    # validation instead of at every forward (sync_buffers).
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)
