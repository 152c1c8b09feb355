"""rollout.generate: greedy equals transformers' generate, the sampled distribution is right,
seeds reproduce, chunking and batch composition change nothing, FSDP ranks do not hang."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

import model as M
import rollout
from tests.tiny import random_checkpoint, seven_b_attention

VOCAB = 97


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    random_checkpoint(path, vocab_size=VOCAB, hidden_size=64, layers=2, heads=4, kv_heads=2)
    return path


def random_prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def recompute_greedy(model, prompt, max_new_tokens, eos):
    """Greedy decoding the slow way: a full forward over the whole sequence for every token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            if seq[-1] in eos:
                break
    return seq[len(prompt):]


def test_greedy_equals_transformers_generate(ckpt):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    ours = M.load_model(ckpt)
    prompts = random_prompts([5, 12, 1, 8, 3, 20])

    def hf_greedy(prompt, eos):
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=24, eos_token_id=eos, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    # Pick as EOS a token that greedy decoding emits mid-way through some response, so that
    # rows stop at different steps (and some never stop).
    free_run = [hf_greedy(p, eos=None) for p in prompts]
    eos = free_run[0][5]
    expected = [hf_greedy(p, eos) for p in prompts]
    got = rollout.generate(ours, prompts, max_new_tokens=24, eos_token_id=eos, temperature=0)
    assert got == expected
    assert min(len(r) for r in got) < 24 and max(len(r) for r in got) == 24
    assert all(r[-1] == eos for r in got if len(r) < 24)


def test_cached_decode_equals_full_recompute(ckpt):
    ours = M.load_model(ckpt)
    prompts = random_prompts([7, 2, 15, 4], seed=1)
    eos = [11, 42]
    got = rollout.generate(ours, prompts, max_new_tokens=20, eos_token_id=eos, temperature=0)
    assert got == [recompute_greedy(ours, p, 20, eos) for p in prompts]


def test_sampler_through_the_flash_call_sites_at_7b_geometry(flash_standin_backend):
    """The whole sampler (prefill in several forwards, decode, the batch shrinking as rows stop)
    through flash-attn's call sites (the strict stand-in), in bf16 at Qwen2.5-7B's attention
    geometry: the same greedy tokens as the SDPA path, and the chunked prefill changes nothing."""
    _, net = seven_b_attention()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (5, 12, 1, 8, 3, 9)]
    eos = list(range(0, 128, 5))  # a fifth of the vocabulary: rows stop at different steps
    runs = {}
    for backend in ("sdpa", "flash"):
        net.attn_backend = backend
        for prefill in (None, 16):
            runs[backend, prefill] = rollout.generate(net, prompts, 24, eos, temperature=0, max_prefill_tokens=prefill)
    assert len(set(map(len, runs["flash", None]))) > 2, "rows should stop at different steps"
    assert runs["flash", None] == runs["flash", 16] == runs["sdpa", None] == runs["sdpa", 16]


def test_batch_composition_and_chunking_do_not_change_greedy_rows(ckpt):
    ours = M.load_model(ckpt)
    prompts = random_prompts([9, 3, 14, 6, 1, 11, 5], seed=2)
    together = rollout.generate(ours, prompts, 16, eos_token_id=7, temperature=0)
    alone = [rollout.generate(ours, [p], 16, eos_token_id=7, temperature=0)[0] for p in prompts]
    chunked = rollout.generate(ours, prompts, 16, eos_token_id=7, temperature=0, max_batch_tokens=64)
    assert together == alone == chunked
    with pytest.raises(ValueError, match="cannot hold even one row"):
        rollout.generate(ours, prompts, 16, eos_token_id=7, max_batch_tokens=20)


def test_seed_reproduces_and_progress_counts_every_prompt(ckpt):
    ours = M.load_model(ckpt)
    prompts = random_prompts([4, 8, 2, 6] * 4, seed=3)

    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    bar = Counter()
    a = rollout.generate(ours, prompts, 12, eos_token_id=[5, 6], seed=7, progress=bar)
    b = rollout.generate(ours, prompts, 12, eos_token_id=[5, 6], seed=7)
    c = rollout.generate(ours, prompts, 12, eos_token_id=[5, 6], seed=8)
    assert a == b and a != c
    assert bar.n == len(prompts)


def wilson_hilferty_chi2_quantile(dof, z):
    """Approximate chi-square quantile for the standard-normal quantile z (accurate for dof > 10)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi_square(counts, probs, n):
    """Pearson's statistic over bins with expected count >= 5 (the rest pooled); returns (stat, dof)."""
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def test_first_token_frequencies_match_softmax(ckpt):
    ours = M.load_model(ckpt)
    # Scale the head so the distribution is far from uniform (a sharper test).
    with torch.no_grad():
        ours.lm_head.weight.mul_(4)
    prompt, n, temperature, real_vocab = random_prompts([6], seed=4)[0], 20000, 0.7, 90
    with torch.no_grad():
        logits = ours(torch.tensor([prompt]))[0, -1]
    probs = (logits[:real_vocab] / temperature).softmax(-1)
    first = [r[0] for r in rollout.generate(ours, [prompt] * n, 1, eos_token_id=0, temperature=temperature,
                                            seed=0, vocab_size=real_vocab)]
    assert max(first) < real_vocab  # padded ids are never drawn
    counts = torch.bincount(torch.tensor(first), minlength=real_vocab).double()
    stat, dof = chi_square(counts, probs.double(), n)
    threshold = wilson_hilferty_chi2_quantile(dof, z=3.09)  # p = 0.001
    assert stat < threshold, (stat, threshold)
    # The same statistic rejects the untempered distribution: the test can tell them apart.
    wrong, _ = chi_square(counts, logits[:real_vocab].softmax(-1).double(), n)
    assert wrong > 10 * threshold


def test_top_k_and_top_p_stay_in_their_sets(ckpt):
    ours = M.load_model(ckpt)
    with torch.no_grad():
        ours.lm_head.weight.mul_(4)
    prompt = random_prompts([5], seed=5)[0]
    with torch.no_grad():
        probs = ours(torch.tensor([prompt]))[0, -1].softmax(-1)
    order = probs.argsort(descending=True).tolist()
    top_k_set = set(order[:5])
    mass_before = (probs[order].cumsum(0) - probs[order]).tolist()
    top_p_set = {tok for tok, m in zip(order, mass_before) if m < 0.6}

    by_k = {r[0] for r in rollout.generate(ours, [prompt] * 3000, 1, eos_token_id=0, top_k=5, seed=1)}
    by_p = {r[0] for r in rollout.generate(ours, [prompt] * 3000, 1, eos_token_id=0, top_p=0.6, seed=1)}
    assert by_k == top_k_set  # within the set, and every member drawn at least once
    assert by_p <= top_p_set and len(by_p) >= min(2, len(top_p_set))
    assert len(top_p_set) < len(order)


def test_bad_input(ckpt):
    ours = M.load_model(ckpt)
    assert rollout.generate(ours, [], 8, eos_token_id=1) == []
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        rollout.generate(ours, [[1, 2], []], 8, eos_token_id=1)
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        rollout.generate(ours, [[1] * 250], 8, eos_token_id=1)
    with pytest.raises(ValueError, match="max_new_tokens must be positive"):
        rollout.generate(ours, [[1, 2]], 0, eos_token_id=1)


PER_RANK = {0: [], 1: [9, 2, 14]}, {0: [3, 8, 1, 12, 5], 1: [6]}


def _fsdp_worker(rank, init_file, ckpt, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = M.fsdp_wrap(M.load_model(ckpt), init_device_mesh("cpu", (2,)), mixed_precision=True)  # bf16, as on CUDA
    results = []
    for case, lengths in enumerate(PER_RANK):  # uneven prompt counts and lengths per rank
        prompts = random_prompts(lengths[rank], seed=10 * case + rank)
        results.append(rollout.generate(model, prompts, 12, eos_token_id=[3, 4], temperature=0))
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_fsdp_ranks_with_uneven_work_match_one_process(ckpt, tmp_path):
    mp.spawn(_fsdp_worker, args=(str(tmp_path / "init"), str(ckpt), str(tmp_path)), nprocs=2, join=True)
    single = M.load_model(ckpt, dtype=torch.bfloat16)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for case, lengths in enumerate(PER_RANK):
            prompts = random_prompts(lengths[rank], seed=10 * case + rank)
            assert got[case] == rollout.generate(single, prompts, 12, eos_token_id=[3, 4], temperature=0)
