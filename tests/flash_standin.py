"""Strict pure-PyTorch stand-ins for the two flash-attn 2 functions model.py calls, and for
torch's own `torch.nn.attention.varlen.varlen_attn` (the "varlen" backend).

flash-attn only runs on CUDA, and so does torch's varlen_attn (on the CPU it has no kernel), so
the tests monkeypatch these into `model` and force `attn_backend = "flash"` or `"varlen"`: that
runs model.py's call sites (argument order, tensor layouts, in-place cache writes) on the CPU.
They take exactly the real signatures and reject at least what the real functions reject, so a
call that passes here should pass on a GPU. varlen_attn's contract is described above its
stand-in, at the end of this file.

Reference: Dao-AILab/flash-attention at tag v2.8.3 (the latest 2.x tag; v2.8.3.post1 leaves both
files alone). Each error message names where its check lives:
  * flash_attn/flash_attn_interface.py, the Python wrappers `flash_attn_varlen_func` (through
    `FlashAttnVarlenFunc.forward` and the custom op `_flash_attn_varlen_forward`) and
    `flash_attn_with_kvcache`;
  * csrc/flash_attn/flash_api.cpp, the C++ entry points `mha_varlen_fwd` and `mha_fwd_kvcache`.
Error types: RuntimeError where a C++ TORCH_CHECK or the custom op's schema fails; AssertionError
where the Python wrapper asserts; NotImplementedError for a feature the stand-in lacks (any
non-default value); ValueError ("[stand-in]") for inputs nothing in flash-attn checks although
the kernel would then read or write out of bounds, or leave outputs unwritten. (One of these is
stricter than it need be: cu_seqlens_k must end at total_k, though trailing keys no sequence
reads would do no harm.)

What the real code accepts, so these do too:
  * q, k, v whose last dimension is strided: both wrappers copy them (`maybe_contiguous`), so the
    C++ stride checks on them never fire. The KV caches are asserted instead, as they are
    written in place.
  * a head dim that is not a multiple of 8: `FlashAttnVarlenFunc.forward` zero-pads q, k, v up to
    one and slices the output back, `mha_fwd_kvcache` does the same inside; the result is the
    unpadded attention (the default scale uses the unpadded dim). The limit is 256.
The one deliberate difference: max_seqlen_q/k must be Python ints. The custom op's schema types
them `int`, which also takes a 0-dim integer tensor (through __index__, a device sync); a tensor
is rejected here.

Semantics, written as plainly as possible (a loop over sequences, explicit softmax in fp32):
  * grouped-query attention: query head h reads key/value head h // (H / Hkv);
  * causal masking aligned to the bottom-right corner (query i of Sq sees keys j <= i + Sk - Sq);
    a query that sees no key gets output 0 and softmax_lse +inf, as the kernel writes;
  * flash_attn_with_kvcache writes k/v into the caches at cache_seqlens before attending.
"""

from typing import NamedTuple

import torch

INF = float("inf")


def _check(ok, message, error=RuntimeError):
    if not ok:
        raise error(message)


def _unsupported(**turned_on):
    for name, on in turned_on.items():
        _check(not on, f"flash_standin does not implement {name}", NotImplementedError)


def _check_tensors(where, q, **others):
    """dtype and device of q and the tensors read with it (CHECK_DEVICE asks for CUDA; on the CPU
    the closest check is: on q's device)."""
    _check(q.dtype in (torch.float16, torch.bfloat16), f"[{where}] q must be fp16 or bf16, got {q.dtype}")
    for name, t in others.items():
        _check(t.dtype == q.dtype, f"[{where}] {name} must have q's dtype {q.dtype}, got {t.dtype}")
        _check(t.device == q.device, f"[{where}] {name} must be on q's device")


def _check_heads(where, H, Hkv, D):
    _check(D <= 256, f"[{where}] head dim must be at most 256, got {D}")
    _check(H % Hkv == 0, f"[{where}] {Hkv} key/value heads must divide {H} query heads")


def _check_int32_vector(where, name, t, length, device):
    _check(t.dtype == torch.int32, f"[{where}] {name} must have dtype int32, got {t.dtype}")
    _check(t.device == device, f"[{where}] {name} must be on q's device")
    _check(t.is_contiguous(), f"[{where}] {name} must be contiguous")
    _check(t.shape == (length,), f"[{where}] {name} must have shape ({length},), got {tuple(t.shape)}")


def _attend(q, k, v, causal, scale):
    """q [Sq, H, D], k/v [Sk, Hkv, D] -> out [Sq, H, D] in q's dtype, softmax_lse [H, Sq] fp32."""
    Sq, H, _ = q.shape
    Sk, Hkv, _ = k.shape
    k = k.float().repeat_interleave(H // Hkv, dim=1)  # [Sk, H, D]: head h is KV head h // (H/Hkv)
    v = v.float().repeat_interleave(H // Hkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale  # [H, Sq, Sk]
    if causal:
        sees = torch.arange(Sk, device=q.device) <= torch.arange(Sq, device=q.device)[:, None] + (Sk - Sq)
        scores = scores.masked_fill(~sees, -INF)
    lse = scores.logsumexp(-1)  # [H, Sq]; -inf where a query sees no key
    blind = lse == -INF
    probs = (scores - lse.masked_fill(blind, 0)[..., None]).exp()  # a blind query's row: exp(-inf) = 0
    out = torch.einsum("hqk,khd->qhd", probs, v)
    return out.to(q.dtype), lse.masked_fill(blind, INF)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Packed sequences: q [total_q, H, D], k/v [total_k, Hkv, D]; sequence s is rows
    cu_seqlens_q[s]:cu_seqlens_q[s+1] of q and cu_seqlens_k[s]:cu_seqlens_k[s+1] of k/v.
    Returns out [total_q, H, D], or with return_attn_probs (out, softmax_lse [H, total_q] fp32,
    S_dmask): without dropout the wrapper asks the kernel for no probabilities, so S_dmask is
    an empty tensor, as here."""
    _unsupported(dropout_p=dropout_p != 0.0, window_size=tuple(window_size) != (-1, -1), softcap=softcap != 0.0,
                 alibi_slopes=alibi_slopes is not None, block_table=block_table is not None)
    # `deterministic` only picks flash-attn's backward kernel; autograd through this code is deterministic.
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        _check(isinstance(m, int), f"[_flash_attn_varlen_forward's int schema; stand-in: no tensor] {name} must "
                                   f"be a Python int, got {type(m).__name__}")
    where = "mha_varlen_fwd"
    _check_tensors(where, q, k=k, v=v)
    _check(q.dim() == 3 and k.dim() == 3, f"[{where}] q and k must be [tokens, heads, head dim]")
    total_q, H, D = q.shape
    total_k, Hkv = k.shape[0], k.shape[1]
    _check_heads(where, H, Hkv, D)
    _check(k.shape == (total_k, Hkv, D) and v.shape == k.shape,
           f"[{where}] k and v must both be [{total_k}, {Hkv}, {D}], got {tuple(k.shape)}, {tuple(v.shape)}")
    B = cu_seqlens_q.numel() - 1
    _check(B > 0, f"[{where}] batch size must be positive")
    for qk, cu, total, max_len in (("q", cu_seqlens_q, total_q, max_seqlen_q),
                                   ("k", cu_seqlens_k, total_k, max_seqlen_k)):
        _check_int32_vector(where, f"cu_seqlens_{qk}", cu, B + 1, q.device)
        lengths = cu.diff()  # [B]
        _check(int(cu[0]) == 0 and int(cu[-1]) == total and bool((lengths >= 0).all()),
               f"[stand-in] cu_seqlens_{qk} must split the {total} tokens into consecutive runs: starting at 0, "
               f"non-decreasing, ending at {total}", ValueError)
        _check(int(lengths.max()) <= max_len, f"[stand-in] a sequence is longer than max_seqlen_{qk} = {max_len}: "
                                              f"the kernel sizes its work by it and may skip the rest", ValueError)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.empty_like(q)
    lse = torch.empty(H, total_q, dtype=torch.float32, device=q.device)
    for s in range(B):
        qa, qb = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        ka, kb = int(cu_seqlens_k[s]), int(cu_seqlens_k[s + 1])
        out[qa:qb], lse[:, qa:qb] = _attend(q[qa:qb], k[ka:kb], v[ka:kb], causal, scale)
    if return_attn_probs:
        return out, lse, q.new_empty(0)
    return out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """q [B, Sq, H, D]; caches [B_cache >= B, T, Hkv, D], row b holding cache_seqlens[b] tokens
    (all T if cache_seqlens is None); k/v [B, S_new, Hkv, D], if given, are written into the
    caches in place at rows b, positions cache_seqlens[b] .. + S_new - 1, then attended to.
    Returns out [B, Sq, H, D], or with return_softmax_lse (out, softmax_lse [B, H, Sq] fp32)."""
    _unsupported(rotary_cos=rotary_cos is not None, rotary_sin=rotary_sin is not None,
                 cache_batch_idx=cache_batch_idx is not None, cache_leftpad=cache_leftpad is not None,
                 block_table=block_table is not None, window_size=tuple(window_size) != (-1, -1),
                 softcap=softcap != 0.0, rotary_interleaved=not rotary_interleaved,
                 alibi_slopes=alibi_slopes is not None, num_splits=num_splits != 0)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check(cache.stride(-1) == 1, f"[flash_attn_with_kvcache] {name} must have a contiguous last dimension",
               AssertionError)
    if isinstance(cache_seqlens, int):  # the wrapper broadcasts it, sized (in 2.8.3) by the cache's batch
        cache_seqlens = torch.full((k_cache.shape[0],), cache_seqlens, dtype=torch.int32, device=k_cache.device)
    where = "mha_fwd_kvcache"
    _check_tensors(where, q, k_cache=k_cache, v_cache=v_cache)
    _check(q.dim() == 4 and k_cache.dim() == 4, f"[{where}] q and the caches must be [batch, time, heads, head dim]")
    B, Sq, H, D = q.shape
    B_cache, T, Hkv = k_cache.shape[:3]
    _check(B > 0, f"[{where}] batch size must be positive")
    _check_heads(where, H, Hkv, D)
    _check(k_cache.shape == (B_cache, T, Hkv, D) and v_cache.shape == k_cache.shape,
           f"[{where}] k_cache and v_cache must both be [{B_cache}, {T}, {Hkv}, {D}], "
           f"got {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    S_new = 0
    if k is not None:
        _check(v is not None, f"[{where}] k given without v")
        _check(cache_seqlens is not None, f"[{where}] k given without cache_seqlens")
        # Checked after the kernel's decode trick: with one query, GQA and a head dim that needs no
        # padding, the H/Hkv query heads that share a KV head are folded into the query length.
        Sq_folded = H // Hkv if Sq == 1 and H > Hkv and D % 8 == 0 else Sq
        _check(Sq_folded <= T, f"[{where}] with k given, the query length ({Sq_folded}) must be at most "
                               f"the cache length {T}")
        _check_tensors(where, q, k=k, v=v)
        _check(k.dim() == 4, f"[{where}] k must be [batch, new tokens, heads, head dim]")
        S_new = k.shape[1]
        _check(k.shape == (B, S_new, Hkv, D) and v.shape == k.shape,
               f"[{where}] k and v must both be [{B}, {S_new}, {Hkv}, {D}], got {tuple(k.shape)}, {tuple(v.shape)}")
    else:
        _check(v is None, "[stand-in] v given without k: flash-attn would silently ignore it", ValueError)
    if cache_seqlens is not None:
        _check_int32_vector(where, "cache_seqlens", cache_seqlens, B, q.device)
    _check(B_cache >= B, f"[stand-in] the caches hold {B_cache} rows, q has {B}: the kernel would read past them",
           ValueError)
    lengths = cache_seqlens.tolist() if cache_seqlens is not None else [T] * B
    for b, n in enumerate(lengths):
        _check(0 <= n <= T - S_new, f"[stand-in] row {b}: cache_seqlens {n} + {S_new} new tokens overflow the "
                                    f"cache length {T}: the kernel would write out of bounds", ValueError)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    for b, n in enumerate(lengths):
        if k is not None:  # in place, before attending
            k_cache[b, n:n + S_new] = k[b]
            v_cache[b, n:n + S_new] = v[b]
        out[b], lse[b] = _attend(q[b], k_cache[b, :n + S_new], v_cache[b, :n + S_new], causal, scale)
    return (out, lse) if return_softmax_lse else out


# ----------------------------------------------------------------------------------------------
# torch.nn.attention.varlen.varlen_attn, in the form of torch 2.12 - 2.15 (the one model.py calls;
# 2.10 and 2.11 spell it differently, docs/torch_floor.md).
#
# Reference: torch/nn/attention/varlen.py of the 2.12.0 - 2.15.0 wheels (read from 2.13.0 here)
# and FlashAttention-2's mha_varlen_fwd / mha_varlen_bwd as vendored in ATen
# (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp), which varlen_attn reaches
# through aten::_flash_attention_forward. Where each check lives:
#   * the Python wrapper: the GQA head checks (ValueError) and, inside the custom op,
#     window_size's length (ValueError); under autograd, seqused_k / block_table are refused as
#     inference-only (RuntimeError, the op's setup_context);
#   * the op schema torch_attn::_varlen_attn: max_q and max_k are SymInt (a float is a
#     RuntimeError);
#   * the C++ kernel (RuntimeError): fp16/bf16 q with k and v of its dtype, int32 contiguous
#     cu_seq of shape (batch + 1,), batch > 0, q/k/v with a contiguous last dimension (torch's
#     path copies nothing, unlike flash-attn's wrappers), head dim <= 256 and a multiple of 8
#     (nothing pads it), k/v heads dividing q heads, v with q's head dim, cu_seq_k given
#     ("both set or both not set"), seqused_k int32 contiguous of shape (batch,).
# Stricter here (ValueError, "[stand-in]"): cu_seq contents (from 0, non-decreasing, ending at
# the token count), every length at most max_q / max_k (the kernel trusts both and would read
# out of bounds or skip work), seqused_k within its sequence's slots; a Python int for max_q /
# max_k (the schema also takes a bool or a 0-dim tensor); a scale > 0 (torch 2.15's check).
# Not implemented (NotImplementedError): paged KV (block_table), num_splits, sliding windows
# (any window but (-1, -1) and causal (-1, 0)).
# Semantics: window (-1, 0) is causal, aligned to the bottom right as flash-attn's; with
# seqused_k, sequence b's keys are the first seqused_k[b] of its slots; lse is [H, total_q] fp32
# (what the op returns, whatever the docstring says).

class AuxRequest(NamedTuple):
    """torch.nn.attention.varlen.AuxRequest: which auxiliary outputs to return."""
    lse: bool = False


def varlen_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor,
                cu_seq_k: torch.Tensor | None, max_q: int, max_k: int, *, return_aux: AuxRequest | None = None,
                scale: float | None = None, window_size: tuple[int, int] = (-1, -1), enable_gqa: bool = False,
                seqused_k: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
                num_splits: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Packed sequences: query [total_q, H, D], key/value [total_k, Hkv, D]; sequence b is rows
    cu_seq_q[b]:cu_seq_q[b+1] of query and cu_seq_k[b]:cu_seq_k[b+1] of key/value (only the
    first seqused_k[b] of those with seqused_k). Returns out [total_q, H, D], with
    return_aux=AuxRequest(lse=True) (out, lse [H, total_q] fp32)."""
    _unsupported(block_table=block_table is not None, num_splits=num_splits is not None)
    H, Hkv = query.size(1), key.size(1)
    _check(enable_gqa or H == Hkv, f"[varlen_attn] Expect query and key/value to have the same number of heads "
                                   f"but got Hq={H} and Hkv={Hkv}. Try setting enable_gqa=True for GQA.", ValueError)
    _check(not enable_gqa or H % Hkv == 0, f"[varlen_attn] Expect number of query heads to be a multiple of kv "
                                           f"heads for GQA but got Hq={H} and Hkv={Hkv}.", ValueError)
    _check(len(window_size) == 2, f"[_varlen_attn] window_size must have length 2, got {len(window_size)}",
           ValueError)
    _unsupported(window_size=tuple(window_size) not in ((-1, -1), (-1, 0)))
    for name, m in (("max_q", max_q), ("max_k", max_k)):
        _check(isinstance(m, int) and not isinstance(m, bool),
               f"[torch_attn::_varlen_attn's SymInt schema; stand-in: a Python int] {name} must be an int, "
               f"got {type(m).__name__}")
    _check(scale is None or scale > 0, f"[varlen_attn, torch 2.15] scale must be greater than 0, got {scale}",
           ValueError)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    _check(seqused_k is None or not grad, "[_varlen_attn setup_context] seqused_k is an inference-only parameter.")
    where = "mha_varlen_fwd"
    _check(cu_seq_k is not None, f"[{where}] cumulative_sequence_length_q and cumulative_sequence_length_k must "
                                 f"be both set or both not set")
    _check_tensors(where, query, key=key, value=value)
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check(t.dim() == 3, f"[{where}] {name} must be [tokens, heads, head dim], got {tuple(t.shape)}")
        _check(t.stride(-1) == 1, f"[{where}] {name}: Input tensor must have contiguous last dimension")
    total_q, _, D = query.shape
    total_k = key.shape[0]
    _check(D % 8 == 0, f"[{where}] head_size must be a multiple of 8, got {D} (varlen_attn pads nothing)")
    _check_heads(where, H, Hkv, D)
    _check(key.shape == (total_k, Hkv, D) and value.shape == key.shape,
           f"[{where}] key and value must both be [{total_k}, {Hkv}, {D}], got {tuple(key.shape)}, "
           f"{tuple(value.shape)}")
    B = cu_seq_q.numel() - 1
    _check(B > 0, f"[{where}] batch size must be positive")
    _check_int32_vector(where, "cu_seq_q", cu_seq_q, B + 1, query.device)
    _check_int32_vector(where, "cu_seq_k", cu_seq_k, B + 1, query.device)
    if seqused_k is not None:
        _check_int32_vector(where, "seqused_k", seqused_k, B, query.device)
    q_lengths, slots = _consecutive_runs("cu_seq_q", cu_seq_q, total_q), _consecutive_runs("cu_seq_k", cu_seq_k,
                                                                                           total_k)
    k_lengths = slots if seqused_k is None else seqused_k.tolist()
    for b, (used, n) in enumerate(zip(k_lengths, slots)):
        _check(0 <= used <= n, f"[stand-in] seqused_k[{b}] = {used} is outside its {n} slots", ValueError)
    for name, lengths, bound in (("max_q", q_lengths, max_q), ("max_k", k_lengths, max_k)):
        _check(max(lengths) <= bound, f"[stand-in] a sequence is longer than {name} = {bound}: the kernel sizes its "
                                      f"work by it", ValueError)
    causal, scale = tuple(window_size) == (-1, 0), D ** -0.5 if scale is None else scale
    out = torch.empty_like(query)
    lse = torch.empty(H, total_q, dtype=torch.float32, device=query.device)
    for b in range(B):
        qa, qb, ka = int(cu_seq_q[b]), int(cu_seq_q[b + 1]), int(cu_seq_k[b])
        out[qa:qb], lse[:, qa:qb] = _attend(query[qa:qb], key[ka:ka + k_lengths[b]], value[ka:ka + k_lengths[b]],
                                            causal, scale)
    return (out, lse) if return_aux is not None and return_aux.lse else out


def _consecutive_runs(name, cu, total):
    """The lengths of the runs cu [B+1] marks, checked to split `total` tokens in order."""
    lengths = cu.diff().tolist()
    _check(int(cu[0]) == 0 and int(cu[-1]) == total and min(lengths) >= 0,
           f"[stand-in] {name} must split the {total} tokens into consecutive runs: starting at 0, non-decreasing, "
           f"ending at {total}", ValueError)
    return lengths
