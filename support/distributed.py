"""support/distributed.py: the process machinery the PRIME and SFT loops share.

torchrun starts one process per GPU (a plain `python train.py` is a group of one), and FSDP2
shards every model over all of them (model.fsdp_wrap). Under FSDP2 every forward and backward is
a collective, so the ranks must run the same number of them in the same order; the helpers here
keep that true (all_max; support/batches.py's micro_batches) and hide the rest: the torch-version
check, rank-0 logging, sums over ranks, seeds that depend on (step, rank) only, loading a model
sharded for training, AdamW and the clipped step.
"""

import hashlib
import os
import re
import socket

import torch
import torch.distributed as dist

import model as M

# The oldest torch with every API this code calls: FSDPModule.set_reshard_after_forward, which
# model.gathered_params needs for sampling, first appears in 2.8.0 (docs/torch_floor.md).
TORCH_FLOOR = (2, 8)


def require_torch(version=torch.__version__):
    """Stop at start-up, with the reason, on a torch older than TORCH_FLOOR (instead of an
    AttributeError at the first sampling call, minutes into a run)."""
    found = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", version).groups())
    if found < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise SystemExit(f"torch {version} is too old: this code needs torch >= {floor} (FSDP2's "
                         f"set_reshard_after_forward, used to keep weights gathered while sampling, first appears "
                         f"in {floor}.0; docs/torch_floor.md). Install torch>={floor}, then requirements.txt.")


def init_distributed(timeout):
    """Join (or, for a plain `python script.py`, create) the process group: NCCL on GPUs, gloo on
    CPUs. One process is a group of one, so the same code runs everywhere. Returns (rank, world,
    device, mesh): `mesh` is the 1-D device mesh FSDP2 shards every model over.

    `timeout` (a timedelta) bounds how long a rank waits at a collective while another works
    alone (rank 0 writing a Hugging Face export, a slow verifier): NCCL's default of 10 minutes
    is short for a 7B export."""
    from torch.distributed.device_mesh import init_device_mesh
    if "RANK" in os.environ:  # torchrun: rank, world size and rendezvous come from the environment
        where, local_rank = {}, int(os.environ["LOCAL_RANK"])
    else:
        with socket.socket() as s:  # a free local port for a group of one
            s.bind(("127.0.0.1", 0))
            where, local_rank = dict(init_method=f"tcp://127.0.0.1:{s.getsockname()[1]}", rank=0, world_size=1), 0
    # The sampler's KV cache and the training activations take turns with very different block
    # sizes; expandable segments let the CUDA allocator reuse freed memory across them instead of
    # fragmenting it (the memory plan counts allocated bytes, not fragments). Set before any
    # CUDA allocation.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout, **where)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout, **where)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    return dist.get_rank(), dist.get_world_size(), device, mesh


def log(*args):  # rank 0 speaks for all
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


def seed_for(*parts):
    """A seed derived from any values (Python's hash() of strings changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 2


def all_sum(values, device):
    """Sum a list of numbers over ranks; returns floats."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value, device):
    """The largest integer over ranks: how many rounds or micro-batches every rank must run."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sharded_skeleton(config, mesh, trainable, bf16, activation_checkpointing):
    """The network of `config` as training holds it, sharded with FSDP2 over `mesh`, on the meta
    device (shapes, no storage). Trainable models keep fp32 master weights (bf16 compute with
    `bf16`); a frozen one is stored in bf16 under `bf16`, as the official code kept its
    reference (docs/notes.md §1). The memory plan gives it fake storage; load_for_training real."""
    dtype = torch.bfloat16 if bf16 and not trainable else torch.float32
    with torch.device("meta"):
        net = M.Qwen2ForCausalLM(config).to(dtype)
    net.train(trainable)
    net.requires_grad_(trainable)
    return M.fsdp_wrap(net, mesh, mixed_precision=bf16 and trainable,
                       activation_checkpointing=activation_checkpointing and trainable)


def load_for_training(path, device, mesh, trainable, bf16, activation_checkpointing):
    """A model from a Hugging Face folder, on `device`, sharded with FSDP2 over `mesh` (on one
    rank too: then FSDP2 only applies the mixed precision, so one process computes exactly as N
    do). Sharded first, loaded second: each rank allocates only its shard and reads only its
    rows of each weight (model.load_shards), so a node never holds the model once per rank (a
    7B model in fp32 is 30 GB). Says once, at start-up, when a GPU will run attention on SDPA."""
    config = M.load_config(path)
    net = sharded_skeleton(config, mesh, trainable, bf16, activation_checkpointing)
    net.to_empty(device=device)
    M.load_shards(net, path)
    M.attention_backend(torch.device(device), torch.bfloat16 if bf16 else torch.float32, M.head_dim(config))
    return net


def local_bytes(tensors):
    """Bytes of this rank's part of each tensor (the local shard of a DTensor)."""
    from torch.distributed.tensor import DTensor  # (imported here: require_torch runs before any of this)
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def adamw(net, lr, weight_decay):
    """AdamW as the official code configures it (betas 0.9/0.999). The fused implementation
    updates every parameter in one kernel with no temporaries: the for-each one (the CUDA
    default) holds a temporary as large as this rank's parameter shard (3.5 GB at 7B on 8 GPUs)."""
    return torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=True)


def clip_and_step(net, optimizer, max_norm):
    """Clip the gradient norm (over all ranks' shards), step, zero the gradients; returns the
    norm before clipping."""
    # Under FSDP2 every gradient is a DTensor shard; clip_grad_norm_ sums the squares over all
    # ranks' shards, so each rank scales by the same global norm. The norm itself comes back as a
    # DTensor too: full_tensor() makes it a plain number for the metrics.
    from torch.distributed.tensor import DTensor
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
