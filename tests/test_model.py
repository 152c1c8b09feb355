"""model.py against transformers' Qwen2 (the ground truth we did not write), and against itself
across its code paths: packed vs per-sequence, flash-attn call sites vs SDPA, cached decode vs
full recompute, chunked vs naive log-probs; the attention backend rule."""

import json
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import model as M
from support import gpu_check
from tests.tiny import random_checkpoint, seven_b_attention


def packed(seqs):
    """A list of 1-D token tensors -> (ids [N], cu_seqlens [S+1] int32)."""
    lengths = torch.tensor([len(s) for s in seqs])
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    return torch.cat(seqs), cu


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # query heads per KV head: 1, 2, 4
def test_logits_match_transformers_and_save_roundtrip(tmp_path, tie, kv_heads):
    hf = random_checkpoint(tmp_path / "hf", tie=tie, heads=4, kv_heads=kv_heads)
    ours = M.load_model(tmp_path / "hf")
    ids = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == (3, 17, 97)
    assert (got - expected).abs().max() < 1e-4

    M.save_model(ours, tmp_path / "ours")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (reloaded(ids).logits - expected).abs().max() < 1e-4
    assert reloaded.config.tie_word_embeddings == tie


def test_sharded_save_loads_in_transformers_and_ours(tmp_path):
    hf = random_checkpoint(tmp_path / "hf", layers=3)
    ours = M.load_model(tmp_path / "hf")
    M.save_model(ours, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        expected = hf(ids).logits
        assert (AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")(ids).logits - expected).abs().max() < 1e-4
        assert (M.load_model(tmp_path / "sharded")(ids) - expected).abs().max() < 1e-4


def test_load_in_bf16(tmp_path):
    random_checkpoint(tmp_path / "hf")
    ours = M.load_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    assert not any(p.is_meta for p in ours.parameters())


def test_clear_errors_for_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        M.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        M.load_model(tmp_path / "empty")

    random_checkpoint(tmp_path / "llama")
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "llama" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'llama'"):
        M.load_model(tmp_path / "llama")

    random_checkpoint(tmp_path / "hf")
    M.save_model(M.load_model(tmp_path / "hf"), tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / "sharded" / shard)
    with pytest.raises(FileNotFoundError, match=shard):
        M.load_model(tmp_path / "sharded")


def test_packed_forward_equals_per_sequence(tmp_path):
    random_checkpoint(tmp_path / "hf")
    ours = M.load_model(tmp_path / "hf")
    seqs = [torch.randint(0, 97, (n,)) for n in (5, 1, 12, 7)]
    ids, cu = packed(seqs)
    with torch.no_grad():
        logits = ours(ids, cu)
        for s, seq in enumerate(seqs):
            alone = ours(seq[None])[0]
            assert (logits[cu[s]:cu[s + 1]] - alone).abs().max() < 1e-5


def test_cached_decode_equals_full_recompute(tmp_path):
    random_checkpoint(tmp_path / "hf", kv_heads=1)
    ours = M.load_model(tmp_path / "hf")
    prompts = [torch.randint(0, 97, (n,)) for n in (4, 9, 1)]
    steps = 5
    new = torch.randint(0, 97, (3, steps))  # the tokens "sampled" at each step, fixed here
    ids, cu = packed(prompts)
    cache = M.KVCache(rows=3, max_len=9 + steps)
    with torch.no_grad():
        step_logits = [ours(ids, cu, cache=cache)]
        for t in range(steps):
            if t == 3:  # row 1 "finishes": rows 0 and 2 go on in a smaller batch
                cache.keep(torch.tensor([0, 2]))
            rows = [0, 1, 2] if t < 3 else [0, 2]
            step_logits.append(ours(new[rows, t], cache=cache))
        for b, prompt in enumerate(prompts):
            full = ours(torch.cat([prompt, new[b]])[None])[0]  # [len + steps, V]
            for t, logits in enumerate(step_logits):
                if b == 1 and t > 3:
                    continue
                row = b if t <= 3 else [0, 2].index(b)
                assert (logits[row] - full[len(prompt) - 1 + t]).abs().max() < 1e-5, (b, t)


def naive_logprobs(logits, targets, temperature):
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def test_chunked_logprobs_equal_naive_values_and_gradients(monkeypatch):
    # 200 logits at a time: forward chunks of 4 tokens, backward slices of 10 vocabulary entries
    monkeypatch.setattr(M, "LOGPROB_CHUNK_ELEMENTS", 200)
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    targets[[0, 5]] = torch.tensor([0, 49])  # the first and last vocabulary entries too
    upstream = torch.randn(23)

    logp, entropy = M.chunked_logprobs(hidden, weight, targets, temperature=0.7)
    (logp * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    ref_logp, ref_entropy = naive_logprobs(hidden @ weight.T, targets, 0.7)
    (ref_logp * upstream).sum().backward()
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(entropy, ref_entropy, atol=1e-5)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5)
    assert torch.allclose(grads[1], weight.grad, atol=1e-5)


def test_score_mode_matches_logits(tmp_path):
    random_checkpoint(tmp_path / "hf")
    ours = M.load_model(tmp_path / "hf")
    seqs = [torch.randint(0, 97, (n,)) for n in (6, 4)]
    ids, cu = packed(seqs)
    scored = torch.tensor([2, 3, 4, 7, 8])  # the last 3 tokens of sequence 0, the last 2 of sequence 1
    targets = ids[scored + 1]
    with torch.no_grad():
        logp, entropy = ours(ids, cu, max_seqlen=6, scored=scored, targets=targets, temperature=1.3)
        ref_logp, ref_entropy = naive_logprobs(ours(ids, cu)[scored], targets, 1.3)
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(entropy, ref_entropy, atol=1e-5)


def test_activation_checkpointing_gives_same_gradients(tmp_path):
    random_checkpoint(tmp_path / "hf")
    ids, cu = packed([torch.randint(0, 97, (n,)) for n in (7, 5)])
    scored = torch.tensor([0, 1, 2, 3, 4, 5, 7, 8, 9, 10])  # every token but each sequence's last
    grads = []
    for ac in (False, True):
        ours = M.load_model(tmp_path / "hf")
        ours.activation_checkpointing = ac
        logp, _ = ours(ids, cu, scored=scored, targets=ids[scored + 1])
        logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_sampling_path_fused_qkv_equals_separate_projections(tmp_path):
    """With a cache (sampling), each layer projects q, k and v with one matmul on weights
    concatenated at prefill; the prompts' next-token logits equal the plain forward's, and the
    parameters and state dict are untouched."""
    random_checkpoint(tmp_path / "hf", layers=3, kv_heads=1)
    ours = M.load_model(tmp_path / "hf")
    names = list(ours.state_dict())
    ids, cu = packed([torch.randint(0, 97, (n,)) for n in (6, 1, 11)])
    cache = M.KVCache(rows=3, max_len=16)
    with torch.no_grad():
        fused = ours(ids, cu, cache=cache)  # [3, V]
        plain = ours(ids, cu)[cu[1:].long() - 1]
    assert (fused - plain).abs().max() < 1e-6
    assert len(cache.qkv) == 3 and cache.qkv[0][0].shape == ((4 + 2 * 1) * 16, 64)
    assert list(ours.state_dict()) == names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_rotate_half_bit_for_bit(dtype):
    """apply_rotary's roll-and-signed-sin form against Hugging Face's rotate_half formula."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 16).to(dtype)
    positions = torch.tensor([0, 1, 2, 5, 9, 100, 3000])
    cos, sin = M.rotary_cos_sin(positions, 16, 10000.0, dtype)  # [7, 1, 16] each
    x1, x2 = x.chunk(2, dim=-1)
    plain_sin = torch.cat([sin[..., 8:], sin[..., 8:]], dim=-1)  # sin a, unsigned
    expected = x * cos + torch.cat([-x2, x1], dim=-1) * plain_sin
    assert torch.equal(M.apply_rotary(x, cos, sin), expected)
    assert torch.equal(sin[..., :8], -sin[..., 8:])


# ----------------------------------------------------------------------------------------------
# The backend rule, and the flash call sites (flash-attn's and torch's varlen_attn) at
# Qwen2.5-7B's attention geometry, in bf16 (the strict stand-ins take only what the real
# functions take: fp16/bf16, int32 lengths, Python-int maximum lengths, ...)
# ----------------------------------------------------------------------------------------------

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize("flash_attn, torch_varlen, device, dtype, capability, head, expected", [
    (True, True, "cuda", BF16, (8, 0), 128, "flash"),     # A100 with flash-attn installed
    (False, True, "cuda", FP16, (9, 0), 128, "varlen"),   # H100, no flash-attn, torch >= 2.12
    (False, True, "cuda", BF16, (9, 0), 100, "sdpa"),     # torch's kernel takes head dims % 8 == 0 only
    (False, True, "cuda", BF16, (9, 0), 264, "sdpa"),     # ... and at most 256
    (True, False, "cuda", BF16, (9, 0), 100, "flash"),    # flash-attn pads the head dim itself
    (False, False, "cuda", BF16, (9, 0), 128, "sdpa"),    # neither flash path: SDPA, with the warning
    (True, True, "cuda", BF16, (7, 5), 128, "sdpa"),      # T4: FlashAttention-2 needs Ampere
    (True, True, "cuda", FP32, (8, 0), 128, "sdpa"),      # FlashAttention-2 takes fp16/bf16 only
    (True, True, "cpu", BF16, None, 128, "sdpa"),         # the CPU
])
def test_the_backend_rule(monkeypatch, flash_attn, torch_varlen, device, dtype, capability, head, expected):
    """model.attention_backend: flash-attn where installed, else torch's varlen_attn where the
    installed torch has it, else SDPA; both flash paths only where FlashAttention-2 runs. The one
    warning comes only when a GPU that could run flash attention falls back to SDPA, once."""
    from tests import flash_standin
    monkeypatch.setattr(M, "flash_attn_varlen_func", flash_standin.flash_attn_varlen_func if flash_attn else None)
    monkeypatch.setattr(M, "varlen_attn", flash_standin.varlen_attn if torch_varlen else None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    M._warn_sdpa_on_gpu.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = [M.attention_backend(torch.device(device), dtype, head) for _ in range(3)]
    assert chosen == [expected] * 3
    warned = [str(w.message) for w in caught]
    if expected == "sdpa" and capability == (9, 0):
        assert len(warned) == 1 and "pads every packed micro-batch" in warned[0] and "flash-attn" in warned[0], warned
    else:
        assert warned == []


def test_the_model_asks_the_rule_unless_told(monkeypatch):
    """A model's forward uses attention_backend's answer for its activations (here: the CPU's
    SDPA), or the backend it was given."""
    net = M.Qwen2ForCausalLM(gpu_check.qwen2_config(gpu_check.TINY))
    asked = []
    monkeypatch.setattr(M, "attention_backend",
                        lambda device, dtype, head: asked.append((device, dtype, head)) or "sdpa")
    x = torch.zeros(3, 128)
    assert net._backend(x) == "sdpa" and asked == [(x.device, torch.float32, 32)]
    net.attn_backend = "varlen"
    assert net._backend(x) == "varlen" and len(asked) == 1


def test_installed_torch_varlen_attn_is_taken_in_the_form_called():
    """model.varlen_attn is torch's own where the installed torch has the 2.12+ form (enable_gqa,
    seqused_k), and None on older ones."""
    import inspect
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        assert M.varlen_attn is None
        return
    has_form = {"enable_gqa", "seqused_k"} <= set(inspect.signature(varlen_attn).parameters)
    assert M.varlen_attn is (varlen_attn if has_form else None)


@pytest.mark.parametrize("backend", ["flash", "varlen"])
def test_flash_call_sites_at_7b_geometry_forward_and_backward(flash_standin_backend, backend):
    """Packed forward and backward (activation checkpointing on) through flash_attn_varlen_func
    or torch's varlen_attn: in bf16 as close to the fp32 network as SDPA's bf16 path is,
    gradients included (the comparisons of gpu_check.py's flash check, at small lengths)."""
    reference, net = seven_b_attention()
    errors = gpu_check.flash_packed_errors(reference, net, torch.device("cpu"), [6, 3, 10, 1],
                                           torch.Generator().manual_seed(0), backends=("sdpa", backend))
    assert set(errors[backend]) == {"logits", "log-probs", "q_proj gradient"}, errors
    for what, flash in errors[backend].items():
        assert gpu_check.as_accurate_as_sdpa(flash, errors["sdpa"][what]), (what, errors)


@pytest.mark.parametrize("backend", ["sdpa", "flash", "varlen"])
def test_cached_decode_at_7b_geometry(flash_standin_backend, backend):
    """Prefill in two forwards into one cache, decode, drop a finished row (the cache compacts in
    place): each step's logits match a full fp32 recompute to bf16 accuracy (the comparisons of
    gpu_check.py's flash check, at small lengths)."""
    reference, net = seven_b_attention()
    result = gpu_check.flash_decode_errors(reference, net, torch.device("cpu"), [4, 9, 1, 6], 5, [0, 2, 3],
                                           torch.Generator().manual_seed(0), backends=(backend,))[backend]
    assert result["prefilled"] == (4, [4, 9, 1, 6]), result
    assert result["compacted in place"], result
    assert result["worst"] < 0.03, result
