"""Several training processes (torchrun, gloo on CPU): who am I, and the few collectives the loop needs.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them
(plain `picogpt-train`) everything here is a no-op for a world of one.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from picogpt.errors import PicoError


class PeerLost(PicoError):
    """Another rank died or was stopped: this one cannot go on."""


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true on every rank if it is true on any (stop decisions must be unanimous);
        one all-reduce for all of them."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([int(f) for f in flags])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def from_main(self, value: int) -> int:
        """Rank 0's value, on every rank."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.broadcast(t, src=0)
        return int(t.item())

    def share(self, obj: Any) -> Any:
        """Rank 0's object (pickled over the process group), on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def in_sync(self, model: torch.nn.Module) -> bool:
        """Are the parameters identical on every rank? (per-tensor sums compared exactly)"""
        if not self.enabled:
            return True
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
        lo, hi = sums.clone(), sums.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            # Wait for every rank (rank 0 may still be writing the last checkpoint): tearing gloo down
            # while a peer is still talking aborted a rank now and then ("terminate called ...").
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def peer_lost(dist: Dist, exc: BaseException, out: object) -> PeerLost:
    """The one-line error for a collective that failed because another rank is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGTERM would only add a traceback
    why = re.sub(r"\[[^\]]*\.cc:\d+\]\s*", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return PeerLost(f"rank {dist.rank}: lost contact with another rank ({why[:100]}); "
                    f"the last checkpoint in {out} is intact")


def init_distributed(timeout_s: float = 300.0) -> Dist:
    """Join the torchrun job described by the environment (gloo: CPU tensors over TCP)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    try:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    except Exception as exc:
        raise PicoError(f"rank {rank}: could not join the job at {os.environ.get('MASTER_ADDR')}:"
                        f"{os.environ.get('MASTER_PORT')} ({str(exc).splitlines()[0][:160]})") from None
    dist = Dist(rank, world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))

    def on_term(signum: int, frame: Any) -> None:
        # torchrun sends SIGTERM to the survivors when one rank fails; say it once, then exit quietly.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise PeerLost(f"rank {rank}: stopped by the launcher (another rank failed or the job was cancelled)")

    signal.signal(signal.SIGTERM, on_term)
    return dist
