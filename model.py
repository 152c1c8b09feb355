"""model.py: the network behind all three of PRIME's models.

PRIME trains a policy pi_theta and an implicit process reward model (PRM) pi_phi, and keeps a
frozen reference pi_ref; all three are copies of one decoder-only language model, initialised
from the same SFT checkpoint (paper Alg. 1 line 1; docs/notes.md §1). For Eurus-2-7B-PRIME that
network is Qwen2.5-Math-7B's: the Qwen2 architecture. This file writes it in plain PyTorch:

    tokens -> embedding -> N x [RMSNorm -> attention (+residual) -> RMSNorm -> SwiGLU MLP (+residual)]
           -> final RMSNorm -> LM head -> logits

Parameter names equal Hugging Face's `Qwen2ForCausalLM`, so a checkpoint folder (config.json +
safetensors) loads with no renaming and saves back in a form `transformers` reads.

Everything runs on *packed* batches: sequences of different lengths are concatenated into one
row of N tokens, with `cu_seqlens` (cumulative lengths, [S+1]) marking where each starts. RL
responses are long-tailed (a few hit 3072 tokens, most are far shorter), so padding every row to
the longest would waste most of the compute. Rotary positions restart at 0 in each sequence.

Attention has three backends behind one function, `attention()`, chosen by one rule,
`attention_backend()`:
  * flash-attn (CUDA, bf16/fp16, Ampere or newer GPUs): `flash_attn_varlen_func` for packed
    training and prefill, `flash_attn_with_kvcache` for cached decoding;
  * where flash-attn is not installed, PyTorch's own packed flash attention,
    `torch.nn.attention.varlen.varlen_attn` (torch 2.12 or newer; the same FlashAttention-2
    kernels, built into torch, so nothing to compile);
  * PyTorch SDPA everywhere else (CPU, tests, fp32, older GPUs), with the equivalent masks. On a
    GPU that could run flash attention it warns once: SDPA pads every packed batch.

Also here: `KVCache` (the preallocated cache the sampler in rollout.py fills), memory-frugal
token log-probs (`chunked_logprobs`, `packed_logprobs`), checkpoint I/O (`load_model`,
`save_model`) and FSDP2 (`fsdp_wrap`, `full_tensors`, `gathered_params`).

Shapes: N packed tokens, S sequences, H query heads, Hkv key/value heads, D head dim,
C hidden size, V vocabulary.
"""

import functools
import inspect
import json
import math
import os
import shutil
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.checkpoint import checkpoint
from transformers import Qwen2Config

try:  # CUDA-only fast path; `pip install -r requirements-gpu.txt`
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
except ImportError:
    flash_attn_varlen_func = flash_attn_with_kvcache = None


def _torch_varlen_attn():
    """torch's varlen_attn in the form called here, or None. It appeared in torch 2.10, lost
    `is_causal` for `window_size` in 2.11 and gained `enable_gqa` and `seqused_k` (decoding from
    a padded cache) in 2.12 (docs/torch_floor.md); those two keywords mark the form we call."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if {"enable_gqa", "seqused_k"} <= set(inspect.signature(varlen_attn).parameters) else None


varlen_attn = _torch_varlen_attn()


# ----------------------------------------------------------------------------------------------
# Config helpers: transformers has spelled a few Qwen2 fields two ways across versions.

def rope_theta(config):
    """RoPE base frequency (10000 for Qwen2.5-Math-7B). Only plain RoPE is implemented."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# ----------------------------------------------------------------------------------------------
# The packed-batch layout, computed once per forward and shared by every layer.

@dataclass
class Layout:
    """Where each of the N packed tokens sits.

    cu_seqlens [S+1] int32: sequence s is tokens cu_seqlens[s] : cu_seqlens[s+1].
    max_seqlen: the longest sequence (a Python int, so no device sync in the layers).
    positions [N] long: each token's position in its own sequence (rotary angle).
    seq_ids [N] long: which sequence each token belongs to.
    """
    cu_seqlens: torch.Tensor
    max_seqlen: int
    positions: torch.Tensor
    seq_ids: torch.Tensor

    @staticmethod
    def from_cu_seqlens(cu_seqlens, n_tokens, max_seqlen=None):
        """The layout of `n_tokens` packed tokens. Every size is given, so nothing here waits for
        the device: callers know their lengths on the host and pass max_seqlen (None computes it,
        one host sync). That also lets the memory plan run this on fake tensors (support/memory.py)."""
        cu_seqlens = cu_seqlens.to(torch.int32)
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # [S]
        if max_seqlen is None:
            max_seqlen = int(lengths.max())
        seq_ids = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths,
                                          output_size=n_tokens)
        positions = torch.arange(n_tokens, device=lengths.device) - cu_seqlens[:-1].long()[seq_ids]
        return Layout(cu_seqlens, max_seqlen, positions, seq_ids)


class KVCache:
    """Keys and values of past tokens, preallocated once for a whole sampling call.

    k[l], v[l]: [B, T_max, Hkv, D] for layer l (B = rows, T_max = max_len). Only the Hkv key/value
    heads are stored (GQA shares each among H/Hkv query heads), in flash-attn's (batch, time,
    head, dim) layout. Row b's next token goes to position lengths[b] (no left padding: each row
    keeps its exact positions).
    lengths [B] int32: how many tokens row b holds.
    max_length: max(lengths) as a Python int, so decode knows how far to look without a sync.
    filled: how many rows the prefill forwards have written so far. Prefill may be called several
        times (the sampler prefills a few prompts at a time to bound its activations); each call
        fills the next rows. Decoding starts once every row is filled.
    qkv[l]: layer l's q, k and v projections concatenated for sampling (see `fuse_qkv`).
    cos, sin: rotary tables for positions 0..max_len-1 ([max_len, 1, D], `rotary_cos_sin`), built
    at the first prefill, so a decode step looks its rows' angles up (2 ops instead of ~10).

    The buffers are allocated by the first prefill forward, which knows the dtype the model
    computes in (bf16 under FSDP mixed precision) and the device.
    (A plain class on purpose: FSDP2 rebuilds dataclass arguments when it casts forward inputs
    to bf16, and the forward must update this very object.)
    """

    def __init__(self, rows, max_len):
        self.rows, self.max_len = rows, max_len
        self.k, self.v = [], []
        self.qkv = []
        self.cos = self.sin = None
        self.lengths = None
        self.max_length = 0
        self.filled = 0

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def keep(self, rows):
        """Drop finished rows: keep only `rows` ([B'] long, ascending), in that order. The kept
        rows move to the front of each buffer, one layer at a time, and the buffers become views
        of their first B' rows: the memory in use never grows (a fresh [B', ...] copy of every
        layer would briefly hold the old and the new cache). The sampler calls this every few
        steps, not per token; afterwards decode runs on a smaller batch."""
        n = len(rows)
        for buffers in (self.k, self.v):
            for layer, t in enumerate(buffers):
                t[:n] = t.index_select(0, rows)  # the copy is one layer's kept rows
                buffers[layer] = t[:n]
        self.lengths = self.lengths.index_select(0, rows)
        self.rows = self.filled = n

    def prepare_decode(self, backend):
        """What every layer's decode step shares, computed once per step: slots [B] long, where
        row b's new key/value goes in a layer's cache viewed as [B * T_max, Hkv, D]. For SDPA,
        mask [B, 1, 1, L] (L = max_length + 1), 0 where row b may attend and -inf past its end
        (an additive float mask: SDPA would convert a boolean one in every layer). For varlen_attn,
        int32 boundaries: cu_rows [B+1] (one query per row), cu_slots [B+1] (row b's slots start at
        b * T_max) and used [B] (row b's tokens after the append)."""
        B, L = len(self.lengths), self.max_length + 1
        lengths = self.lengths.long()
        rows = torch.arange(B + 1, device=lengths.device)
        self.slots = rows[:B] * self.max_len + lengths
        if backend == "varlen":
            self.cu_rows = rows.to(torch.int32)
            self.cu_slots = (rows * self.max_len).to(torch.int32)
            self.used = self.lengths + 1
            return
        past_end = torch.arange(L, device=lengths.device) > lengths[:, None]  # [B, L]
        self.mask = torch.zeros(B, 1, 1, L, dtype=self.k[0].dtype, device=lengths.device).masked_fill_(
            past_end[:, None, None, :], float("-inf"))


def fuse_qkv(attn):
    """An attention layer's q, k and v projections as one, for sampling: (weight [(H+2Hkv)*D, C],
    bias [(H+2Hkv)*D]). A decode step then runs one matmul instead of three, and one rotary
    for q and k together, which are adjacent in its output. At the sampler's batch sizes a step
    costs mostly per-op overhead, not FLOPs.

    Built once per sampling call, at prefill, from the weights the layer computes with (under
    FSDP: the gathered, possibly bf16 ones), and kept in the KVCache only: parameters, state dict
    and checkpoints stay Hugging Face's separate projections. The copy is small (Qwen2.5-7B:
    0.9 GB in bf16). gate and up stay separate: joining them buys nothing measurable on the CPU
    bench and would copy 7.6 GB of GPU memory at 7B during sampling."""
    return (torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))


# ----------------------------------------------------------------------------------------------
# Attention, one function, three backends, one rule.

def attention_backend(device, dtype, head_dim):
    """Which backend runs attention for activations of `dtype` on `device`: "flash" (flash-attn),
    "varlen" (torch's varlen_attn) or "sdpa". Both flash paths are FlashAttention-2 kernels:
    CUDA, fp16/bf16, Ampere or newer (compute capability 8.0+); there, the installed one
    (`installed_flash_path`). Everything else gets SDPA."""
    if not (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(device)[0] >= 8):
        return "sdpa"
    path = installed_flash_path(head_dim)
    if path is None:
        _warn_sdpa_on_gpu()
    return path or "sdpa"


def installed_flash_path(head_dim):
    """The FlashAttention-2 path this process has for heads of `head_dim`: "flash" where
    flash-attn is installed (it pads head dims that are no multiple of 8 itself, and appends to
    the cache in its kernel), else "varlen" where torch has varlen_attn and the head dim suits
    its kernel (at most 256, a multiple of 8: it pads nothing), else None."""
    if flash_attn_varlen_func is not None:
        return "flash"
    if varlen_attn is not None and head_dim % 8 == 0 and head_dim <= 256:
        return "varlen"
    return None


@functools.cache
def _warn_sdpa_on_gpu():
    """Once per process (rank 0 speaks for all): a GPU that could run flash attention runs SDPA."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        warnings.warn(
            "model.py: attention runs on SDPA on this GPU: flash-attn is not installed and torch's varlen_attn "
            "is not usable (it needs torch >= 2.12 and a head dim that is a multiple of 8, at most 256). SDPA "
            "pads every packed micro-batch to its longest sequence, so attention's work and its copies of q, k "
            "and v grow from the batch's tokens to sequences x longest length, and each decode step attends "
            "over the padded cache with a mask. Install flash-attn (requirements-gpu.txt) or torch >= 2.12.",
            stacklevel=3)


def attention(q, k, v, layout, cache, layer_idx, backend):
    """Causal attention of each token over the earlier tokens of its own sequence.

    q [N, H, D], k and v [N, Hkv, D], after rotary embedding. Returns [N, H, D].
    No cache: packed training / scoring forward. With a cache and a layout: prefill (the prompts
    are written into the cache rows 0..S-1). With a cache and no layout: decode, one new token per
    cache row (N == B), attending over everything the row holds.
    """
    if cache is not None and layout is None:
        return _decode_attention(q, k, v, cache, layer_idx, backend)
    if cache is not None:  # prefill: store this layer's keys/values at (row, position)
        if len(cache.k) == layer_idx:  # the first prefill allocates every row's buffer
            shape = (cache.rows, cache.max_len, k.shape[1], k.shape[2])
            cache.k.append(k.new_zeros(shape))
            cache.v.append(v.new_zeros(shape))
        cache.k[layer_idx][cache.prefill_rows, layout.positions] = k
        cache.v[layer_idx][cache.prefill_rows, layout.positions] = v
    if backend == "flash":
        # deterministic=False, flash-attn's default and the official code's: the backward adds
        # into dq with atomics, so two GPU runs (a resumed one too) agree only up to rounding.
        return flash_attn_varlen_func(
            q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen, causal=True)
    if backend == "varlen":  # the same call in torch's spelling: window (-1, 0) is causal
        return varlen_attn(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen,
                           window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
    return _sdpa_packed(q, k, v, layout)


def _sdpa_packed(q, k, v, layout):
    """SDPA on a packed batch: scatter the tokens into a right-padded [S, H, L, D] block and run
    plain causal attention. That equals block-diagonal causal attention on the packed tokens:
    a real token at position t sees keys 0..t of its own row, all real; the padding sits after
    every real token, so only padded queries (discarded) ever see it. Cost is S*L^2, not N^2."""
    S, L = len(layout.cu_seqlens) - 1, layout.max_seqlen
    slot = layout.seq_ids * L + layout.positions  # [N]: flat index into the [S*L] padded grid

    def pad(x):  # [N, h, D] -> [S, h, L, D]
        out = x.new_zeros(S * L, x.shape[1], x.shape[2])
        out[slot] = x
        return out.view(S, L, x.shape[1], x.shape[2]).transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), is_causal=True,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2).reshape(S * L, q.shape[1], q.shape[2])[slot]


def _decode_attention(q, k, v, cache, layer_idx, backend):
    """One new token per row: append its key/value at position lengths[b], attend over 0..lengths[b]."""
    k_cache, v_cache = cache.k[layer_idx], cache.v[layer_idx]
    if backend == "flash":  # writes k, v into the cache in place, at cache_seqlens
        out = flash_attn_with_kvcache(q[:, None], k_cache, v_cache, k=k[:, None], v=v[:, None],
                                      cache_seqlens=cache.lengths, causal=True)
        return out[:, 0]
    B, H, D = q.shape
    Hkv = k.shape[1]
    k_cache.view(-1, Hkv, D).index_copy_(0, cache.slots, k)  # in place, at (b, lengths[b])
    v_cache.view(-1, Hkv, D).index_copy_(0, cache.slots, v)
    L = cache.max_length + 1  # no row holds more than this after the append
    if backend == "varlen":
        # The cache as packed keys [B * T_max, Hkv, D]: row b's slots start at b * T_max
        # (cu_slots), of which its first lengths[b] + 1 are used (seqused_k); one query per row.
        return varlen_attn(q, k_cache.view(-1, Hkv, D), v_cache.view(-1, Hkv, D), cache.cu_rows, cache.cu_slots,
                           1, L, window_size=(-1, 0), enable_gqa=H != Hkv, seqused_k=cache.used)
    # The H/Hkv query heads that share a KV head are laid out as that head's query *rows*
    # ([B, Hkv, H/Hkv, D]): one attention per KV head, and K/V are never repeated per query head.
    # SDPA rather than matmul-softmax-matmul: on the CPU it is 2-4x faster here, since the
    # matmul would copy K to [B, Hkv, D, L] in every layer.
    out = F.scaled_dot_product_attention(
        q.view(B, Hkv, H // Hkv, D), k_cache[:, :L].transpose(1, 2), v_cache[:, :L].transpose(1, 2),
        attn_mask=cache.mask)  # [B, Hkv, H/Hkv, D]
    return out.reshape(B, H, D)


# ----------------------------------------------------------------------------------------------
# The network.

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # x / sqrt(mean(x^2) + eps) in fp32 (bf16 keeps 8 mantissa bits), cast back, then scaled:
        # the same order as Hugging Face's Qwen2RMSNorm, with PyTorch's fused kernel.
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def rotary_cos_sin(positions, dim, theta, dtype):
    """RoPE angles a_i = position * theta^(-2i/dim) for i < dim/2 (the half-split layout: dims i
    and i + dim/2 form one rotating pair). Returns cos [N, 1, dim] = (cos a, cos a) and a signed
    sin [N, 1, dim] = (-sin a, sin a), shaped to broadcast over heads; computed once per forward
    and shared by every layer."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # [N, dim/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1)[:, None].to(dtype), torch.cat([-sin, sin], dim=-1)[:, None].to(dtype)


def apply_rotary(x, cos, sin):
    """Rotate each (x_i, x_{i+D/2}) pair of x [N, h, D] by its angle:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). Rolling x by D/2 gives (x2, x1), and the sign
    sits in `sin`: the same products and sums as Hugging Face's rotate_half, bit for bit, in
    four kernels instead of six (this runs in every layer of every decode step)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = head_dim(config)
        C = config.hidden_size
        # Qwen2 gives q, k and v a bias (and o none).
        self.q_proj = nn.Linear(C, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, C, bias=False)

    def forward(self, x, cos, sin, layout, cache, backend):  # x [N, C]
        N, H, Hkv, D = x.shape[0], self.n_heads, self.n_kv_heads, self.head_dim
        if cache is None:
            q = self.q_proj(x).view(N, H, D)
            k = self.k_proj(x).view(N, Hkv, D)
            v = self.v_proj(x).view(N, Hkv, D)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        else:  # sampling: one fused projection; q and k share each token's angles, so one rotary
            if len(cache.qkv) == self.layer_idx:  # first prefill: under FSDP the weights are gathered here
                cache.qkv.append(fuse_qkv(self))
            qkv = F.linear(x, *cache.qkv[self.layer_idx])  # [N, (H + 2Hkv) * D]
            qk = apply_rotary(qkv[:, :(H + Hkv) * D].view(N, H + Hkv, D), cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + Hkv) * D:].view(N, Hkv, D)
        out = attention(q, k, v, layout, cache, self.layer_idx, backend)  # [N, H, D]
        return self.o_proj(out.reshape(N, H * D))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, layout, cache, backend):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout, cache, backend)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """Embedding, decoder layers, final norm: Hugging Face's `Qwen2Model` (the `model.` prefix)."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen2ForCausalLM(nn.Module):
    """The Qwen2 decoder with its LM head. `config` is a `transformers.Qwen2Config`.

    Calls (all return float tensors; see `forward`):
      model(input_ids [B, T])                                  -> logits [B, T, V]
      model(input_ids [N], cu_seqlens)                         -> logits [N, V]      (packed)
      model(input_ids [N], cu_seqlens, scored=[M], targets=[M]) -> (logp [M], entropy [M])
      model(input_ids [N], cu_seqlens, cache=KVCache(...))     -> next-token logits [S, V] (prefill)
      model(input_ids [B], cache=cache)                        -> next-token logits [B, V] (decode)
    """

    def __init__(self, config):
        super().__init__()
        if getattr(config, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported (Qwen2.5 checkpoints disable it)")
        self.config = config
        self.theta = rope_theta(config)
        self.model = Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = None  # None: attention_backend's choice; or "flash" / "varlen" / "sdpa"
        self.activation_checkpointing = False  # recompute each layer in backward (saves memory)

    def _backend(self, x):
        if self.attn_backend is not None:
            return self.attn_backend
        return attention_backend(x.device, x.dtype, head_dim(self.config))

    def forward(self, input_ids, cu_seqlens=None, *, max_seqlen=None, scored=None, targets=None,
                temperature=1.0, cache=None):
        """input_ids [B, T] (B rows of T real tokens each) or packed [N] with cu_seqlens [S+1].
        max_seqlen: the longest packed sequence, if the caller knows it (else one host sync).

        scored [M] and targets [M]: score mode. targets[m] is the token whose log-prob is wanted
        after packed token scored[m] (the next token of the same sequence). Returns
        (logp [M], entropy [M]) in fp32, with logits divided by `temperature` first. The LM head
        runs on the scored positions only, a chunk at a time (see `chunked_logprobs`). Gradients
        flow to logp.

        cache: sampling mode (rollout.py). With cu_seqlens it is prefill: the S sequences are the
        prompts of the cache's next S rows. Without, it is decode: input_ids [B] holds one new token
        for each cache row. Returns fp32 logits for each row's next token, [S, V] or [B, V].
        """
        batch_shape = None
        if cu_seqlens is None and cache is None:  # [B, T]: B equal-length sequences
            batch_shape = input_ids.shape
            B, T = batch_shape
            input_ids = input_ids.reshape(B * T)
            cu_seqlens = torch.arange(0, B * T + 1, T, device=input_ids.device, dtype=torch.int32)
            layout = Layout.from_cu_seqlens(cu_seqlens, B * T, max_seqlen=T)
        elif cu_seqlens is not None:
            layout = Layout.from_cu_seqlens(cu_seqlens, len(input_ids), max_seqlen)
        else:
            layout = None  # decode
            if cache.filled != cache.rows:
                raise ValueError(f"decode before every cache row is prefilled ({cache.filled} of {cache.rows})")
        positions = cache.lengths.long() if layout is None else layout.positions

        x = self.model.embed_tokens(input_ids)  # [N, C]
        backend = self._backend(x)
        if cache is None:
            cos, sin = rotary_cos_sin(positions, head_dim(self.config), self.theta, x.dtype)
        else:
            if cache.cos is None:  # the first prefill: rotary tables for every position
                cache.cos, cache.sin = rotary_cos_sin(torch.arange(cache.max_len, device=x.device),
                                                      head_dim(self.config), self.theta, x.dtype)
                cache.lengths = torch.zeros(cache.rows, dtype=torch.int32, device=x.device)
            if layout is not None:  # prefill: the cache rows these S prompts go to
                cache.prefill_rows = layout.seq_ids + cache.filled
            elif backend != "flash":  # decode: what the layers share (flash-attn needs nothing)
                cache.prepare_decode(backend)
            cos, sin = cache.cos[positions], cache.sin[positions]  # the same values, looked up
        for layer in self.model.layers:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, layout, cache, backend, use_reentrant=False)
            else:
                x = layer(x, cos, sin, layout, cache, backend)
        x = self.model.norm(x)  # [N, C]

        if cache is not None:
            if layout is not None:  # prefill: rows filled .. filled+S-1 now hold their prompts
                S = len(layout.cu_seqlens) - 1
                cache.lengths[cache.filled:cache.filled + S] = layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]
                cache.filled += S
                cache.max_length = max(cache.max_length, layout.max_seqlen)
                x = x[layout.cu_seqlens[1:].long() - 1]  # each prompt's last token [S, C]
            else:
                cache.lengths = cache.lengths + 1
                cache.max_length += 1
            return self.lm_head(x).float()
        if targets is not None:
            return chunked_logprobs(x[scored], self.lm_head.weight, targets, temperature)
        logits = self.lm_head(x)
        return logits.view(*batch_shape, -1) if batch_shape is not None else logits


def init_weights(model, std=0.02):
    """Random initialisation for a model trained from scratch (the CPU toy): normal(0, std)
    weights, zero biases, unit norms, like Hugging Face's Qwen2 `_init_weights`."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


# ----------------------------------------------------------------------------------------------
# Token log-probs without the full [N, V] fp32 logits.

LOGPROB_CHUNK_ELEMENTS = 2 ** 25  # logits held at once: 32M fp32 values = 128 MiB per buffer


class _TokenLogProbs(torch.autograd.Function):
    """log p(target_n) and entropy from hidden [M, C] and head weight [V, C], never holding more
    than about LOGPROB_CHUNK_ELEMENTS logits.

    Forward runs the head on a chunk of tokens at a time and keeps only each token's
    log-normaliser log Z_n ([M] floats). Backward recomputes the logits one *vocabulary* slice at a
    time: d logp_n / d logit_nv = (1[v = target_n] - p_nv) / temperature, so slice v0:v1 of the
    weight gradient is one matmul over all tokens (no accumulation across chunks, so no precision
    lost in bf16), and the hidden-state gradient is summed over slices in fp32 ([M, C], small).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):
        M, V = len(targets), weight.shape[0]
        logp = torch.empty(M, device=hidden.device, dtype=torch.float32)
        entropy, log_z = torch.empty_like(logp), torch.empty_like(logp)
        step = max(1, LOGPROB_CHUNK_ELEMENTS // V)
        for a in range(0, M, step):
            b = min(a + step, M)
            logits = F.linear(hidden[a:b], weight).float()  # [n, V]
            if temperature != 1.0:
                logits.div_(temperature)
            log_z[a:b] = torch.logsumexp(logits, dim=-1)
            logp[a:b] = logits.gather(-1, targets[a:b, None]).squeeze(-1) - log_z[a:b]
            logits.sub_(log_z[a:b, None])  # now log-softmax, in place
            entropy[a:b] = -(logits.exp().mul_(logits)).sum(-1)  # -sum_v p_v log p_v
        ctx.save_for_backward(hidden, weight, targets, log_z)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)  # logged, not trained (entropy coefficient 0)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, log_z = ctx.saved_tensors
        M, V = len(targets), weight.shape[0]
        g = grad_logp.float()[:, None] / ctx.temperature  # [M, 1]
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32)
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        step = max(1, LOGPROB_CHUNK_ELEMENTS // max(M, 1))
        for a in range(0, V, step):
            b = min(a + step, V)
            logits = F.linear(hidden, weight[a:b]).float()  # [M, v]
            if ctx.temperature != 1.0:
                logits.div_(ctx.temperature)
            grad = logits.sub_(log_z[:, None]).exp_().mul_(-g)  # -p * g
            # + 1[v = target] * g, for the tokens whose target lies in this slice: every token
            # adds at a clamped column, the others add 0 (no data-dependent indexing, no sync)
            here = (targets >= a) & (targets < b)  # [M]
            column = (targets - a).clamp(0, b - a - 1)[:, None]  # [M, 1]
            grad.scatter_add_(1, column, g * here[:, None])
            grad = grad.to(weight.dtype)
            grad_hidden += grad @ weight[a:b]
            if grad_weight is not None:
                grad_weight[a:b] = grad.T @ hidden
        return grad_hidden.to(hidden.dtype), grad_weight, None, None


def chunked_logprobs(hidden, weight, targets, temperature=1.0):
    """log pi(targets[m] | tokens up to m) and the entropy of that next-token distribution, for
    hidden states [M, C] (after the final norm) and head weight [V, C]. Returns (logp [M],
    entropy [M]), fp32; gradients flow to `hidden` and `weight` through logp.

    Naively this is log_softmax(hidden @ weight.T).gather(...): at V = 152064 a 4096-token
    sequence makes 2.5 GB of fp32 logits, and as much again for log_softmax and for each of their
    gradients. `_TokenLogProbs` computes the same values and gradients a slice at a time.
    """
    return _TokenLogProbs.apply(hidden, weight, targets, temperature)


def packed_logprobs(net, sequences, device, temperature=1.0):
    """log pi and the entropy of chosen tokens of several sequences, packed into one forward in
    score mode. sequences: (token ids, the indices k of the tokens to score) each; packed position
    k-1 predicts token k. Returns (logp [M], entropy [M]) in that order. Every index is built here
    on the host, so the forward waits for nothing on the device."""
    # The packed token ids, the sequence boundaries (cu_seqlens), which packed positions to
    # score and the token each should predict.
    ids, cu, scored, targets = [], [0], [], []
    for seq, ks in sequences:
        scored += [cu[-1] + k - 1 for k in ks]
        targets += [seq[k] for k in ks]
        ids += seq
        cu.append(cu[-1] + len(seq))
    return net(torch.tensor(ids, device=device), torch.tensor(cu, dtype=torch.int32, device=device),
               max_seqlen=max(b - a for a, b in zip(cu, cu[1:])), scored=torch.tensor(scored, device=device),
               targets=torch.tensor(targets, device=device), temperature=temperature)


# ----------------------------------------------------------------------------------------------
# Hugging Face checkpoint folders in and out.

def load_config(path):
    """The Qwen2 config of a checkpoint folder, with clear errors for a wrong folder."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path!r} is not a directory")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"no config.json in {path!r}: not a Hugging Face checkpoint folder")
    with open(config_file) as f:
        raw = json.load(f)
    if raw.get("model_type") != "qwen2":
        raise ValueError(f"{config_file}: model_type is {raw.get('model_type')!r}; "
                         f"only the Qwen2 architecture (model_type 'qwen2') is implemented")
    return Qwen2Config.from_pretrained(path)


def _weight_files(path):
    index_file = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index_file):
        with open(index_file) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        names = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path!r}")
    files = [os.path.join(path, name) for name in names]
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"checkpoint shard {file!r} (listed in the index) is missing")
    return files


def _checkpoint_names(path, model):
    """{safetensors file: the names of `model`'s weights it holds} for the checkpoint folder
    `path`, checked against the model: no unknown weight, none missing. Reads the files' headers
    only. A tied head is not read: it *is* the embedding."""
    expected = set(model.state_dict())
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    found = {}
    for file in _weight_files(path):
        with safe_open(file, framework="pt") as f:
            names = [name for name in f.keys() if name != "lm_head.weight" or name in expected]
        unknown = set(names) - expected
        if unknown:
            raise ValueError(f"{file}: unexpected weights {sorted(unknown)[:5]} for a Qwen2 model")
        found[file] = names
    missing = expected - {name for names in found.values() for name in names}
    if missing:
        raise ValueError(f"{path}: weights missing from the checkpoint: {sorted(missing)[:5]}")
    return found


def load_shards(model, path):
    """Fill `model`'s weights in place from the checkpoint folder `path`, each process reading only
    the rows it holds. `model` is built to the folder's config, its storage allocated (to_empty),
    in the dtype it should compute in: each slice is cast as it is copied.

    Under FSDP2 every weight is a DTensor sharded on dim 0: of a weight with n rows, rank r holds
    rows r*c .. r*c + its local rows, c = ceil(n / world) (torch.chunk's split, which FSDP2 uses;
    the last ranks may hold fewer rows or none). safetensors' get_slice reads just those rows
    from the memory-mapped file, so a process holds one weight's slice at a time on the host and
    only its shard on the device: no rank ever builds the full model, in fp32 or otherwise. A
    plain module is the one-rank case: every row."""
    from torch.distributed.tensor import DTensor, Shard
    state = model.state_dict()
    with torch.no_grad():
        for file, names in _checkpoint_names(path, model).items():
            with safe_open(file, framework="pt") as f:
                for name in names:
                    target, first = state[name], 0
                    stored = f.get_slice(name)
                    if list(stored.get_shape()) != list(target.shape):
                        raise ValueError(f"{file}: {name} has shape {stored.get_shape()}, the model's config "
                                         f"makes it {list(target.shape)}")
                    if isinstance(target, DTensor):
                        if target.placements != (Shard(0),):
                            raise ValueError(f"{name}: sharded as {target.placements}; only dim-0 shards load here")
                        first = target.device_mesh.get_local_rank() * -(-target.shape[0] // target.device_mesh.size())
                        target = target.to_local()
                    if target.shape[0]:
                        target.copy_(stored[first:first + target.shape[0]])


def load_model(path, device="cpu", dtype=torch.float32):
    """Build the network from a Hugging Face folder (config.json + model.safetensors, or shards
    with model.safetensors.index.json), with weights on `device` in `dtype`.

    The module is first built on the meta device (shapes, no memory), then given storage on
    `device` and filled a weight at a time (`load_shards`), so the weights exist once.
    """
    config = load_config(path)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    if config.tie_word_embeddings:  # to_empty gave the head storage of its own: tie it again
        model.lm_head.weight = model.model.embed_tokens.weight
    load_shards(model, path)
    return model


def save_model(model, path, dtype=None, max_shard_bytes=5 * 2 ** 30):
    """Write `model` as a Hugging Face folder: config.json and safetensors in `dtype` (default:
    the parameters' own), split into shards of at most `max_shard_bytes` with an index when
    larger. Works on a plain module or on an FSDP2-sharded one (every rank must call it then;
    rank 0 writes). The folder appears whole or not at all: it is written beside `path` and
    renamed into place.

    The weights are streamed: each parameter is gathered alone (`full_tensors`) and rank 0 writes
    a shard as soon as it is complete, so no process ever holds more than one shard in host
    memory (a whole 7B model in fp32 would be 30 GB on rank 0) and the other ranks wait only for
    the gathers, not for the whole model to be written.
    """
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    config = model.config
    skip = {"lm_head.weight"} if config.tie_word_embeddings else set()  # stored once, as the embedding
    shapes = {name: (t.shape, dtype or t.dtype) for name, t in model.state_dict().items() if name not in skip}
    shards = _shard_names(shapes, max_shard_bytes)  # name -> file, decided before anything is gathered
    files = list(dict.fromkeys(shards.values()))
    if rank0:
        config.dtype = next(iter(shapes.values()))[1]
        config.architectures = ["Qwen2ForCausalLM"]
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-save-", dir=parent)
        config.save_pretrained(tmp)
    current, missing = {}, Counter(shards.values())  # tensors still to come, per file
    for name, tensor in full_tensors(model, dtype, skip):
        if not rank0:
            continue
        current[name] = tensor.cpu().contiguous()
        missing[shards[name]] -= 1
        if missing[shards[name]] == 0:  # this shard is complete
            save_file(current, os.path.join(tmp, shards[name]), metadata={"format": "pt"})
            current = {}
    if rank0:
        if len(files) > 1:
            total = sum(math.prod(shape) * dtype_bytes(dt) for shape, dt in shapes.values())
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": shards}, f, indent=2)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
    if dist.is_initialized():
        dist.barrier()


def dtype_bytes(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _shard_names(shapes, max_shard_bytes):
    """{tensor name: safetensors file}, in order, each file at most max_shard_bytes (a larger
    tensor gets a file of its own); one file is model.safetensors."""
    groups, size = [[]], 0
    for name, (shape, dtype) in shapes.items():
        nbytes = math.prod(shape) * dtype_bytes(dtype)
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        return {name: "model.safetensors" for name in groups[0]}
    return {name: f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            for i, group in enumerate(groups) for name in group}


# ----------------------------------------------------------------------------------------------
# FSDP2: each decoder layer is one sharding unit, the root (embedding, norm, head) another.

def fsdp_wrap(model, mesh, mixed_precision, activation_checkpointing=False):
    """Shard `model` over the ranks of `mesh` (a 1-D DeviceMesh) with FSDP2's `fully_shard`.

    Each rank keeps 1/world of every parameter (and so of its gradients and AdamW states); a
    unit's full weights are all-gathered just before it runs and freed after. With
    `mixed_precision` (the recipe's setting), master weights and optimizer states stay fp32,
    units compute in bf16 and gradients are reduce-scattered in fp32, as the official code did
    after its PRM-precision fix (docs/notes.md §9). On one rank this changes nothing but the
    precision, so one process computes exactly as N do.

    The root unit (embedding, final norm, LM head: 1.1B parameters at Qwen2.5-7B's vocabulary)
    also frees its gathered weights after every forward. FSDP2's default keeps them until the
    next backward, so after a no-grad forward (the frozen reference, old log-probs) they would
    stay gathered: 2.2 GB of bf16 per model. Re-gathering them for backward costs one all-gather.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    model.activation_checkpointing = activation_checkpointing
    return model


def full_tensors(model, dtype=None, skip=()):
    """Yield (name, tensor) for every entry of the state dict but `skip`: the complete tensor on
    the model's device, cast to `dtype` if given. For an FSDP2 model each one is all-gathered
    alone, after the cast (half the traffic in bf16): a collective, so every rank must iterate,
    and only one full parameter exists at a time."""
    from torch.distributed.tensor import DTensor
    for name, tensor in model.state_dict().items():
        if name in skip:
            continue
        tensor = tensor.detach()
        if dtype is not None:
            tensor = tensor.to(dtype)
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        yield name, tensor


@contextmanager
def gathered_params(model):
    """Keep an FSDP2 model's full weights gathered for a block of many forwards (sampling runs
    one forward per token; re-gathering every layer each time would cost an all-gather per token
    per layer). The weights are freed again on exit. A no-op for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield model
        return
    model.set_reshard_after_forward(False)
    for unit in units:  # gather now, on every rank together: no collective runs while sampling,
        unit.unshard()  # so a rank that finishes early (or has nothing to sample) hangs nobody
    try:
        yield model
    finally:
        model.set_reshard_after_forward(True)
        for unit in units:
            unit.reshard()
