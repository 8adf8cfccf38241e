"""Who am I: rank and world size from torchrun, Slurm/submitit or nothing; process group set-up.

One code path for 1 process, N processes on one machine and N x M across nodes:
- torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
- Slurm (``srun`` or a submitit job, one task per rank) sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID;
  the master is the first host of SLURM_JOB_NODELIST and the port is derived from the job id, so every task
  of a job agrees without talking;
- submitit's local executor sets SUBMITIT_LOCAL_GLOBALID / _NTASKS / _LOCALID;
- otherwise a single process, and no process group at all (collectives become no-ops).
NCCL on CUDA, gloo on CPU. gloo binds to the address this host's name resolves to; where that is a loopback
address (Debian's "127.0.1.1 host" line) and the master is elsewhere, ``gloo_interface`` picks the interface
that routes to the master instead. ``GLOO_SOCKET_IFNAME``, when set, always wins.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hpcrnn.process import master_port


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # "node[01-04,07]" -> "node01"; "a,b" -> "a"
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return True  # a name that does not resolve is no address gloo could bind to either


def gloo_interface(master: str) -> str | None:
    """The network interface gloo should use to reach ``master``, or None where gloo's own choice (the
    address of this host's name) works: that name resolves to a routable address, or the master is this
    machine's loopback anyway. Found as the interface holding the local address the kernel picks for a
    route to the master (a UDP connect sends nothing)."""
    if not _is_loopback(socket.gethostname()) or _is_loopback(master):
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(master), 9))
            local = s.getsockname()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:  # SIOCGIFADDR: the interface's IPv4 address
                    raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue
                if socket.inet_ntoa(raw[20:24]) == local:
                    return name
    except OSError:
        pass
    return None


def detect() -> tuple[int, int, int, str]:
    """(rank, world_size, local_rank, launcher) from the environment, without side effects."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun"
    if "SUBMITIT_LOCAL_GLOBALID" in env:
        return (
            int(env["SUBMITIT_LOCAL_GLOBALID"]),
            int(env.get("SUBMITIT_LOCAL_NTASKS", 1)),
            int(env.get("SUBMITIT_LOCAL_LOCALID", 0)),
            "submitit-local",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        # SLURM_STEP_ID: we are a task of a job step (srun / submitit), not the batch script itself
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm"
    return 0, 1, 0, "single"


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    rank, world, local_rank, launcher = detect()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        n = torch.cuda.device_count()
        dev = torch.device("cuda", local_rank % max(n, 1))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    info = DistInfo(rank, world, local_rank, dev, "", launcher)
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
            os.environ["MASTER_ADDR"] = _first_host(nodelist) if launcher == "slurm" else "127.0.0.1"
        if "MASTER_PORT" not in os.environ:
            job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "0"
            os.environ["MASTER_PORT"] = str(master_port(job))
        info.backend = backend_for(use_cuda)
        master = os.environ["MASTER_ADDR"]
        if "GLOO_SOCKET_IFNAME" not in os.environ:
            ifname = gloo_interface(master)
            if ifname:
                os.environ["GLOO_SOCKET_IFNAME"] = ifname
        # one line per rank in its job log: where each rank is and whom it waits for, should the rendezvous hang
        print(
            f"hpcrnn: rank {rank} of {world} on {socket.gethostname()}: {info.backend} rendezvous at "
            f"{master}:{os.environ['MASTER_PORT']}"
            + (f" via {os.environ['GLOO_SOCKET_IFNAME']}" if os.environ.get("GLOO_SOCKET_IFNAME") else ""),
            file=sys.stderr,
            flush=True,
        )
        dist.init_process_group(
            info.backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        global _GROUP_USED
        _GROUP_USED = True
    return info


def backend_for(use_cuda: bool) -> str:
    """The process group's backend: on GPUs, NCCL for CUDA tensors and gloo for the CPU tensors the loop
    also reduces (the stop agreement, the lock and checkpoint checks), which a plain "nccl" group refuses."""
    return "cpu:gloo,cuda:nccl" if use_cuda else "gloo"


_GROUP_USED = False  # this process ran a multi-rank process group (see exit_process)


def exit_process(code: int) -> int:
    """End an entry point's process. After a multi-rank run, with ``os._exit``: a rank that finished
    (checkpoint written, group destroyed) can still abort in gloo's C++ teardown at interpreter exit
    ("terminate called without an active exception", SIGABRT), which would turn a finished job into a
    failed one. Everything of ours is on disk by then (atomic files, one-write appends, the lock
    released), so the process skips that teardown: streams are flushed, and the exit status is the entry
    point's. Otherwise returns ``code`` for ``sys.exit``."""
    if not _GROUP_USED:
        return code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def shutdown(together: bool = True) -> None:
    """Tear the process group down. ``together`` (every rank got here normally): first wait for all, as a
    rank that destroys the group (or exits) while a peer is still in a collective can make that peer's
    gloo threads abort its process at exit. After an error on some rank, a barrier could wait forever."""
    if dist.is_initialized():
        try:
            if together:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def all_gather_object(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
