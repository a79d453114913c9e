"""Many processes, one result: data-parallel training and sharded inference on torch.distributed.

camkit does not launch processes; the launchers do, and every process runs the same command:

    torchrun --nproc-per-node 4 -m camkit train DATA --cache CACHE        # one machine, 4 GPUs
    accelerate launch --num-processes 4 -m camkit train DATA --cache CACHE
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m camkit train ...
    torchrun --nproc-per-node 2 -m camkit cam IMAGES -m RUN --out cams     # images sharded across ranks

The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) says who
this process is (`launch()`); `process_group()` joins the group for a command (gloo on CPU,
nccl on CUDA) and leaves it at the end; without a launcher both are no-ops and every helper
below does what a single process would. Training wraps the model in torch's
DistributedDataParallel (gradients all-reduced in backward; buffers broadcast from rank 0 on
each forward, so every rank ends with the same weights); inference splits the input list into
contiguous blocks (`shard`), so concatenating the ranks' results in rank order (`gather`) is
the input order. Writing is rank 0's (`on_main`): the others wait, and an error there is
raised on every rank as the same one line.

A rank waits for the others in each collective (an all-reduce, a barrier) at most
`group_timeout()`: `camkit train --ddp-timeout SECONDS`, else the environment variable
CAMKIT_DDP_TIMEOUT, else 30 minutes (torch's own default, kept: the longest honest wait is rank
0 decoding a large dataset into the cache alone while the others wait for it). A peer that
stops (killed, out of memory, its own error) or does not answer in time ends the others with
one line naming it (`PeerLost`), not a backend traceback.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from camkit.core.device import resolve_device
from camkit.errors import CamkitError

T = TypeVar("T")
DEFAULT_TIMEOUT = 1800.0          # seconds: torch's default for a process group, kept (see above)
TIMEOUT_ENV = "CAMKIT_DDP_TIMEOUT"
# what gloo and the TCP store say when a peer is gone or silent (torch 2.x; nccl's watchdog aborts the process)
GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused")
SILENT = ("Timed out", "timed out", "Timeout")


class PeerLost(CamkitError):
    """Another process of the group stopped, or did not answer within the group's timeout."""


@dataclass(frozen=True)
class Launch:
    """Who this process is in the launcher's group (rank 0 of 1 without a launcher)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launch() -> Launch:
    """Rank, world size and local rank from the environment torchrun and accelerate launch set;
    a malformed value is one CamkitError naming it."""
    def read(name: str, default: int) -> int:
        raw = os.environ.get(name, "")
        if raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise CamkitError(f"environment variable {name}={raw!r} is not an integer "
                              "(torchrun and accelerate launch set it)") from None

    world, rank = read("WORLD_SIZE", 1), read("RANK", 0)
    local = read("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise CamkitError(f"RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world} do not describe a process "
                          "group (need 0 <= RANK < WORLD_SIZE)")
    return Launch(rank, world, local)


def joined() -> bool:
    """Whether this process is in an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for CUDA under a launcher, else `device`."""
    info = launch()
    if device.type == "cuda" and info.active:
        return torch.device("cuda", info.local_rank)
    return device


def group_timeout(seconds: float | None = None) -> timedelta:
    """How long a rank waits for the others in one collective: `seconds` (--ddp-timeout), else
    CAMKIT_DDP_TIMEOUT, else DEFAULT_TIMEOUT; anything but a positive number is one line."""
    source = "--ddp-timeout"
    if seconds is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return timedelta(seconds=DEFAULT_TIMEOUT)
        source = f"environment variable {TIMEOUT_ENV}={raw!r}"
        try:
            seconds = float(raw)
        except ValueError:
            raise CamkitError(f"{source} is not a number of seconds") from None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise CamkitError(f"{source} must be a positive number of seconds, not {seconds}")
    return timedelta(seconds=seconds)


def peer_lost(error: BaseException, info: Launch, wait: timedelta) -> PeerLost | None:
    """The one line for a collective that failed because a peer is gone or silent (None for
    any other error). gloo names the peer by address only: with two processes it is the
    other rank; with more, 'a peer rank'."""
    text = str(error)
    if not isinstance(error, RuntimeError) or not any(m in text for m in GONE + SILENT):
        return None
    who = f"peer rank {1 - info.rank}" if info.world_size == 2 else "a peer rank"
    where = f"(this is rank {info.rank} of {info.world_size})"
    if any(m in text for m in GONE):
        return PeerLost(f"{who} stopped {where}; its own error, if any, is in its output")
    return PeerLost(f"{who} did not answer within {wait.total_seconds():g} s {where}; a longer wait: "
                    f"--ddp-timeout SECONDS or {TIMEOUT_ENV}")


@contextlib.contextmanager
def process_group(device: torch.device | str = "cpu", timeout: float | None = None) -> Iterator[Launch]:
    """Join the launcher's process group for the block, and leave it after: nccl for CUDA,
    gloo for the CPU, each collective waiting at most `group_timeout(timeout)`; a peer that
    stops or does not answer in time is one PeerLost line on the ranks left. A single process
    (no launcher), or a group already joined by the caller (a notebook, accelerate's
    Accelerator), is left as it is."""
    info = launch()
    if not info.active or not dist.is_available() or dist.is_initialized():
        yield info
        return
    wait = group_timeout(timeout)
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise CamkitError(f"WORLD_SIZE={info.world_size} but {' and '.join(missing)} not set: start camkit "
                          "with torchrun or accelerate launch")
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=info.rank, world_size=info.world_size, timeout=wait)
    except RuntimeError as e:
        raise peer_lost(e, info, wait) or e from None
    try:
        yield info
        dist.barrier()   # leave together: a gloo peer whose partner has already gone can abort at exit
    except RuntimeError as e:
        lost = peer_lost(e, info, wait)
        if lost is None:
            raise
        raise lost from None
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def group_for(device: str | None = None, timeout: float | None = None) -> Iterator[None]:
    """The block in the launcher's group when started by one and not yet in a group (the
    device, for the backend, is `device` or camkit's default); else the block as it is. An
    explicit `timeout` is checked even in a single process, so a wrong value is refused
    wherever the command runs."""
    if timeout is not None:
        group_timeout(timeout)
    if not launch().active or joined():
        yield
        return

    with process_group(local_device(resolve_device(device)), timeout):
        yield


def in_group(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` inside `process_group()` when started by a launcher and not yet in a group
    (the device, for the backend, is fn's `device` keyword or camkit's default), so the
    library functions `train`, `cam`, `predict` and `rank` join by themselves."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        with group_for(kwargs.get("device")):
            return fn(*args, **kwargs)

    return run


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the joined group; (0, 1) in a single process."""
    return (dist.get_rank(), dist.get_world_size()) if joined() else (0, 1)


def block(n: int, rank: int, world: int) -> range:
    """Rank's contiguous block of n items: [rank * n // world, (rank + 1) * n // world). The
    blocks cover 0..n-1 in order and differ in size by at most one, so the ranks' results
    concatenated in rank order are in input order."""
    return range(rank * n // world, (rank + 1) * n // world)


def shard(n: int) -> range:
    """This process's block of n items (range(n) in a single process)."""
    return block(n, *rank_world())


def gather(part: list[T]) -> list[T]:
    """Every rank's `part` concatenated in rank order, on every rank (all_gather_object, so
    parts may differ in length); in a single process `part` itself."""
    if not joined():
        return part
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return [x for p in parts for x in p]


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if not joined():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if joined():
        dist.barrier()


def _run_main(fn: Callable[[], T]) -> T | None:
    """fn() on rank 0; its error (one line) raised on every rank, so no rank waits forever."""
    result, error = None, None
    if not joined() or dist.get_rank() == 0:
        try:
            result = fn()
        except CamkitError as e:
            error = str(e)
            if not joined():
                raise
        except BaseException as e:
            broadcast(f"rank 0 failed ({type(e).__name__}: {e})")
            raise
    error = broadcast(error)
    if error is not None:
        raise CamkitError(error)
    return result


def on_main(fn: Callable[[], T]) -> T | None:
    """fn() on rank 0 only, the other ranks waiting for it (writing a run or a CAM index):
    its result on rank 0, None on the others."""
    return _run_main(fn)


def main_first(fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the other ranks (building a cache or an output folder that the
    others then only open): each rank gets its own result, and none goes on before all have
    theirs (rank 0 writing into the folder must not race the others' checks of it)."""
    result = _run_main(fn)
    if joined() and dist.get_rank() != 0:
        result = fn()
    barrier()
    return result


def ddp_callback(device: torch.device):
    """A fastai Callback wrapping the Learner's model in DistributedDataParallel for each fit
    (fine_tune's two fits each wrap the model as frozen or unfrozen then) and unwrapping it
    after, so predictions and saving see the plain model. fastai's own DistributedTrainer
    needs its TfmdDL loaders and broadcasts through CUDA; camkit's loaders shard themselves."""
    from fastai.callback.core import Callback
    from torch.nn.parallel import DistributedDataParallel

    class DataParallel(Callback):
        order = 11  # after TrainEvalCallback and the precision callbacks' model changes

        def before_fit(self):
            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            self.learn.model = DistributedDataParallel(self.learn.model, device_ids=ids)

        def after_loss(self):
            # every rank logs, and EpochLog judges divergence on, the same mean loss: a rank
            # that stopped alone would leave the others waiting in the next all-reduce
            if self.training:
                loss = self.learn.loss.detach().float().clone()
                dist.all_reduce(loss)
                self.learn.loss = loss / dist.get_world_size()

        def after_fit(self):
            if isinstance(self.learn.model, DistributedDataParallel):
                self.learn.model = self.learn.model.module

    return DataParallel()
