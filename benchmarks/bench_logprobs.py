"""Peak memory of token log-probs: model.chunked_logprobs against the naive
log_softmax(hidden @ W.T).gather(...), at Qwen2.5-7B's head size (vocab 152064, hidden 3584).

Each measurement runs in a fresh subprocess. It allocates the inputs, resets the kernel's
peak-RSS counter (/proc/self/clear_refs), runs the computation, and reports VmHWM minus the RSS
before: the extra memory the computation needed at its peak. Linux only.

    python benchmarks/bench_logprobs.py [--tokens 4096] [--dtype bfloat16]
"""

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's files


VOCAB, HIDDEN = 152064, 3584


def rss_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def worker(method, tokens, dtype, backward):
    import model as M
    torch.manual_seed(0)
    hidden = (torch.randn(tokens, HIDDEN) * 0.05).to(dtype).requires_grad_(backward)
    weight = (torch.randn(VOCAB, HIDDEN) * 0.02).to(dtype).requires_grad_(backward)
    targets = torch.randint(0, VOCAB, (tokens,))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = rss_kib("VmRSS")
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if method == "naive":
            logp = F.log_softmax((hidden @ weight.T).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        else:
            logp, _ = M.chunked_logprobs(hidden, weight, targets)
        if backward:
            logp.sum().backward()
    seconds = time.perf_counter() - start
    print(f"{(rss_kib('VmHWM') - before) / 2**20:.3f} {seconds:.1f} {logp.sum().item():.6e}")


def measure(method, tokens, dtype, backward):
    out = subprocess.run([sys.executable, __file__, "--worker", method, "--tokens", str(tokens),
                          "--dtype", dtype] + (["--backward"] if backward else []),
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--worker", choices=["naive", "chunked"])
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.tokens, getattr(torch, args.dtype), args.backward)
        sys.exit()
    print(f"log-probs of {args.tokens} tokens, vocab {VOCAB}, hidden {HIDDEN}, {args.dtype}")
    print("| pass | naive peak GiB | chunked peak GiB | chunked / naive | naive s | chunked s |")
    print("|---|---|---|---|---|---|")
    for backward in (False, True):
        naive, t_naive, sum_naive = measure("naive", args.tokens, args.dtype, backward)
        ours, t_ours, sum_ours = measure("chunked", args.tokens, args.dtype, backward)
        assert abs(sum_naive - sum_ours) <= 1e-3 * abs(sum_naive), (sum_naive, sum_ours)
        name = "forward + backward" if backward else "forward (no grad)"
        print(f"| {name} | {naive:.2f} | {ours:.2f} | 1/{naive / ours:.1f} | {t_naive:.1f} | {t_ours:.1f} |")
