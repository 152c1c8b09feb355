"""Throughput of verify.score_batch: responses per second for 256 math and 64 code samples;
then the cost of one code test in each sandbox layout.

    python benchmarks/bench_verify.py [--workers N] [--tests N]

Math responses are short model-style solutions ending in a boxed answer; half have plain
number answers (decided without sympy), half need Math-Verify (radicals, pi, fractions,
intervals, matrices). Code responses are stdin/stdout programs with 5 tests each, half
correct, scored three times: in the bwrap jail, without it, and in the jail again (the
machine's load drifts; compare neighbouring rows). The first (cold) math batch includes
starting the Math-Verify workers; the second (warm) batch is what a training step sees
after its first.

Per test: one stdin/stdout test at a time, the three layouts taking turns (so the load's drift
falls on all alike), median and quartiles in ms: the jail as it is (the test's directory a tmpfs
capped at sandbox.DISK_LIMIT), the jail with the host's directory bound in instead (no cap: the
layout before the cap), and no jail.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's files

import verify
from support import sandbox


SYMBOLIC = [  # (response answer, ground truth, correct?)
    ("2\\sqrt{2}", "\\sqrt{8}", True), ("\\frac{\\pi}{3}", "\\frac{2\\pi}{6}", True),
    ("(x+1)^2", "x^2+2x+1", True), ("(-\\infty, 3]", "x \\le 3", True),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("6.28", "2\\pi", False), ("\\sqrt{3}", "\\sqrt{2}", False), ("\\{1,2\\}", "\\{1,2,3\\}", False),
]


def math_samples(n: int, rng: random.Random) -> list[dict]:
    samples = []
    for i in range(n):
        if i % 2 == 0:
            gold = rng.randint(-10**6, 10**6)
            answer = gold if rng.random() < 0.5 else gold + rng.randint(1, 100)
            answer, gold = f"{answer:,}", str(gold)
        else:
            answer, gold, _ = SYMBOLIC[i // 2 % len(SYMBOLIC)]
        response = ("Let me think step by step.\nStep 1: set up the problem.\n" * 5
                    + f"Therefore the final answer is $\\boxed{{{answer}}}$.")
        samples.append({"id": i, "ability": "math", "response": response, "ground_truth": gold})
    return samples


def code_samples(n: int, rng: random.Random) -> list[dict]:
    samples = []
    for i in range(n):
        numbers = [[rng.randint(1, 1000) for _ in range(20)] for _ in range(5)]
        tests = {"inputs": [" ".join(map(str, xs)) + "\n" for xs in numbers],
                 "outputs": [f"{sum(xs)}\n" for xs in numbers]}
        body = "sum(xs)" if i % 2 == 0 else "max(xs)"
        response = ("Here is my solution.\n```python\nxs = list(map(int, input().split()))\n"
                    f"print({body})\n```\n")
        samples.append({"id": i, "ability": "code", "response": response,
                        "ground_truth": json.dumps(tests)})
    return samples


def timed(samples: list[dict], workers: int) -> tuple[float, float]:
    start = time.perf_counter()
    scores = verify.score_batch(samples, workers=workers)
    seconds = time.perf_counter() - start
    return seconds, sum(scores) / len(scores)


CAPPED_JAIL_ARGV = sandbox._jail_argv


def uncapped_jail_argv(workdir: str, info_fd: int | None = None) -> list[str]:
    """The jail's command line with the host's directory bound in read-write instead of the
    capped tmpfs: the layout before the cap, for comparison."""
    argv = CAPPED_JAIL_ARGV(workdir, info_fd)
    start = argv.index("--size")  # --size N --tmpfs DIR --ro-bind SOLUTION SOLUTION
    return argv[:start] + ["--bind", workdir, workdir] + argv[start + 7:]


def per_test_ms(tests: int) -> None:
    """Milliseconds per stdin/stdout test in each layout, taking turns."""
    layouts = {f"jail, {sandbox.DISK_LIMIT >> 20} MiB tmpfs": (True, CAPPED_JAIL_ARGV),
               "jail, host dir bound (no cap)": (True, uncapped_jail_argv), "no jail": (False, CAPPED_JAIL_ARGV)}
    times = {name: [] for name in layouts}
    for _ in range(tests):
        for name, (jailed, argv) in layouts.items():
            sandbox._jail_state, sandbox._jail_argv = jailed, argv
            start = time.perf_counter()
            status, output = sandbox.run("print(2 * int(input()))", "stdio", None, b"21\n", 5.0)
            times[name].append(1000 * (time.perf_counter() - start))
            assert (status, output) == ("ok", b"42\n"), (name, status, output)
    sandbox._jail_argv = CAPPED_JAIL_ARGV
    for name, ms in times.items():
        q1, median, q3 = statistics.quantiles(ms, n=4)
        print(f"per test, {name:30s} median {median:6.1f} ms  (quartiles {q1:.1f}-{q3:.1f}, {len(ms)} tests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=sandbox.usable_cpus())
    parser.add_argument("--tests", type=int, default=40, help="tests per layout in the per-test timing")
    args = parser.parse_args()
    rng = random.Random(0)
    maths, codes = math_samples(256, rng), code_samples(64, rng)
    jail = sandbox.jail_works()
    print(f"{os.cpu_count()} CPUs, workers={args.workers}, bwrap jail {'works' if jail else 'unavailable'}")
    rows = [("math, cold", maths, jail), ("math, warm", maths, jail), ("code, jail", codes, True),
            ("code, no jail", codes, False), ("code, jail", codes, True)]
    for label, samples, jailed in rows:
        if jailed and not jail:
            continue
        sandbox._jail_state = jailed  # the probe's verdict, or the unjailed fallback for this row
        seconds, mean = timed(samples, args.workers)
        print(f"{label:13s} {len(samples):4d} samples  {seconds:6.2f} s  "
              f"{len(samples) / seconds:7.1f} responses/s  (mean reward {mean:.2f})")
    if jail:
        print(f"disk cap per jailed test: {sandbox.DISK_LIMIT >> 20} MiB (sandbox.DISK_LIMIT)")
        per_test_ms(args.tests)



if __name__ == "__main__":
    main()
