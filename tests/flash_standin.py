"""Pure-PyTorch stand-ins for the two flash-attn functions model.py calls.

flash-attn only runs on CUDA, so the tests monkeypatch these into `model` and force
`attn_backend = "flash"`: that runs model.py's flash call sites (argument order, tensor layouts,
in-place cache writes) on the CPU. They follow flash-attn 2's documented semantics, written as
plainly as possible (a loop over sequences, explicit softmax) so that they are obviously right:
  * grouped-query attention: query head h reads key/value head h // (H / Hkv);
  * causal masking aligned to the bottom-right corner when there are more keys than queries
    (query i of n sees keys up to i + (n_keys - n_queries));
  * flash_attn_with_kvcache writes k/v into the cache at cache_seqlens before attending.
"""

import torch


def _attend(q, k, v, causal, softmax_scale):
    """q [Sq, H, D], k/v [Sk, Hkv, D] -> [Sq, H, D] in q's dtype, computed in fp32."""
    Sq, H, D = q.shape
    Sk, Hkv = k.shape[0], k.shape[1]
    k = k.repeat_interleave(H // Hkv, dim=1).float()
    v = v.repeat_interleave(H // Hkv, dim=1).float()
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale  # [H, Sq, Sk]
    if causal:
        allowed = torch.arange(Sk)[None, :] <= torch.arange(Sq)[:, None] + (Sk - Sq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    assert dropout_p == 0.0
    assert q.dtype == k.dtype == v.dtype and cu_seqlens_q.dtype == torch.int32
    out = torch.empty_like(q)
    for s in range(len(cu_seqlens_q) - 1):
        qa, qb = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        ka, kb = int(cu_seqlens_k[s]), int(cu_seqlens_k[s + 1])
        assert qb - qa <= max_seqlen_q and kb - ka <= max_seqlen_k
        out[qa:qb] = _attend(q[qa:qb], k[ka:kb], v[ka:kb], causal, softmax_scale)
    return out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, softmax_scale=None,
                            causal=False, **unused):
    """q [B, Sq, H, D]; caches [B, T, Hkv, D]; k/v [B, Sq, Hkv, D] appended at cache_seqlens."""
    assert rotary_cos is None and cache_batch_idx is None
    B, Sq = q.shape[0], q.shape[1]
    out = torch.empty_like(q)
    for b in range(B):
        start = int(cache_seqlens[b])
        if k is not None:
            k_cache[b, start:start + Sq] = k[b]
            v_cache[b, start:start + Sq] = v[b]
        end = start + (Sq if k is not None else 0)
        out[b] = _attend(q[b], k_cache[b, :end], v_cache[b, :end], causal, softmax_scale)
    return out
