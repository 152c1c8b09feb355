"""tests/flash_standin.py against flash-attn 2.8.3's contract and torch's varlen_attn's (2.12+):
the real signatures, every input the real functions (or their kernels) cannot take, and the
maths against float64 SDPA at Qwen2.5-Math-7B's attention geometry."""

import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.flash_standin import AuxRequest, flash_attn_varlen_func, flash_attn_with_kvcache, varlen_attn

H, HKV, D = 28, 4, 128  # Qwen2.5-Math-7B: 28 query heads share 4 key/value heads of dim 128
BF16 = torch.bfloat16

REQUIRED = inspect.Parameter.empty
# flash_attn/flash_attn_interface.py at v2.8.3: every parameter, in order, with its default.
REAL_SIGNATURES = {
    flash_attn_varlen_func: [
        ("q", REQUIRED), ("k", REQUIRED), ("v", REQUIRED), ("cu_seqlens_q", REQUIRED), ("cu_seqlens_k", REQUIRED),
        ("max_seqlen_q", REQUIRED), ("max_seqlen_k", REQUIRED), ("dropout_p", 0.0), ("softmax_scale", None),
        ("causal", False), ("window_size", (-1, -1)), ("softcap", 0.0), ("alibi_slopes", None),
        ("deterministic", False), ("return_attn_probs", False), ("block_table", None)],
    flash_attn_with_kvcache: [
        ("q", REQUIRED), ("k_cache", REQUIRED), ("v_cache", REQUIRED), ("k", None), ("v", None),
        ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None), ("cache_batch_idx", None),
        ("cache_leftpad", None), ("block_table", None), ("softmax_scale", None), ("causal", False),
        ("window_size", (-1, -1)), ("softcap", 0.0), ("rotary_interleaved", True), ("alibi_slopes", None),
        ("num_splits", 0), ("return_softmax_lse", False)],
}


@pytest.mark.parametrize("fn", REAL_SIGNATURES, ids=lambda fn: fn.__name__)
def test_signatures_are_flash_attns(fn):
    params = inspect.signature(fn).parameters.values()
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in params)  # no *args, no **kwargs
    assert [(p.name, p.default) for p in params] == REAL_SIGNATURES[fn]


# ----------------------------------------------------------------------------------------------
# Inputs

def strided(t):
    """t's values with a last dimension of stride 2 (not contiguous)."""
    return torch.stack([t, t], -1)[..., 0]


def varlen_args(lengths=(3, 1, 4), heads=(4, 2), d=16, seed=0):
    """Valid flash_attn_varlen_func arguments: q [N, h, d], k/v [N, hkv, d], self-attention."""
    g = torch.Generator().manual_seed(seed)
    (h, hkv), n = heads, sum(lengths)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return dict(q=torch.randn(n, h, d, generator=g).to(BF16), k=torch.randn(n, hkv, d, generator=g).to(BF16),
                v=torch.randn(n, hkv, d, generator=g).to(BF16), cu_seqlens_q=cu, cu_seqlens_k=cu.clone(),
                max_seqlen_q=max(lengths), max_seqlen_k=max(lengths), causal=True)


def kvcache_args(seqlens=(0, 3, 7), T=8, s_q=1, s_new=1, heads=(4, 2), d=16, seed=0):
    """Valid flash_attn_with_kvcache arguments: q [B, s_q, h, d], caches [B, T, hkv, d] holding
    `seqlens` tokens per row, new k/v [B, s_new, hkv, d]."""
    g = torch.Generator().manual_seed(seed)
    (h, hkv), B = heads, len(seqlens)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(BF16)  # noqa: E731
    return dict(q=rand(B, s_q, h, d), k_cache=rand(B, T, hkv, d), v_cache=rand(B, T, hkv, d),
                k=rand(B, s_new, hkv, d), v=rand(B, s_new, hkv, d),
                cache_seqlens=torch.tensor(seqlens, dtype=torch.int32), causal=True)


def reference(q, k, v, causal, scale=None):
    """q [Sq, H, D], k/v [Sk, Hkv, D] -> out [Sq, H, D], softmax_lse [H, Sq], in float64.
    out is SDPA's (its own GQA head mapping) with the bottom-right causal mask built by tril;
    lse folds the H/Hkv query heads that share a KV head into [Hkv, H/Hkv] (model.py's decode view)."""
    q, k, v = (x.double().transpose(0, 1) for x in (q, k, v))  # [heads, S, D]
    (Hq, Sq, Dh), (Hk, Sk) = q.shape, k.shape[:2]
    mask = torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq) if causal else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, scale=scale)
    scores = q.view(Hk, Hq // Hk, Sq, Dh) @ k.transpose(1, 2)[:, None] * (scale or Dh ** -0.5)
    if causal:
        scores = scores.masked_fill(~mask, float("-inf"))
    return out.transpose(0, 1), scores.logsumexp(-1).view(Hq, Sq)


def assert_bf16_close(out, ref):
    """The stand-in computes in fp32 and rounds once to bf16 (relative error <= 2^-8); fp32's own
    error stays far below 1e-5."""
    assert out.dtype == BF16
    torch.testing.assert_close(out.double(), ref, rtol=2 ** -8, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Rejections: (id, arguments from the valid ones, error)

def unimplemented(**change):
    return lambda a: {**a, **change}


VARLEN_REJECTS = [
    ("misspelled keyword", lambda a: {**a, "casual": True}, TypeError),
    ("fp32", lambda a: {**a, **{n: a[n].float() for n in "qkv"}}, RuntimeError),
    ("k fp16 with q bf16", lambda a: {**a, "k": a["k"].half()}, RuntimeError),
    ("v fp32 with q bf16", lambda a: {**a, "v": a["v"].float()}, RuntimeError),
    ("k on another device", lambda a: {**a, "k": a["k"].to("meta")}, RuntimeError),
    ("cu_seqlens_q int64", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"].long()}, RuntimeError),
    ("cu_seqlens_k int64", lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"].long()}, RuntimeError),
    ("cu_seqlens_q strided", lambda a: {**a, "cu_seqlens_q": strided(a["cu_seqlens_q"])}, RuntimeError),
    ("cu_seqlens_k on another device", lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"].to("meta")}, RuntimeError),
    ("cu_seqlens_k not batch + 1 long", lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"][:-1]}, RuntimeError),
    ("cu_seqlens_q 2-D", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"][None]}, RuntimeError),
    ("no sequence", lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"][:1], "cu_seqlens_k": a["cu_seqlens_k"][:1]},
     RuntimeError),
    ("max_seqlen_q a tensor", lambda a: {**a, "max_seqlen_q": torch.tensor(4)}, RuntimeError),
    ("max_seqlen_k a float", lambda a: {**a, "max_seqlen_k": 4.0}, RuntimeError),
    ("max_seqlen_k too small", lambda a: {**a, "max_seqlen_k": 3}, ValueError),
    ("cu_seqlens_q not from 0", lambda a: {**a, "cu_seqlens_q": torch.tensor([1, 3, 4, 8], dtype=torch.int32)},
     ValueError),
    ("cu_seqlens_k short of total_k", lambda a: {**a, "cu_seqlens_k": torch.tensor([0, 3, 4, 7], dtype=torch.int32)},
     ValueError),
    ("cu_seqlens_q decreasing", lambda a: {**a, "cu_seqlens_q": torch.tensor([0, 4, 3, 8], dtype=torch.int32)},
     ValueError),
    ("head dim 264", lambda a: varlen_args(d=264), RuntimeError),
    ("4 heads over 3 KV heads", lambda a: varlen_args(heads=(4, 3)), RuntimeError),
    ("q 4-D", lambda a: {**a, "q": a["q"][None]}, RuntimeError),
    ("v fewer tokens than k", lambda a: {**a, "v": a["v"][:-1]}, RuntimeError),
    ("k head dim unlike q's", lambda a: {**a, "k": a["k"][..., :8], "v": a["v"][..., :8]}, RuntimeError),
    ("dropout", unimplemented(dropout_p=0.1), NotImplementedError),
    ("sliding window", unimplemented(window_size=(8, 0)), NotImplementedError),
    ("softcap", unimplemented(softcap=30.0), NotImplementedError),
    ("alibi", unimplemented(alibi_slopes=torch.ones(4)), NotImplementedError),
    ("paged KV", unimplemented(block_table=torch.zeros(3, 1, dtype=torch.int32)), NotImplementedError),
]

KVCACHE_REJECTS = [
    ("misspelled keyword", lambda a: {**a, "cache_seqlen": a["cache_seqlens"]}, TypeError),
    ("fp32", lambda a: {**a, **{n: a[n].float() for n in ("q", "k_cache", "v_cache", "k", "v")}}, RuntimeError),
    ("k_cache fp16 with q bf16", lambda a: {**a, "k_cache": a["k_cache"].half()}, RuntimeError),
    ("new k fp16 with q bf16", lambda a: {**a, "k": a["k"].half()}, RuntimeError),
    ("v_cache on another device", lambda a: {**a, "v_cache": a["v_cache"].to("meta")}, RuntimeError),
    ("k_cache strided last dim", lambda a: {**a, "k_cache": strided(a["k_cache"])}, AssertionError),
    ("v_cache strided last dim", lambda a: {**a, "v_cache": strided(a["v_cache"])}, AssertionError),
    ("cache_seqlens int64", lambda a: {**a, "cache_seqlens": a["cache_seqlens"].long()}, RuntimeError),
    ("cache_seqlens strided", lambda a: {**a, "cache_seqlens": strided(a["cache_seqlens"])}, RuntimeError),
    ("cache_seqlens on another device", lambda a: {**a, "cache_seqlens": a["cache_seqlens"].to("meta")},
     RuntimeError),
    ("cache_seqlens not batch long", lambda a: {**a, "cache_seqlens": a["cache_seqlens"][:2]}, RuntimeError),
    # 2.8.3 sizes an int cache_seqlens by the cache's batch (3 rows), not q's (2).
    ("int cache_seqlens, cache with more rows than q",
     lambda a: {**a, "q": a["q"][:2], "k": a["k"][:2], "v": a["v"][:2], "cache_seqlens": 1}, RuntimeError),
    ("head dim 264", lambda a: kvcache_args(d=264), RuntimeError),
    ("4 heads over 3 KV heads", lambda a: kvcache_args(heads=(4, 3)), RuntimeError),
    ("q 3-D", lambda a: {**a, "q": a["q"][:, 0]}, RuntimeError),
    ("v_cache shorter than k_cache", lambda a: {**a, "v_cache": a["v_cache"][:, :-1]}, RuntimeError),
    ("new k/v with other KV heads", lambda a: {**a, "k": a["k"][:, :, :1], "v": a["v"][:, :, :1]}, RuntimeError),
    ("new k/v with fewer rows", lambda a: {**a, "k": a["k"][:2], "v": a["v"][:2]}, RuntimeError),
    ("new v longer than new k", lambda a: {**a, "v": torch.cat([a["v"], a["v"]], 1)}, RuntimeError),
    ("k without v", lambda a: {**a, "v": None}, RuntimeError),
    ("k without cache_seqlens", lambda a: {**a, "cache_seqlens": None}, RuntimeError),
    ("query longer than the cache", lambda a: kvcache_args(seqlens=(0, 0, 0), s_q=9), RuntimeError),
    # Decode with GQA: mha_fwd_kvcache folds the 8 query heads into the query length, 8 > T = 4.
    ("GQA decode, cache shorter than H/Hkv", lambda a: kvcache_args(seqlens=(0, 1, 2), T=4, heads=(8, 1)),
     RuntimeError),
    ("v without k", lambda a: {**a, "k": None}, ValueError),
    ("decode overflows a full row", lambda a: {**a, "cache_seqlens": torch.tensor([0, 3, 8], dtype=torch.int32)},
     ValueError),
    ("prefill overflows a row", lambda a: kvcache_args(s_q=2, s_new=2), ValueError),
    ("negative cache_seqlens", lambda a: {**a, "cache_seqlens": torch.tensor([0, -1, 2], dtype=torch.int32)},
     ValueError),
    ("caches with fewer rows than q", lambda a: {**a, "k_cache": a["k_cache"][:2], "v_cache": a["v_cache"][:2]},
     ValueError),
    ("rotary_cos", unimplemented(rotary_cos=torch.ones(8, 8)), NotImplementedError),
    ("rotary_sin", unimplemented(rotary_sin=torch.ones(8, 8)), NotImplementedError),
    ("cache_batch_idx", unimplemented(cache_batch_idx=torch.arange(3, dtype=torch.int32)), NotImplementedError),
    ("cache_leftpad", unimplemented(cache_leftpad=torch.zeros(3, dtype=torch.int32)), NotImplementedError),
    ("paged KV", unimplemented(block_table=torch.zeros(3, 1, dtype=torch.int32)), NotImplementedError),
    ("sliding window", unimplemented(window_size=(4, 0)), NotImplementedError),
    ("softcap", unimplemented(softcap=30.0), NotImplementedError),
    ("rotary not interleaved", unimplemented(rotary_interleaved=False), NotImplementedError),
    ("alibi", unimplemented(alibi_slopes=torch.ones(4)), NotImplementedError),
    ("num_splits", unimplemented(num_splits=2), NotImplementedError),
]


@pytest.mark.parametrize("change, error", [c[1:] for c in VARLEN_REJECTS], ids=[c[0] for c in VARLEN_REJECTS])
def test_varlen_rejects(change, error):
    flash_attn_varlen_func(**varlen_args())  # the unchanged arguments pass
    args = change(varlen_args())
    with pytest.raises(error):
        flash_attn_varlen_func(**args)


@pytest.mark.parametrize("change, error", [c[1:] for c in KVCACHE_REJECTS], ids=[c[0] for c in KVCACHE_REJECTS])
def test_kvcache_rejects_and_leaves_the_cache_alone(change, error):
    flash_attn_with_kvcache(**kvcache_args())  # the unchanged arguments pass
    args = change(kvcache_args())
    before = [args[name].clone() for name in ("k_cache", "v_cache")]
    with pytest.raises(error):
        flash_attn_with_kvcache(**args)
    for name, cache in zip(("k_cache", "v_cache"), before):
        if args[name].device.type != "meta":
            assert torch.equal(args[name], cache)


# ----------------------------------------------------------------------------------------------
# Maths, at the 7B geometry

@pytest.mark.parametrize("causal", [True, False])
def test_varlen_equals_reference(causal):
    lengths = (5, 1, 17, 9, 30)
    a = varlen_args(lengths, heads=(H, HKV), d=D)
    out, lse, S_dmask = flash_attn_varlen_func(**{**a, "causal": causal}, return_attn_probs=True)
    assert out.shape == a["q"].shape and lse.shape == (H, sum(lengths)) and lse.dtype == torch.float32
    assert S_dmask.numel() == 0  # without dropout flash-attn returns no probabilities
    cu = a["cu_seqlens_q"].tolist()
    for s in range(len(lengths)):
        rows = slice(cu[s], cu[s + 1])
        ref_out, ref_lse = reference(a["q"][rows], a["k"][rows], a["v"][rows], causal)
        assert_bf16_close(out[rows], ref_out)
        torch.testing.assert_close(lse[:, rows].double(), ref_lse, rtol=1e-5, atol=1e-5)


def test_varlen_takes_what_the_real_wrappers_fix_up():
    """Strided q/k/v (the wrapper copies them), a head dim that is no multiple of 8 (the wrapper
    pads it), `deterministic`, and a softmax_scale of the caller's."""
    a = varlen_args((6, 2), heads=(H, HKV), d=100)
    out = flash_attn_varlen_func(**{**a, **{n: strided(a[n]) for n in "qkv"}}, softmax_scale=0.3,
                                 deterministic=True)
    assert torch.equal(out, flash_attn_varlen_func(**a, softmax_scale=0.3))
    for rows in (slice(0, 6), slice(6, 8)):
        assert_bf16_close(out[rows], reference(a["q"][rows], a["k"][rows], a["v"][rows], True, scale=0.3)[0])


def test_varlen_query_that_sees_no_key_gets_zero_and_lse_inf():
    """3 queries over 1 key, causal: bottom-right alignment leaves queries 0 and 1 blind."""
    q, k, v = (torch.randn(n, h, 16).to(BF16) for n, h in ((3, 4), (1, 2), (1, 2)))
    out, lse, _ = flash_attn_varlen_func(q, k, v, torch.tensor([0, 3], dtype=torch.int32),
                                         torch.tensor([0, 1], dtype=torch.int32), 3, 1, causal=True,
                                         return_attn_probs=True)
    assert torch.equal(out[:2], torch.zeros_like(out[:2])) and torch.isinf(lse[:, :2]).all() and (lse[:, :2] > 0).all()
    assert torch.equal(out[2], v[0].repeat_interleave(2, dim=0))  # heads 0, 1 read KV head 0; 2, 3 read 1


KVCACHE_CASES = {  # model.py's decode (one new token per row) and a prefill of several, ragged rows
    "decode": dict(seqlens=(0, 7, 20, 39), T=40, s_q=1, s_new=1),
    "prefill": dict(seqlens=(0, 3, 11, 34), T=40, s_q=6, s_new=6),
}


@pytest.mark.parametrize("case", KVCACHE_CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_kvcache_equals_reference(case, causal):
    a = kvcache_args(**KVCACHE_CASES[case], heads=(H, HKV), d=D)
    old_k, old_v = a["k_cache"].clone(), a["v_cache"].clone()
    out, lse = flash_attn_with_kvcache(**{**a, "causal": causal}, return_softmax_lse=True)
    seqlens = KVCACHE_CASES[case]["seqlens"]
    assert out.shape == a["q"].shape and lse.shape == (len(seqlens), H, a["q"].shape[1])
    assert lse.dtype == torch.float32
    for b, n in enumerate(seqlens):
        keys, values = torch.cat([old_k[b, :n], a["k"][b]]), torch.cat([old_v[b, :n], a["v"][b]])
        ref_out, ref_lse = reference(a["q"][b], keys, values, causal)
        assert_bf16_close(out[b], ref_out)
        torch.testing.assert_close(lse[b].double(), ref_lse, rtol=1e-5, atol=1e-5)


def test_kvcache_call_as_model_py_makes_it():
    """model.py's decode: q [B, H, D], k/v [B, Hkv, D] sliced from one fused projection (strided
    rows, contiguous last dim), given as [:, None] views; cache_seqlens int32 [B]."""
    B, T, seqlens = 3, 16, (4, 9, 0)
    qkv = torch.randn(B, (H + 2 * HKV) * D).to(BF16)
    q = qkv[:, :H * D].view(B, H, D)
    k = qkv[:, H * D:(H + HKV) * D].view(B, HKV, D)
    v = qkv[:, (H + HKV) * D:].view(B, HKV, D)
    k_cache, v_cache = torch.randn(B, T, HKV, D).to(BF16), torch.randn(B, T, HKV, D).to(BF16)
    old_k, old_v = k_cache.clone(), v_cache.clone()
    out = flash_attn_with_kvcache(q[:, None], k_cache, v_cache, k=k[:, None], v=v[:, None],
                                  cache_seqlens=torch.tensor(seqlens, dtype=torch.int32), causal=True)[:, 0]
    for b, n in enumerate(seqlens):
        ref = reference(q[b, None], torch.cat([old_k[b, :n], k[b, None]]), torch.cat([old_v[b, :n], v[b, None]]),
                        causal=True)[0]
        assert_bf16_close(out[b], ref[0])


def test_kvcache_without_new_tokens_reads_cache_seqlens_or_the_whole_cache():
    a = kvcache_args(seqlens=(2, 5, 8), T=8, s_q=3, heads=(H, HKV), d=D)
    del a["k"], a["v"]
    before = a["k_cache"].clone()
    out = flash_attn_with_kvcache(**a)
    whole = flash_attn_with_kvcache(**{**a, "cache_seqlens": None})
    assert torch.equal(a["k_cache"], before)
    for b, n in enumerate((2, 5, 8)):
        assert_bf16_close(out[b], reference(a["q"][b], a["k_cache"][b, :n], a["v_cache"][b, :n], True)[0])
        assert_bf16_close(whole[b], reference(a["q"][b], a["k_cache"][b], a["v_cache"][b], True)[0])


@pytest.mark.parametrize("case", KVCACHE_CASES)
def test_kvcache_writes_new_tokens_at_cache_seqlens_and_nowhere_else(case):
    a = kvcache_args(**KVCACHE_CASES[case], heads=(H, HKV), d=D)
    k_cache, v_cache = a["k_cache"], a["v_cache"]
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    for b, n in enumerate(KVCACHE_CASES[case]["seqlens"]):
        s_new = a["k"].shape[1]
        expected_k[b, n:n + s_new], expected_v[b, n:n + s_new] = a["k"][b], a["v"][b]
    assert not torch.equal(expected_k, k_cache)  # the write changes something to check
    flash_attn_with_kvcache(**a)
    assert a["k_cache"] is k_cache and a["v_cache"] is v_cache
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


# ----------------------------------------------------------------------------------------------
# torch.nn.attention.varlen.varlen_attn (torch 2.12 - 2.15)

def installed_varlen_attn():
    """torch's own varlen_attn where the installed torch has the 2.12+ form, else skip."""
    try:
        from torch.nn.attention.varlen import varlen_attn as real
    except ImportError:
        pytest.skip("the installed torch has no torch.nn.attention.varlen")
    if "enable_gqa" not in inspect.signature(real).parameters:
        pytest.skip("the installed torch's varlen_attn predates 2.12")
    return real


def test_varlen_signature_is_the_installed_torchs():
    """Every parameter, its kind (keyword-only after max_k), default and annotation, as the
    installed torch's varlen_attn declares them; no *args or **kwargs."""
    real, ours = inspect.signature(installed_varlen_attn()), inspect.signature(varlen_attn)
    def describe(sig):  # the annotations' AuxRequest is each module's own
        return [(p.name, p.kind, p.default, str(p.annotation).replace("tests.flash_standin.", "")
                 .replace("torch.nn.attention.varlen.", "")) for p in sig.parameters.values()]
    assert describe(ours) == describe(real)
    assert AuxRequest._fields == ("lse",) and AuxRequest().lse is False


def varlen_call(lengths=(3, 1, 4), heads=(4, 2), d=16, seed=0):
    """Valid varlen_attn arguments as model.py's packed forward makes them: causal, GQA."""
    a = varlen_args(lengths, heads, d, seed)
    return dict(query=a["q"], key=a["k"], value=a["v"], cu_seq_q=a["cu_seqlens_q"], cu_seq_k=a["cu_seqlens_k"],
                max_q=a["max_seqlen_q"], max_k=a["max_seqlen_k"], window_size=(-1, 0), enable_gqa=heads[0] != heads[1])


def varlen_decode_call(used=(1, 4, 8), T=8, heads=(4, 2), d=16, seed=0):
    """Valid varlen_attn arguments as model.py's decode makes them: one query per row, the cache
    [B, T, Hkv, D] as packed keys [B * T, Hkv, D], row b's first used[b] slots attended."""
    a = kvcache_args(seqlens=tuple(n - 1 for n in used), T=T, heads=heads, d=d, seed=seed)
    B = len(used)
    return dict(query=a["q"][:, 0], key=a["k_cache"].view(B * T, *a["k_cache"].shape[2:]),
                value=a["v_cache"].view(B * T, *a["v_cache"].shape[2:]),
                cu_seq_q=torch.arange(B + 1, dtype=torch.int32),
                cu_seq_k=torch.arange(0, B * T + 1, T, dtype=torch.int32),
                max_q=1, max_k=max(used), window_size=(-1, 0), enable_gqa=True,
                seqused_k=torch.tensor(used, dtype=torch.int32))


VARLEN_TORCH_REJECTS = [  # what torch's own varlen_attn refuses (in Python, the schema or its kernel)
    ("misspelled keyword", lambda a: {**a, "is_causal": True}, TypeError),
    ("GQA without enable_gqa", lambda a: {**a, "enable_gqa": False}, ValueError),
    ("4 heads over 3 KV heads", lambda a: varlen_call(heads=(4, 3)), ValueError),
    ("window of 3", lambda a: {**a, "window_size": (-1, 0, 0)}, ValueError),
    ("max_q a float", lambda a: {**a, "max_q": 4.0}, RuntimeError),
    ("fp32", lambda a: {**a, **{n: a[n].float() for n in ("query", "key", "value")}}, RuntimeError),
    ("key fp16 with query bf16", lambda a: {**a, "key": a["key"].half()}, RuntimeError),
    ("value on another device", lambda a: {**a, "value": a["value"].to("meta")}, RuntimeError),
    ("query strided last dim", lambda a: {**a, "query": strided(a["query"])}, RuntimeError),
    ("key strided last dim", lambda a: {**a, "key": strided(a["key"])}, RuntimeError),
    ("cu_seq_q int64", lambda a: {**a, "cu_seq_q": a["cu_seq_q"].long()}, RuntimeError),
    ("cu_seq_k strided", lambda a: {**a, "cu_seq_k": strided(a["cu_seq_k"])}, RuntimeError),
    ("cu_seq_k on another device", lambda a: {**a, "cu_seq_k": a["cu_seq_k"].to("meta")}, RuntimeError),
    ("cu_seq_k not batch + 1 long", lambda a: {**a, "cu_seq_k": a["cu_seq_k"][:-1]}, RuntimeError),
    ("cu_seq_k None", lambda a: {**a, "cu_seq_k": None}, RuntimeError),
    ("no sequence", lambda a: {**a, "cu_seq_q": a["cu_seq_q"][:1], "cu_seq_k": a["cu_seq_k"][:1]}, RuntimeError),
    ("head dim 100 (no padding)", lambda a: varlen_call(d=100), RuntimeError),
    ("head dim 264", lambda a: varlen_call(d=264), RuntimeError),
    ("query 4-D", lambda a: {**a, "query": a["query"][None]}, RuntimeError),
    ("value fewer tokens than key", lambda a: {**a, "value": a["value"][:-1]}, RuntimeError),
    ("value head dim unlike query's", lambda a: {**a, "value": a["value"][..., :8].contiguous()}, RuntimeError),
]
VARLEN_STRICTER = [  # what the kernel would take and misuse, or what the stand-in does not implement
    ("max_k a tensor", lambda a: {**a, "max_k": torch.tensor(4)}, RuntimeError),
    ("max_q a bool", lambda a: {**a, "max_q": True}, RuntimeError),
    ("max_k too small", lambda a: {**a, "max_k": 3}, ValueError),
    ("cu_seq_q not from 0", lambda a: {**a, "cu_seq_q": torch.tensor([1, 3, 4, 8], dtype=torch.int32)}, ValueError),
    ("cu_seq_k short of total_k", lambda a: {**a, "cu_seq_k": torch.tensor([0, 3, 4, 7], dtype=torch.int32)},
     ValueError),
    ("cu_seq_q decreasing", lambda a: {**a, "cu_seq_q": torch.tensor([0, 4, 3, 8], dtype=torch.int32)}, ValueError),
    ("scale 0", lambda a: {**a, "scale": 0.0}, ValueError),
    ("sliding window", lambda a: {**a, "window_size": (8, 0)}, NotImplementedError),
    ("paged KV", lambda a: {**a, "block_table": torch.zeros(3, 1, dtype=torch.int32)}, NotImplementedError),
    ("num_splits", lambda a: {**a, "num_splits": 1}, NotImplementedError),
]
VARLEN_DECODE_REJECTS = [
    ("seqused_k int64", lambda a: {**a, "seqused_k": a["seqused_k"].long()}, RuntimeError),
    ("seqused_k not batch long", lambda a: {**a, "seqused_k": a["seqused_k"][:2]}, RuntimeError),
    ("seqused_k strided", lambda a: {**a, "seqused_k": strided(a["seqused_k"])}, RuntimeError),
    ("seqused_k under autograd", lambda a: {**a, "query": a["query"].clone().requires_grad_()}, RuntimeError),
    ("seqused_k past its slots", lambda a: {**a, "seqused_k": torch.tensor([1, 4, 9], dtype=torch.int32),
                                            "max_k": 9}, ValueError),
    ("seqused_k over max_k", lambda a: {**a, "max_k": 7}, ValueError),
]


@pytest.mark.parametrize("make, change, error",
                         [(varlen_call, *c[1:]) for c in VARLEN_TORCH_REJECTS + VARLEN_STRICTER] +
                         [(varlen_decode_call, *c[1:]) for c in VARLEN_DECODE_REJECTS],
                         ids=[c[0] for c in VARLEN_TORCH_REJECTS + VARLEN_STRICTER + VARLEN_DECODE_REJECTS])
def test_varlen_attn_rejects(make, change, error):
    varlen_attn(**make())  # the unchanged arguments pass
    with pytest.raises(error):
        varlen_attn(**change(make()))


@pytest.mark.parametrize("change, error", [c[1:] for c in VARLEN_TORCH_REJECTS[:5]],
                         ids=[c[0] for c in VARLEN_TORCH_REJECTS[:5]])
def test_varlen_attn_rejects_as_the_installed_torch_does(change, error):
    """The refusals torch makes before its kernel (which the CPU lacks): the stand-in raises the
    same error type for the same call; the unchanged call gets past them in both (torch's then
    stops at the missing CPU kernel)."""
    real = installed_varlen_attn()
    with pytest.raises(NotImplementedError):
        real(**varlen_call())
    for fn in (real, varlen_attn):
        with pytest.raises(error):
            fn(**change(varlen_call()))


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_attn_equals_reference_values_and_gradients(causal):
    """Packed forward at the 7B geometry against float64 SDPA per sequence, lse included, and the
    backward (what training uses) against the reference's gradients."""
    lengths = (5, 1, 17, 9, 30)
    a = {**varlen_call(lengths, heads=(H, HKV), d=D), "window_size": (-1, 0) if causal else (-1, -1)}
    q, k, v = (a[n].clone().requires_grad_() for n in ("query", "key", "value"))
    out, lse = varlen_attn(**{**a, "query": q, "key": k, "value": v}, return_aux=AuxRequest(lse=True))
    assert out.shape == q.shape and out.dtype == BF16 and lse.shape == (H, sum(lengths)) and lse.dtype == torch.float32
    # bf16-valued, so that the backward's cast of it to out's dtype is exact
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(BF16).float()
    (out.float() * upstream).sum().backward()
    cu = a["cu_seq_q"].tolist()
    for s in range(len(lengths)):
        rows = slice(cu[s], cu[s + 1])
        ref_q, ref_k, ref_v = (a[n][rows].double().requires_grad_() for n in ("query", "key", "value"))
        ref_out, ref_lse = reference(ref_q, ref_k, ref_v, causal)
        assert_bf16_close(out[rows], ref_out)
        torch.testing.assert_close(lse[:, rows].double(), ref_lse, rtol=1e-5, atol=1e-5)
        (ref_out * upstream[rows].double()).sum().backward()
        for ours, theirs in ((q, ref_q), (k, ref_k), (v, ref_v)):
            assert_bf16_close(ours.grad[rows], theirs.grad)  # gradients rounded once to bf16


def test_varlen_attn_decode_from_a_padded_cache_equals_reference():
    """model.py's decode form (seqused_k over a [B * T] cache): row b attends its first used[b]
    slots only, whatever the others hold."""
    a = varlen_decode_call(used=(1, 4, 8, 5), T=8, heads=(H, HKV), d=D)
    out = varlen_attn(**a)
    for b, n in enumerate((1, 4, 8, 5)):
        keys, values = a["key"][8 * b:8 * b + n], a["value"][8 * b:8 * b + n]
        assert_bf16_close(out[b:b + 1], reference(a["query"][b:b + 1], keys, values, causal=True)[0])
