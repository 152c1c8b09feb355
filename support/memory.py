"""support/memory.py: will a config fit its GPUs? The per-GPU memory of every phase of a PRIME step,
planned on any machine, and the sampling chunk sizes the run derives from the same numbers.

    python train.py --preset=eurus2-7b-prime --model_path=DIR --memory_plan=true \
        [--world_size=8] [--gpu_memory_gib=79.1] [--plan_attention=auto]

DIR needs only config.json. The last line says `memory plan: peak P GiB of G GiB per GPU
(phase NAME): fits` (exit 0) or `... does not fit` with the reason (exit 1).

How the plan is made. Nothing is counted by hand that can be measured: the real modules of
model.py, sharded with FSDP2 exactly as train.py shards them (model.fsdp_wrap), run the phases of
one step on fake tensors (torch's FakeTensorMode: shapes, dtypes and devices, no storage) inside
a fake process group of world_size ranks (every collective returns at once, sizes as on real
ranks). torch's MemTracker sees every tensor created and freed and so gives the bytes alive at
each moment. One rank is simulated: all ranks hold the same shapes. The worst case is planned:
every prompt max_prompt_tokens long, every response max_response_tokens long.

The attention backend planned is the one that will run (model.attention_backend): on a GPU
machine, this machine's; planned from a CPU, the flash path this machine's packages have (flash-
attn, else torch's varlen_attn, else SDPA), or the one --plan_attention names.

Five things are arithmetic rather than measurement, and the GPU check (gpu_check.py) measures the
first three on a real GPU:
  * memory outside PyTorch's allocator (CUDA context, cuBLAS and NCCL buffers): NON_TORCH_BYTES;
  * FlashAttention-2's kernels (flash-attn's and torch's varlen_attn, the same code) cannot run on
    fake tensors; `flash_memory_model` stands in for them with the buffers their C++ entry points
    allocate (read from flash-attn 2.8's csrc/flash_attn/flash_api.cpp: mha_varlen_fwd,
    mha_varlen_bwd, mha_fwd_kvcache; ATen vendors the same file);
  * FSDP2's stream caches (`stream_cache_bytes`): FSDP2 all-gathers and reduce-scatters in
    buffers it allocates on side streams, and the CUDA caching allocator keeps a freed block for
    the stream it came from. The fake run counts those buffers while they live (FSDP2's code is
    the same on every device); the plan shows, beside each phase's peak, the blocks they may
    leave cached, and the worst phase with all of them held against the GPU's capacity. They do
    not decide the verdict: an allocation that would fail makes the allocator release cached
    blocks and retry, at the cost of a device synchronisation;
  * the sampler sizes its KV cache from what is free at run time (`cache_slots`), keeping a
    reserve for the prefill's activations and a decode step's temporaries (`sampling_reserve`),
    a bound from the shapes. The plan sizes the cache with that very function and then measures
    the phase: if the bound were too small, the measured peak would show it;
  * loading (`_load_phase`): each rank allocates its shards and reads one weight's rows at a time
    (model.load_shards): the shards are measured, the one slice in flight is arithmetic.

A PRIME step's phases (train.py's loop) and what each holds besides the three models' shards and
the two optimizers' states:
  load                                       (before the first step) the three models' shards and
                                             one weight's rows in flight; on the host, that slice
  sampling (prefill, decode, batch shrink)   the policy's gathered bf16 weights, its fused qkv
                                             copies (model.fuse_qkv), the KV cache, activations
  old log-probs, reference log-probs         one micro-batch's forward, a layer at a time
  PRM update, policy update                  forward + backward of a micro-batch with
                                             activation checkpointing, gradients, clip, AdamW
  held-out eval                              as sampling, with greedy decoding
  checkpoint save                            DCP writes each rank's shards as they are
  export                                     one full bf16 parameter at a time (model.save_model)
The SFT stage (--stage=sft, preset eurus2-7b-sft) is planned as it runs: one model and its AdamW,
the SFT update of a micro-batch of the longest chats, checkpoint save, export.
"""

import json
import math
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

import model as M
import rollout
from support.cli import knob, out_of
from support.distributed import local_bytes, sharded_skeleton

GIB = 2 ** 30
NON_TORCH_BYTES = 2 * GIB  # CUDA context + cuBLAS workspaces + NCCL buffers, per GPU (an assumption)
# What an H100 80GB gives a process: about 79.1 GiB (CUDA's reported total; "80 GB" is the card's
# marketing figure). Planned from a CPU, a GPU is this; on a GPU machine the plan reads the real one.
H100_80GB_GIB = 79.1
BACKENDS = ("flash", "varlen", "sdpa")


@dataclass
class PlanConfig:
    """the memory plan (--memory_plan=true: plan and exit, on any machine)."""
    memory_plan: bool = knob(False, "print the per-GPU memory plan of this config (and write it to "
                                    "<out_dir>/memory_plan.json) and exit: runs on a CPU, --model_path needs only "
                                    "config.json; exit 1 if it does not fit")
    world_size: int = knob(0, "memory plan: GPUs to plan for (0: this machine's, or 8 without GPUs)")
    gpu_memory_gib: float = knob(0.0, f"memory plan: GiB per GPU (0: this machine's GPU's capacity, or without "
                                      f"GPUs an H100 80GB's {H100_80GB_GIB})")
    plan_attention: str = knob("auto", "memory plan: the attention backend to plan, flash (flash-attn), varlen "
                                       "(torch's varlen_attn) or sdpa; auto: the one this machine runs on its GPU, or "
                                       "without GPUs the flash path its packages have (else sdpa)")

    def problems(self):
        return [p for p in [out_of("plan_attention", self.plan_attention, ("auto", *BACKENDS))] if p]


# ==============================================================================================
# 1. Sizes from shapes: what train.py needs at run time to size sampling.
# ==============================================================================================

def n_params(config):
    """Parameters of the Qwen2 network described by `config` (the head counted once if tied)."""
    C, I, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    D, H, Hkv = M.head_dim(config), config.num_attention_heads, config.num_key_value_heads
    attention = C * (H + 2 * Hkv) * D + (H + 2 * Hkv) * D + H * D * C  # q, k, v (with bias), o
    layer = attention + 3 * C * I + 2 * C  # + gate, up, down + two RMSNorms
    return V * C * (1 if config.tie_word_embeddings else 2) + L * layer + C


def kv_bytes_per_slot(config, dtype):
    """Bytes of KV cache per token slot: a key and a value for every layer's KV heads."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * M.head_dim(config) * M.dtype_bytes(dtype)


def fused_qkv_bytes(config, dtype):
    """The q/k/v weights and biases the sampler joins once per call, every layer (model.fuse_qkv)."""
    D, H, Hkv, C = M.head_dim(config), config.num_attention_heads, config.num_key_value_heads, config.hidden_size
    return config.num_hidden_layers * (H + 2 * Hkv) * D * (C + 1) * M.dtype_bytes(dtype)


def unit_bytes(config, dtype):
    """(root, layer): the bytes in `dtype` of FSDP2's two kinds of unit (model.fsdp_wrap): the root
    (embedding, LM head, final norm: 1.1B parameters at Qwen2.5-7B's vocabulary) and one decoder
    layer."""
    C, V = config.hidden_size, config.vocab_size
    root = V * C * (1 if config.tie_word_embeddings else 2) + C
    return root * M.dtype_bytes(dtype), (n_params(config) - root) // config.num_hidden_layers * M.dtype_bytes(dtype)


def stream_cache_bytes(config, dtype, world, trained):
    """What one model's forwards and backwards leave in the CUDA caching allocator's caches of
    FSDP2's side streams (a cached block serves only the stream it was allocated on), in
    `dtype`, the dtype it computes in. All-gathers write into a buffer allocated on FSDP2's
    copy-in stream, and in forward the previous unit's buffer is freed only after the next
    one's copy-out: the root and a layer at once. A `trained` model's reduce-scatter also leaves
    its output, the root's fp32 gradient shard (1/world of it), cached on its stream."""
    root, layer = unit_bytes(config, dtype)
    return root + layer + (unit_bytes(config, torch.float32)[0] // world if trained else 0)


def gathered_bytes(config, dtype):
    """The model's weights gathered for sampling in `dtype`, plus its fused q/k/v copies."""
    return n_params(config) * M.dtype_bytes(dtype) + fused_qkv_bytes(config, dtype)


def sampling_reserve(config, dtype, prefill_tokens, rows):
    """Bytes sampling needs besides the weights and the KV cache: a bound on one prefill
    forward of `prefill_tokens` tokens and one decode step of `rows` rows.

    Prefill (inference mode: a layer's activations are freed as the next layer starts), per
    token: the residual stream and the normed input (fp32 inside RMSNorm), the fused q/k/v
    projection and its rotary temporaries, the attention output, and the SwiGLU MLP's three
    intermediate-size tensors alive at once (silu(gate), up, their product). Decode, per row:
    fp32 logits and the sampler's softmax / cumulative sums over the vocabulary (rollout.sample),
    plus one token's prefill cost. train.py passes micro_batch_tokens as prefill_tokens."""
    b = M.dtype_bytes(dtype)
    C, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    qkv = (config.num_attention_heads + 2 * config.num_key_value_heads) * M.head_dim(config)
    per_token = b * (4 * C + 3 * qkv + 3 * I) + 4 * 3 * C
    per_row = 4 * 4 * V + per_token
    return prefill_tokens * per_token + rows * per_row


def cache_slots(available, config, dtype, prefill_tokens, rows):
    """KV-cache token slots (rollout.generate's max_batch_tokens) that fit in `available` bytes,
    which must already exclude the gathered weights. 0 or less: not even the reserve fits."""
    return (available - sampling_reserve(config, dtype, prefill_tokens, rows)) // kv_bytes_per_slot(config, dtype)


def planned_cache_slots(limit, allocated, config, dtype, prefill_tokens, rows):
    """The plan's KV-cache slots for sampling `rows` rows on a GPU whose process may use `limit`
    bytes and whose tensors take `allocated` bytes: what is left after NON_TORCH_BYTES, those
    tensors and the gathered weights, in cache_slots (0 or less: not even the reserve fits)."""
    available = limit - NON_TORCH_BYTES - allocated - gathered_bytes(config, dtype)
    return cache_slots(available, config, dtype, prefill_tokens, rows)


def sampling_limits(config, device, rows, utilization, prefill_tokens, dtype, sharded):
    """rollout.generate's memory bounds (max_batch_tokens, max_prefill_tokens) for sampling `rows`
    rows now, on `device`. On a GPU the KV cache gets what is left under `utilization` of its
    memory once the weights are there (`sharded`: FSDP2 gathers them for sampling; else they
    are loaded already) with their fused q/k/v copies, less sampling_reserve for a prefill of
    prefill_tokens and a decode step. This is the computation the plan checks. On the CPU there
    is no bound: (None, None). At least one slot is returned: when not even one row fits,
    generate says so."""
    if device.type != "cuda":
        return None, None
    # The phases before left blocks cached for FSDP2's streams (stream_cache_bytes): give them
    # back, so that the free memory read below is free for the sampler's stream.
    torch.cuda.empty_cache()
    weights = gathered_bytes(config, dtype) if sharded else fused_qkv_bytes(config, dtype)
    slots = cache_slots(available_bytes(device, utilization) - weights, config, dtype, prefill_tokens, rows)
    return max(int(slots), 1), prefill_tokens


def outside_bytes(device):
    """The bytes in use on a CUDA device outside PyTorch's allocator: the CUDA context, cuBLAS
    workspaces, NCCL buffers, other processes."""
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)


def available_bytes(device, utilization):
    """What this process may still allocate on a CUDA device while the whole process (tensors,
    the allocator's cached blocks, the CUDA context, NCCL) stays within `utilization` of it."""
    total = torch.cuda.mem_get_info(device)[1]
    return int(total * utilization) - outside_bytes(device) - torch.cuda.memory_allocated(device)


# ==============================================================================================
# 2. FlashAttention-2's memory, for fake tensors.
# ==============================================================================================

class _FlashVarlenMemory(torch.autograd.Function):
    """flash_attn_varlen_func's allocations (values are not computed): forward out [N, H, D] and
    softmax_lse [H, N] fp32, both saved for backward; backward dq, dk, dv, softmax_d
    [H, N + 128 S] fp32, dq_accum [N + 128 S, H, D] fp32 and, with grouped-query attention,
    dk/dv for every query head [N, H, D] before they are summed per KV head."""

    @staticmethod
    def forward(ctx, q, k, v, n_seqs):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.n_seqs = n_seqs
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        (_, H, D), padded = q.shape, q.shape[0] + 128 * ctx.n_seqs
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        softmax_d = q.new_empty(H, padded, dtype=torch.float32)
        dq_accum = q.new_empty(padded, H, D, dtype=torch.float32)
        if k.shape[1] != H:
            dk_expanded, dv_expanded = q.new_empty(k.shape[0], H, D), q.new_empty(k.shape[0], H, D)
            dk = dk_expanded.view(k.shape[0], k.shape[1], H // k.shape[1], D).sum(2)
            dv = dv_expanded.view(k.shape[0], k.shape[1], H // k.shape[1], D).sum(2)
            del dk_expanded, dv_expanded
        del softmax_d, dq_accum
        return dq, dk, dv, None


def _flash_varlen_memory(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                         softmax_scale=None, causal=False):
    return _FlashVarlenMemory.apply(q, k, v, len(cu_seqlens_q) - 1)


def _flash_kvcache_memory(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, causal=False):
    """flash_attn_with_kvcache's allocations: out like q and softmax_lse [B, H, Sq] fp32 (the new
    keys/values go into the cache in place; a split-KV decode's fp32 partials are [splits, B, H,
    Sq, D] and only split when B * Hkv is small, so they are negligible)."""
    q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
    return torch.empty_like(q)


def _torch_varlen_memory(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                         window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch's varlen_attn's allocations: its kernels are FlashAttention-2's mha_varlen_fwd and
    mha_varlen_bwd, vendored in ATen, so the same buffers (decoding from the cache with
    seqused_k: out and lse, the forward's)."""
    return _FlashVarlenMemory.apply(query, key, value, len(cu_seq_q) - 1)


@contextmanager
def flash_memory_model():
    """model.py's flash call sites (flash-attn's and torch's varlen_attn), backed by the memory
    models above."""
    saved = M.flash_attn_varlen_func, M.flash_attn_with_kvcache, M.varlen_attn
    M.flash_attn_varlen_func, M.flash_attn_with_kvcache = _flash_varlen_memory, _flash_kvcache_memory
    M.varlen_attn = _torch_varlen_memory
    try:
        yield
    finally:
        M.flash_attn_varlen_func, M.flash_attn_with_kvcache, M.varlen_attn = saved


# ==============================================================================================
# 3. The plan: every phase on fake tensors.
# ==============================================================================================

@dataclass
class Phase:
    name: str
    peak: int               # bytes alive at the phase's worst moment (allocator-visible)
    parts: dict             # what made the peak: name -> bytes (the rest is "activations")
    cached: int = 0         # FSDP2's stream caches beside it (stream_cache_bytes)

    @property
    def total(self):
        return self.peak + self.cached


@dataclass
class Plan:
    world: int
    gpu_bytes: int
    limit: int               # gpu_bytes * utilization: every phase must stay below
    backend: str             # the attention backend planned (model.attention_backend's names)
    phases: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict)    # the chunk and micro-batch sizes chosen
    problem: str = ""        # why it cannot fit (set before any phase when the states alone overflow)

    @property
    def worst(self):
        return max(self.phases, key=lambda p: p.peak) if self.phases else None

    @property
    def worst_cached(self):  # the worst phase with FSDP2's stream caches held
        return max(self.phases, key=lambda p: p.total) if self.phases else None

    def fits(self):
        return not self.problem and self.worst.peak + NON_TORCH_BYTES <= self.limit


class _Meter:
    """torch's MemTracker, one `with` block per phase: entering it resets the peak to what is
    alive, so each phase's peak is its own. Only its byte counts are used: its per-module
    snapshots (a deep copy at every module call, and an error when a model runs a second time)
    are switched off by replacing its four module hooks with no-ops."""

    def __init__(self, *tracked):
        from torch.distributed._tools.mem_tracker import MemTracker

        class Totals(MemTracker):
            def _pre_fw_hook(self, *args):
                pass

            _post_fw_hook = _pre_bw_hook = _post_bw_hook = _pre_fw_hook

        self.tracker = Totals()
        self.tracker.track_external(*tracked)

    @staticmethod
    def _total(snapshot):
        return sum(device["Total"] for device in snapshot.values())

    def now(self):
        return self._total(self.tracker.get_tracker_snapshot("current"))

    @contextmanager
    def measure(self, out):
        with self.tracker:
            yield
        out["peak"] = self._total(self.tracker.get_tracker_snapshot("peak"))


def compute_dtype(cfg):
    """The dtype a train.Config computes in (sampling, the reference, the export): bf16 under
    cfg.bf16, else fp32."""
    return torch.bfloat16 if cfg.bf16 else torch.float32


def planned_model(config, mesh, trainable, cfg, backend):
    """A model as support.distributed.load_for_training builds it for a train.Config `cfg`, on the
    meta device (shapes only; `to_empty` under fake mode then gives it fake storage), attending
    with `backend`."""
    net = sharded_skeleton(config, mesh, trainable, cfg.bf16, cfg.activation_checkpointing)
    net.attn_backend = backend
    return net


def planned_backend(choice, config, compute):
    """The attention backend to plan (--plan_attention): `choice` unless "auto"; else what
    model.attention_backend picks for this machine's GPU 0, or planned from a CPU the flash path
    this machine's packages have (else SDPA)."""
    if choice != "auto":  # (PlanConfig.problems checked it)
        return choice
    if torch.cuda.is_available():
        return M.attention_backend(torch.device("cuda", 0), compute, M.head_dim(config))
    return M.installed_flash_path(M.head_dim(config)) or "sdpa"


def _checkpoint_dtype(config):
    """The dtype a checkpoint's config.json says its weights are stored in (fp32 if it says none)."""
    dtype = config.dtype or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _load_phase(result, config, params):
    """Loading (support.distributed.load_for_training, model.load_shards): the models' shards
    (`params` bytes, measured), and one weight's rows in flight at a time: the largest
    is the embedding's or the head's, ceil(V / world) rows. On the GPU that slice is bounded by
    its fp32 size; on the host it is read in the checkpoint's dtype and may be cast there."""
    rows = -(-config.vocab_size // result.world) * config.hidden_size
    device_slice = rows * 4
    host = rows * (M.dtype_bytes(_checkpoint_dtype(config)) + 4)
    result.phases.append(Phase("load", params + device_slice, {"states": params}))
    result.sizes["load: host memory per rank (one weight's rows at a time), GiB"] = \
        f"{host / GIB:.2f} (x {result.world} ranks = {result.world * host / GIB:.2f}; the safetensors files are " \
        f"memory-mapped, their pages shared by the ranks)"


def _micro_batch(cfg, device):
    """The worst micro-batch train.py can build: sequences of max_prompt + max_response tokens
    packed up to micro_batch_tokens (a longer sequence goes alone), every response token scored.
    Returns the model's score-mode arguments."""
    seq = cfg.max_prompt_tokens + cfg.max_response_tokens
    return _score_batch(max(1, cfg.micro_batch_tokens // seq), seq, device, cfg.max_response_tokens)


def _optimizer_step(net, optimizer, batches, clip, reference=None):
    """An optimizer step as train.py takes it: micro-batches whose gradients accumulate, then
    clip and AdamW. With `reference`, each micro-batch is first scored by it, as prm_step scores
    the PRM's micro-batches. The loss is a stand-in: the losses of rewards.py add [b, T] tensors,
    nothing next to the model's activations. Returns the gradients' bytes."""
    for batch in batches:
        if reference is not None:
            with torch.no_grad():
                reference(**batch)
        logp, _ = net(**batch)
        logp.sum().backward()
    grads = local_bytes(p.grad for p in net.parameters() if p.grad is not None)
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grads


def _warm_up(meter, trained, device):
    """The steady state (from step 2 on), where AdamW's moments exist: one tiny optimizer step per
    (model, AdamW) pair in `trained` creates them; it also runs FSDP2's DTensor ops (clip, AdamW)
    once, whose first call builds sharding metadata that fake tensors would count as memory.
    Returns the one-token batch it stepped on and the bytes then alive (the model states)."""
    dummy = _score_batch(1, 1, device)
    with meter.measure({}):
        for net, optimizer in trained:
            _optimizer_step(net, optimizer, [dummy], 1.0)
    return dummy, meter.now()


def _states_overflow(result, states, what):
    """Whether the model states alone (`what` holds them, for the message) go over the limit; if
    so, the plan's one phase is "model states" and its problem says to use more GPUs."""
    if states + NON_TORCH_BYTES <= result.limit:
        return False
    result.phases.append(Phase("model states", states, {"states": states}))
    result.problem = (f"{what} alone need {states / GIB:.1f} GiB per GPU on {result.world} GPUs, "
                      f"{(states + NON_TORCH_BYTES) / GIB:.1f} with what lies outside PyTorch (limit "
                      f"{result.limit / GIB:.1f}); use more GPUs")
    return True


def _sampling_phases(plan, meter, states, policy, config, cfg, device, rows, max_new, label):
    """Sampling as rollout.generate does it, for the largest chunk the sizing allows: gather the
    weights, prefill one group of prompts (the others repeat the same computation), decode one
    step over every row, drop one finished row. Returns the chunk's rows."""
    compute = compute_dtype(cfg)
    slots_per_row = cfg.max_prompt_tokens + max_new
    slots = planned_cache_slots(plan.limit, meter.now(), config, compute, cfg.micro_batch_tokens, rows)
    chunk = min(rows, max(slots, 0) // slots_per_row)
    plan.sizes[f"{label}: KV-cache slots (max_batch_tokens)"] = int(slots)
    plan.sizes[f"{label}: rows per chunk (of {rows} at {slots_per_row} slots each)"] = chunk
    if chunk == 0:
        plan.problem = (f"{label}: after the models' states and the gathered weights, not even one "
                        f"row of {slots_per_row} KV-cache slots fits")
        return 0
    group = max(1, cfg.micro_batch_tokens // cfg.max_prompt_tokens)  # prompts per prefill forward
    prompts = [[0] * cfg.max_prompt_tokens] * min(group, chunk)
    prefill, decode, shrink = {}, {}, {}
    # Three measurements in a row (a MemTracker block resets its peak only when entered afresh);
    # the gathered weights and the cache live across them, as in the sampler.
    with torch.inference_mode(), ExitStack() as gathered_weights:
        with meter.measure(prefill):
            gathered_weights.enter_context(M.gathered_params(policy))
            gathered = meter.now() - states
            cache = M.KVCache(rows=chunk, max_len=slots_per_row)
            logits = rollout.prefill(policy, prompts, cache, device)
            cache.filled = chunk  # the other groups write their rows with the same computation
            logits = torch.cat([logits] * math.ceil(chunk / len(prompts)))[:chunk]  # [chunk, V]
            kv, fused = cache.nbytes(), local_bytes(t for pair in cache.qkv for t in pair)
        with meter.measure(decode):
            token = rollout.sample(logits, 1.0, 1.0, 0, None, config.vocab_size)
            logits = policy(token, cache=cache)
            token = rollout.sample(logits, 1.0, 1.0, 0, None, config.vocab_size)
        with meter.measure(shrink):  # one row finished: the cache compacts in place
            cache.keep(torch.arange(chunk - 1, device=device))
            policy(token[:-1], cache=cache)
            del cache, logits, token
            gathered_weights.close()
    base = {"states": states, "gathered weights": gathered + fused, "KV cache": kv}
    # sampling_limits empties the caches first; gathering (no training state: every buffer is
    # freed right after its copy-out) leaves at most the largest unit's, the root's, cached
    cached = unit_bytes(config, compute)[0]
    for name, out in (("prefill", prefill), ("decode", decode), ("batch shrink", shrink)):
        plan.phases.append(Phase(f"{label}: {name}", out["peak"], base, cached))
    return chunk


def plan(cfg, config, world, gpu_gib, backend, sft_max_tokens=None):
    """The memory plan of `cfg` (a train.Config) for the network `config` on `world` GPUs of
    `gpu_gib` GiB each, attention on `backend`: of a PRIME step, or with `sft_max_tokens` (0: the
    model's context) of the SFT stage. Runs in this process on fake tensors: call it once, in a
    process that has no process group of its own (run_plan)."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    gpu_bytes = int(gpu_gib * GIB)
    result = Plan(world=world, gpu_bytes=gpu_bytes, limit=int(gpu_bytes * cfg.gpu_memory_utilization),
                  backend=backend)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    mesh = init_device_mesh("cpu", (world,))  # the mesh must exist before fake mode
    device = torch.device("cpu")
    compute = compute_dtype(cfg)
    K = cfg.samples_per_prompt
    responses = cfg.prompts_per_step * K // world  # this rank's rows per step (and per sampling round)
    try:
        if sft_max_tokens is not None:
            return _plan_sft(result, cfg, config, mesh, device, sft_max_tokens)
        # The models and optimizers as train.build_models makes them (default switches).
        policy, prm = (planned_model(config, mesh, True, cfg, backend) for _ in range(2))
        ref = planned_model(config, mesh, False, cfg, backend)
        with FakeTensorMode(allow_non_fake_inputs=True), flash_memory_model():
            for net in (policy, prm, ref):
                net.to_empty(device=device)
            params = local_bytes(p for net in (policy, prm, ref) for p in net.parameters())
            _load_phase(result, config, params)
            opts = {name: torch.optim.AdamW(net.parameters(), lr=1e-6, weight_decay=0.01, fused=True)
                    for name, net in (("policy", policy), ("prm", prm))}
            meter = _Meter(policy, prm, ref, *opts.values())
            dummy, states = _warm_up(meter, ((policy, opts["policy"]), (prm, opts["prm"])), device)
            moments = local_bytes(t for o in opts.values() for s in o.state.values() for t in s.values())
            result.sizes["model states per GPU: parameters / AdamW moments, GiB"] = \
                f"{params / GIB:.1f} / {moments / GIB:.1f}"
            base = {"states": states}
            # Outside sampling nothing empties the caches: all three models' stay (stream_cache_bytes).
            cached = sum(stream_cache_bytes(config, compute, world, trained) for trained in (True, True, False))
            result.sizes["FSDP2 stream caches outside sampling (policy + PRM + reference), GiB"] = \
                f"{cached / GIB:.2f}"
            if _states_overflow(result, states, "the three models' shards and two AdamW states"):
                return result

            # Alg. 1 lines 4-5: sampling, one round of `responses` rows.
            if not _sampling_phases(result, meter, states, policy, config, cfg, device, responses,
                                    cfg.max_response_tokens, "sampling"):
                return result

            # The step's [B, T] tensors (old log-probs, process rewards, advantages, ...) are
            # responses x max_response_tokens floats each: about a megabyte apiece.
            batch = _micro_batch(cfg, device)
            tokens = len(batch["input_ids"])
            result.sizes["micro-batch (micro_batch_tokens)"] = f"{cfg.micro_batch_tokens} tokens; " \
                f"planned at {tokens} = {tokens // (cfg.max_prompt_tokens + cfg.max_response_tokens)} x " \
                f"({cfg.max_prompt_tokens} + {cfg.max_response_tokens})"
            result.sizes["log-prob chunk (model.LOGPROB_CHUNK_ELEMENTS)"] = \
                f"{M.LOGPROB_CHUNK_ELEMENTS // config.vocab_size} tokens x {config.vocab_size} fp32 logits " \
                f"= {M.LOGPROB_CHUNK_ELEMENTS * 4 / GIB:.3f} GiB per buffer"
            for name, net in (("old log-probs", policy), ("reference log-probs", ref)):
                out = {}
                with torch.no_grad(), meter.measure(out):
                    net(**batch)
                result.phases.append(Phase(name, out["peak"], base, cached))

            # Alg. 1 lines 7-8 and 10: the PRM's and the policy's optimizer steps. Every micro-batch
            # after the first runs beside the gradients accumulated so far, which exist in full
            # (this rank's shard of every parameter) after any first one: a one-token micro-batch
            # makes them, then the worst micro-batch runs.
            for name, net, reference, clip in (("PRM update", prm, ref, cfg.prm_grad_clip),
                                               ("policy update", policy, None, cfg.policy_grad_clip)):
                out = {}
                with meter.measure(out):
                    grads = _optimizer_step(net, opts["prm" if net is prm else "policy"], [dummy, batch], clip,
                                            reference)
                result.phases.append(Phase(name, out["peak"], {**base, "gradients": grads}, cached))

            # The held-out eval (greedy) from inside the training process: the same shapes.
            if not _sampling_phases(result, meter, states, policy, config, cfg, device, responses,
                                    cfg.max_response_tokens, "held-out eval"):
                return result

            _save_and_export_phases(result, meter, policy, opts["policy"], base, compute, cached)
    finally:
        dist.destroy_process_group()
    return result


def to_json(result):
    """The plan as plain data (run_plan writes it to <out_dir>/memory_plan.json)."""
    return {"world_size": result.world, "gpu_bytes": result.gpu_bytes, "limit_bytes": result.limit,
            "attention": result.backend, "non_torch_bytes": NON_TORCH_BYTES, "fits": result.fits(),
            "problem": result.problem, "sizes": result.sizes,
            "phases": [{"name": p.name, "peak_bytes": p.peak, "cached_bytes": p.cached, "parts": p.parts}
                       for p in result.phases]}


def _plan_sft(result, cfg, config, mesh, device, sft_max_tokens):
    """The SFT stage (support.sft.sft): one trainable model and its AdamW; each optimizer step runs
    micro-batches of chats of sft_max_tokens (or the model's context) packed up to
    micro_batch_tokens, every token trained (the worst case); then checkpoints and the export."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    compute = compute_dtype(cfg)
    net = planned_model(config, mesh, True, cfg, result.backend)
    seq = min(sft_max_tokens or config.max_position_embeddings, cfg.micro_batch_tokens)
    n_seqs = max(1, cfg.micro_batch_tokens // seq)
    cached = stream_cache_bytes(config, compute, result.world, True)
    with FakeTensorMode(allow_non_fake_inputs=True), flash_memory_model():
        net.to_empty(device=device)
        _load_phase(result, config, local_bytes(net.parameters()))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=True)
        meter = _Meter(net, optimizer)
        dummy, states = _warm_up(meter, ((net, optimizer),), device)
        base = {"states": states}
        result.sizes["model states per GPU, GiB"] = f"{states / GIB:.1f}"
        result.sizes["micro-batch (micro_batch_tokens)"] = f"{cfg.micro_batch_tokens} tokens; planned at " \
            f"{n_seqs} x {seq}, every token trained"
        if _states_overflow(result, states, "the model's shards and AdamW state"):
            return result
        out = {}
        with meter.measure(out):
            grads = _optimizer_step(net, optimizer, [dummy, _score_batch(n_seqs, seq, device)], 1.0)
        result.phases.append(Phase("SFT update", out["peak"], {**base, "gradients": grads}, cached))
        _save_and_export_phases(result, meter, net, optimizer, base, compute, cached)
    return result


def _score_batch(n_seqs, seq, device, scored_per_seq=None):
    """The model's score-mode arguments for n_seqs packed sequences of seq tokens, scored_per_seq
    tokens of each scored (default: every token but the sequence's first; how many matters, not
    which)."""
    scored = n_seqs * (seq - 1 if scored_per_seq is None else scored_per_seq)
    return dict(input_ids=torch.zeros(n_seqs * seq, dtype=torch.long, device=device),
                cu_seqlens=torch.arange(0, n_seqs * seq + 1, seq, dtype=torch.int32, device=device), max_seqlen=seq,
                scored=torch.arange(scored, device=device),
                targets=torch.zeros(scored, dtype=torch.long, device=device))


def _save_and_export_phases(result, meter, net, optimizer, base, compute, cached):
    """Checkpoint: DCP saves each rank's shards as they are, copying one to the host at a time;
    get_state_dict only views them. Export: one parameter at a time, gathered and cast to the
    compute dtype (twice: the first pass builds DTensor's sharding metadata for these ops, see
    the warm-up in plan). `cached`: the FSDP2 stream caches beside them."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    out = {}
    with meter.measure(out):
        views = get_state_dict(net, optimizer)
    result.phases.append(Phase("checkpoint save", out["peak"], base, cached))
    del views
    out = {}
    for measured in ({}, out):
        with meter.measure(measured):
            for _name, tensor in M.full_tensors(net, compute):
                del tensor
    result.phases.append(Phase("export", out["peak"], base, cached))


# ==============================================================================================
# 4. The report.
# ==============================================================================================

def report(result, cfg, config, sft=False):
    """The plan as lines of text; the last says whether it fits."""
    gib = lambda x: f"{x / GIB:.1f}"  # noqa: E731
    lines = [f"memory plan: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
             f"{config.vocab_size}; {result.world} GPUs x {result.gpu_bytes / GIB:.1f} GiB, limit "
             f"{gib(result.limit)} GiB per GPU (gpu_memory_utilization {cfg.gpu_memory_utilization}); "
             f"attention {result.backend}; {NON_TORCH_BYTES / GIB:.1f} GiB outside PyTorch assumed",
             "", "chosen sizes:"]
    lines += [f"  {key}: {value}" for key, value in result.sizes.items()]
    if result.phases:
        lines += ["", "| phase | peak GiB | states | gradients | gathered weights (+ fused qkv) | KV cache | "
                      "activations and temporaries | + FSDP2 stream caches |",
                  "|---|---|---|---|---|---|---|---|"]
        for phase in result.phases:
            parts = phase.parts
            rest = phase.peak - sum(parts.values())
            cells = [gib(phase.peak + NON_TORCH_BYTES)] + [
                gib(parts[key]) if key in parts else "-"
                for key in ("states", "gradients", "gathered weights", "KV cache")] + [gib(rest), gib(phase.cached)]
            lines.append(f"| {phase.name} | " + " | ".join(cells) + " |")
        states = "the model's shards and its AdamW state" if sft else \
            "the three models' shards and the two AdamW states"
        held = result.worst_cached
        lines += [f"(peak = tensors + {NON_TORCH_BYTES / GIB:.1f} GiB outside PyTorch; states = {states})",
                  f"with FSDP2's stream caches held as well: {gib(held.total + NON_TORCH_BYTES)} GiB of "
                  f"{gib(result.gpu_bytes)} GiB ({held.name}); the allocator gives them back when an allocation "
                  f"needs the room"]
    worst = result.worst
    peak = f"peak {gib(worst.peak + NON_TORCH_BYTES) if worst else '-'} GiB of {result.gpu_bytes / GIB:.1f} GiB " \
           f"per GPU (phase {worst.name if worst else '-'})"
    if result.fits():
        verdict = "fits"
    else:
        verdict = f"does not fit: {result.problem or f'over the limit of {gib(result.limit)} GiB'}"
    lines += ["", f"memory plan: {peak}: {verdict}"]
    return lines


# ==============================================================================================
# 5. The command: train.py --memory_plan=true.
# ==============================================================================================

class GPU(NamedTuple):
    """What one GPU to plan for offers: its capacity and the attention backend choice
    (--plan_attention, resolved by planned_backend)."""
    gib: float
    attention: str


def machine(plan_cfg):
    """(GPUs, GPU) to plan for: --world_size / --gpu_memory_gib / --plan_attention, else this
    machine's GPUs at the capacity CUDA reports, else 8 H100 80GB (H100_80GB_GIB each)."""
    cuda = torch.cuda.is_available()
    world = plan_cfg.world_size or (torch.cuda.device_count() if cuda else 8)
    gib = plan_cfg.gpu_memory_gib or (torch.cuda.mem_get_info(0)[1] / GIB if cuda else H100_80GB_GIB)
    return world, GPU(gib, plan_cfg.plan_attention)


def run_plan(cfg, sft_cfg, world, gpu):
    """The plan of this config (the SFT stage's under --stage=sft) for `world` GPUs like `gpu`,
    printed and written to <out_dir>/memory_plan.json. Returns the exit status: 0 if every phase
    fits, 1 if not."""
    if not cfg.model_path:
        raise SystemExit("train.py: --memory_plan needs --model_path (a folder with the model's config.json)")
    try:
        config = M.load_config(cfg.model_path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"train.py: {error}") from None
    sft = sft_cfg.stage == "sft"
    if sft and sft_cfg.sft_batch % world:
        raise SystemExit(f"train.py: sft_batch={sft_cfg.sft_batch} is not divisible by {world} ranks")
    backend = planned_backend(gpu.attention, config, compute_dtype(cfg))
    result = plan(cfg, config, world, gpu.gib, backend, sft_max_tokens=sft_cfg.sft_max_tokens if sft else None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "memory_plan.json"), "w") as f:
        json.dump(to_json(result), f, indent=2)
    print("\n".join(report(result, cfg, config, sft)), flush=True)
    return 0 if result.fits() else 1
