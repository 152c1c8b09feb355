"""Sampling throughput: rollout.generate against transformers' `generate`, same weights, same
machine, same run. A tiny random Qwen2 (4 layers, hidden 256, vocab 512), ragged prompts of
8-63 tokens, T=1, torch on 2 threads, several runs each. Two settings:

  * fixed length: no EOS, every response has exactly max_new_tokens tokens. Both samplers do
    the same matmuls, so this measures per-token overhead (attention, cache, Python).
  * RL-like lengths: 10 of the 512 ids end a response, so lengths are long-tailed (geometric,
    mean about 50, some reach the cap), as RL responses are. transformers keeps decoding
    finished rows until the last one ends; ours drops them from the batch.

tokens/s counts the response tokens each sampler actually returned. The two samplers take
turns, run by run, and each reports its median run: on a shared machine a busy spell then
slows both alike, or is one run that the median ignores.

    python benchmarks/bench_rollout.py [--prompts 64] [--new_tokens 96] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's files

import model as M
import rollout


def throughputs(fns, repeats):
    """Median response tokens per second of each fn over `repeats` runs, the fns alternating."""
    rates = [[] for _ in fns]
    for _ in range(repeats):
        for fn, r in zip(fns, rates):
            start = time.perf_counter()
            tokens = fn()
            r.append(tokens / (time.perf_counter() - start))
    return [statistics.median(r) for r in rates]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    folder = tempfile.mkdtemp()
    Qwen2ForCausalLM(config).save_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = M.load_model(folder)

    def prompts_of(n):
        g = torch.Generator().manual_seed(n)
        return [torch.randint(0, 512, (int(torch.randint(8, 64, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n)]

    def hf_generate(prompts, eos):  # transformers wants ragged prompts left-padded with a mask
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              max_new_tokens=args.new_tokens, min_new_tokens=0 if eos else args.new_tokens,
                              eos_token_id=eos, pad_token_id=0)
        responses = out[:, width:]
        if eos is None:
            return responses.numel()
        # count the tokens up to and including each row's first EOS (padding follows it)
        is_eos = torch.isin(responses, torch.tensor(eos))
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])
        return int(first.sum())

    def ours_generate(prompts, eos):
        out = rollout.generate(ours, prompts, args.new_tokens, eos_token_id=eos or -1, temperature=1.0)
        return sum(len(r) for r in out)

    ours_generate(prompts_of(4), None), hf_generate(prompts_of(4), None)  # warm-up
    print(f"ragged prompts (8-63 tokens), up to {args.new_tokens} new tokens, T=1, {args.threads} threads, "
          f"median of {args.repeats} runs each")
    for name, eos in (("fixed length", None), ("RL-like lengths", list(range(100, 110)))):
        print(f"\n{name}\n| prompts | ours tok/s | transformers tok/s | ratio |\n|---|---|---|---|")
        for batch in sorted({8, 32, args.prompts, 128}):
            prompts = prompts_of(batch)
            ours_tps, hf_tps = throughputs([lambda: ours_generate(prompts, eos), lambda: hf_generate(prompts, eos)],
                                           args.repeats)
            print(f"| {batch} | {ours_tps:.0f} | {hf_tps:.0f} | {ours_tps / hf_tps:.2f}x |")


if __name__ == "__main__":
    main()
