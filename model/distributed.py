"""torch.distributed for the trainer: one process is the degenerate case of N, with the same code path.

``torchrun --standalone --nproc-per-node=2 -m hashrec train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE`` and ``MASTER_ADDR/PORT``; :func:`setup` sees them and joins the process group (gloo on
CPU, nccl on CUDA). Without them it returns a world of one, and every helper here is a no-op, so the
single-process trainer is exactly the distributed one with ``world = 1``.

What the trainer relies on (each a known way for DDP runs to go wrong; tests/model/test_distributed.py):

- only rank 0 touches the run directory; the others wait at :meth:`Dist.barrier`;
- decisions that end loops (time budget, early stop) are taken on rank 0 and broadcast
  (:meth:`Dist.decide`), so no rank waits for a collective another rank will never join;
- each process uses ``cores / processes on this node`` torch threads (:func:`threads_per_process`);
- sparse gradients (GraphSAGE's ID tables) are averaged outside DDP, one tensor at a time
  (:func:`sync_sparse_grads`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hashrec.data import UserError
from hashrec.model.run import RunError

log = logging.getLogger(__name__)

# how long a rank that ends cleanly waits for the others before it leaves the process group
CLOSE_WAIT = timedelta(seconds=60)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_world`` on this node."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and validates."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every process gets here (no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def decide(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank (a picklable object; returned as is for one process)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its result on every rank; when it raises, every rank raises
        (a RunError with rank 0's message), so no rank waits for a collective that will never come."""
        result: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                result = ("ok", fn())
            except Exception as err:
                if not self.enabled:
                    raise
                result = (
                    "error",
                    f"{type(err).__name__}: {err}" if not isinstance(err, UserError) else str(err),
                )
        kind, value = self.decide(result)
        if kind == "error":
            raise RunError(value)
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (``[value]`` for one process)."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self, clean: bool = True) -> None:
        """Leave the process group (idempotent). After a ``clean`` end the ranks first wait for each other
        (at most :data:`CLOSE_WAIT`): a rank that tore its connections down while its peer was still on
        its way out was aborted by gloo under load ("terminate called without an active exception", seen
        in a CI run on a busy machine). After an error no rank waits (its peers may never arrive)."""
        if not (self.enabled and dist.is_initialized()):
            return
        if clean:
            try:
                work = dist.barrier(async_op=True)
                if work is not None:
                    work.wait(timeout=CLOSE_WAIT)
            except Exception as err:  # a peer that failed or hung: leave without it
                log.warning("leaving the process group without the other ranks: %s", err)
        dist.destroy_process_group()


def sparse_param_ids(model: torch.nn.Module) -> set[int]:
    """``id()`` of the parameters with sparse gradients (``nn.Embedding(sparse=True)`` weights)."""
    return {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse}


def sync_sparse_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the sparse gradients of ``params`` over the ranks, one tensor at a time (as DDP averages
    the rest). One at a time on purpose: two sparse all-reduces in flight at once through gloo corrupt the
    heap in torch 2.13, and DDP would put each table in its own bucket and reduce them concurrently."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:  # the other ranks would wait in all_reduce for this one
            raise RuntimeError("a sparse table got no gradient in this step: every rank must give it one")
        grad = p.grad.coalesce()
        dist.all_reduce(grad)  # a blocking call: the next one starts after this one ended
        p.grad = grad / world


def broadcast_from_main(params: list[torch.nn.Parameter]) -> None:
    """Give every rank rank 0's values of ``params`` (in place)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p, src=0)


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment, or return a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("rank %d of %d joined the process group (%s)", rank, world, backend)
    return Dist(rank=rank, world=world, local_world=local_world)


def local_device(device: torch.device) -> torch.device:
    """On CUDA, the GPU of this process's local rank; else ``device`` unchanged."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def threads_per_process(requested: int, local_world: int) -> int:
    """Torch threads for one process: ``requested``, or the cores this process may use shared among the
    processes of this node (torchrun sets OMP_NUM_THREADS=1, which a blanket ``os.cpu_count()`` undoes)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))
