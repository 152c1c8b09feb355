"""rollout.py: sample K responses per prompt with the policy (PRIME Alg. 1 line 4).

Sampling is the most expensive phase of a PRIME step (281.7 of 680.3 s in the paper's timing,
docs/notes.md §6). The official code used vLLM; this is a small KV-cached batched sampler of our
own, written against model.py:

  1. prefill: the prompts in packed forwards (no padding; a few prompts at a time when
     max_prefill_tokens bounds the activations), which fill a preallocated KVCache and yield
     each prompt's next-token logits;
  2. decode: one forward per step on one new token per still-active row; each row attends over
     its own cached keys, at its own positions (ragged prompts need no left padding);
  3. a row stops at an EOS id or after max_new_tokens; every few steps (one host sync) the
     finished rows are dropped from the batch, so the work shrinks as rows finish.

Sampling follows vLLM's defaults as the recipe used them (temperature 1.0, top_p 1, top_k off,
docs/notes.md §6), on fp32 logits, with a seeded generator so that a seed reproduces a run.
"""

import torch

from model import KVCache, gathered_params

CHECK_EVERY = 8  # decode steps between host syncs that look for finished rows


def generate(model, prompts, max_new_tokens, eos_token_id, temperature=1.0, top_p=1.0, top_k=0,
             seed=None, *, vocab_size=None, max_batch_tokens=None, max_prefill_tokens=None, progress=None):
    """Sample a response for each prompt.

    model: model.Qwen2ForCausalLM (plain or FSDP2-sharded; under FSDP every rank must call
        generate, a rank without prompts too, because the weights are gathered once at the start).
    prompts: list of prompts, each a non-empty list of token ids.
    eos_token_id: an id or a list of ids that end a response (e.g. <|im_end|> and <|endoftext|>).
    temperature: 0 means greedy. top_p: nucleus mass (1 = off). top_k: 0 = off.
    seed: seeds this call's generator; None draws from torch's global RNG.
    vocab_size: the tokenizer's real vocabulary. Ids at or above it are never sampled (Qwen pads
        its embedding matrix past the tokenizer). Default: the model's vocab_size.
    max_batch_tokens: a memory bound. Prompts are sampled in chunks whose cache holds at most this
        many token slots (rows x (longest prompt + max_new_tokens)). Default: one chunk.
    max_prefill_tokens: the other memory bound. A chunk's prompts are prefilled in packed forwards
        of at most this many tokens (a longer prompt goes alone). Default: one forward.
    progress: an optional tqdm-like bar; it is advanced by the number of prompts finished.

    Returns a list with, for each prompt, its response ids: the sampled tokens up to and including
    the first EOS, or max_new_tokens tokens when no EOS came.
    """
    config = model.config
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: the first token needs a prompt position to come from")
        if len(prompt) + max_new_tokens > config.max_position_embeddings:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} it "
                             f"exceeds the model's {config.max_position_embeddings} positions")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"bad sampling settings: temperature={temperature}, top_p={top_p}, top_k={top_k}")
    device = next(model.parameters()).device
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    generator = torch.Generator(device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    sampler = dict(temperature=temperature, top_p=top_p, top_k=top_k, generator=generator,
                   vocab_size=vocab_size or config.vocab_size)

    # Longest prompts first, so a chunk's cache (sized by its longest prompt) wastes little.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    responses = [None] * len(prompts)
    # inference_mode rather than no_grad: no autograd bookkeeping (version counters, view
    # tracking) on any op. A decode step is hundreds of small ops, and this bookkeeping is 5%
    # (64 rows) to 10% (8 rows) of the CPU bench's sampling time. Nothing here needs a gradient.
    with gathered_params(model), torch.inference_mode():
        start = 0
        while start < len(order):
            rows = order[start:start + _chunk_rows(prompts, order, start, max_new_tokens, max_batch_tokens)]
            chunk = _generate_chunk(model, [prompts[i] for i in rows], max_new_tokens, eos, sampler,
                                    max_prefill_tokens, progress)
            for i, response in zip(rows, chunk):
                responses[i] = response
            start += len(rows)
    return responses


def truncated(response, max_new_tokens, eos):
    """Did sampling cut `response` off at max_new_tokens, before any stop id (in `eos`)?"""
    return len(response) == max_new_tokens and response[-1] not in eos


def _chunk_rows(prompts, order, start, max_new_tokens, max_batch_tokens):
    """How many prompts (longest first) from `start` fit in max_batch_tokens cache slots."""
    if max_batch_tokens is None:
        return len(order) - start
    slots_per_row = len(prompts[order[start]]) + max_new_tokens  # this chunk's longest prompt
    if slots_per_row > max_batch_tokens:
        raise ValueError(f"max_batch_tokens={max_batch_tokens} cannot hold even one row of "
                         f"{slots_per_row} tokens (prompt + max_new_tokens)")
    return min(len(order) - start, max_batch_tokens // slots_per_row)


def _generate_chunk(model, prompts, max_new_tokens, eos, sampler, max_prefill_tokens, progress):
    device = eos.device
    B = len(prompts)
    cache = KVCache(rows=B, max_len=max(len(p) for p in prompts) + max_new_tokens)
    logits = torch.cat([prefill(model, group, cache, device)
                        for group in _prefill_groups(prompts, max_prefill_tokens)])  # [B, V]

    # sampled tokens; a row's response ends at its first EOS, found after the loop
    out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)  # which rows of `out` the cache rows hold
    done = torch.zeros(B, dtype=torch.bool, device=device)  # per cache row
    for step in range(max_new_tokens):
        token = sample(logits, **sampler)  # [B_active]
        out[active, step] = token
        done |= torch.isin(token, eos)
        if step == max_new_tokens - 1:
            break
        if (step + 1) % CHECK_EVERY == 0:  # the only host sync of the loop
            alive = (~done).nonzero().squeeze(-1)
            if len(alive) == 0:
                break
            if len(alive) < len(done):  # shrink the batch: finished rows leave the cache
                if progress is not None:
                    progress.update(len(done) - len(alive))
                cache.keep(alive)
                active, token, done = active[alive], token[alive], done[alive]
        logits = model(token, cache=cache)  # decode: [B_active, V]
    if progress is not None:
        progress.update(len(done))
    # A finished row keeps sampling until the next check drops it (and `out` keeps zeros after
    # that), so only the first EOS counts.
    is_eos = torch.isin(out, eos)
    n_tokens = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, max_new_tokens).tolist()
    return [row[:n].tolist() for row, n in zip(out.cpu(), n_tokens)]


def _prefill_groups(prompts, max_tokens):
    """Consecutive runs of prompts of at most max_tokens tokens together (None: all at once)."""
    groups, current, tokens = [], [], 0
    for prompt in prompts:
        if current and max_tokens is not None and tokens + len(prompt) > max_tokens:
            groups.append(current)
            current, tokens = [], 0
        current.append(prompt)
        tokens += len(prompt)
    return groups + [current]


def prefill(model, prompts, cache, device):
    """One packed forward over `prompts` that writes them into the cache's next rows; returns
    each prompt's next-token logits [S, V] (fp32). Lengths are known here, on the host, so the
    model's layout needs no device sync."""
    lengths = [len(p) for p in prompts]
    cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    ids = torch.tensor([t for p in prompts for t in p], device=device)
    return model(ids, cu_seqlens.to(device), max_seqlen=max(lengths), cache=cache)


def sample(logits, temperature, top_p, top_k, generator, vocab_size):
    """Draw one token per row from logits [B, V] (fp32). Returns [B] long.

    Order as in vLLM/HF: mask ids past the real vocabulary, scale by 1/temperature, keep the top_k
    most likely, keep the smallest set of most likely tokens whose mass reaches top_p, sample.
    """
    logits = logits.float()
    if vocab_size < logits.shape[-1]:
        logits[:, vocab_size:] = float("-inf")
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth_best = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        sorted_logits, index = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, index, sorted_logits)
    # Inverse-CDF sampling: one uniform number per row, located in the row's cumulative
    # distribution. x = (1 - u) * total lies in (0, total], and the first index whose cumulative
    # mass reaches x always has positive probability, so masked tokens are never drawn. It needs
    # B random numbers (not B x V, as the Gumbel-max trick does) and never syncs with the host.
    cdf = logits.softmax(-1).cumsum(-1)  # [B, V]
    u = torch.rand(len(cdf), 1, generator=generator, device=cdf.device)
    return torch.searchsorted(cdf, (1 - u) * cdf[:, -1:]).squeeze(-1)
