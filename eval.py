"""eval.py: benchmark pass@1, the numbers of the paper's Table 2.

    python eval.py --model CHECKPOINT [--data FILE ...]
    torchrun --nproc_per_node=N eval.py --model CHECKPOINT [--data FILE ...]

For each benchmark file: prompt every question the paper's way (the Eurus system prompt plus the
math or code suffix, docs/notes.md §6/§8), sample responses with rollout.py (greedy unless the
paper sampled), score each with verify.py, and report the mean score. With no --data, the toy
task's held-out problems are evaluated: those train.py evaluated in the run that wrote the
checkpoint (its config.json, in the folder above --model; toy/task.py), prompted and cut off as
train.py did.

Rank 0 prints a markdown table, with the paper's Eurus-2-7B-SFT and Eurus-2-7B-PRIME numbers
beside ours for the paper's seven benchmarks, and writes into --out (default <model>/eval, next
to the weights the numbers describe):
    results.json                 the table as JSON, with the settings used
    samples_<benchmark>.jsonl    one line per response: prompt, response, extracted answer or
                                 program, score (so the failures can be read)

`evaluate` is also what train.py calls for its held-out accuracy, so train.py's summary and this
table are one computation.

Read top to bottom: the paper's benchmarks (reference numbers and settings), evaluate(),
benchmark files -> Problems, the command line.
"""

import argparse
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
from model import load_model
from rollout import generate, truncated
from support import memory
from support.distributed import init_distributed
from toy import task as toy
from verify import code_correct, default_workers, extract_answer, extract_program, score_responses


# ==============================================================================================
# 1. The paper's seven benchmarks: reference numbers and eval settings (docs/notes.md §8).
# ==============================================================================================

@dataclass(frozen=True)
class PaperBenchmark:
    """One column of Table 2 and how the official eval scripts produced it."""
    title: str            # the paper's name for it
    pattern: str          # matched against a benchmark's name, lowercased, separators removed
    sft: float            # Eurus-2-7B-SFT, % (Table 2)
    prime: float          # Eurus-2-7B-PRIME, step 592, %
    max_new_tokens: int   # the eval script's max_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    n_samples: int = 1


# Settings ([PR] eval/, docs/notes.md §8): greedy with 4096 new tokens for AIME, AMC and the
# Qwen2.5-Math harness (Minerva, OlympiadBench); 8192 for MATH-500 and LeetCode. LiveCodeBench ran
# lcb_runner with its own defaults (eval/run.sh overrides none): 10 samples at T=0.2, top_p 0.95,
# 4096 tokens, pass@1 estimated as the mean over the 10; its score is on the v2 window
# (problems of 2023-05-01..2024-05-31), so give eval.py that window for a comparable number.
# The patterns: AIME means the 2024 problems (AI-MO's aimo-validation-aime file, which
# data.load_benchmark cuts to 2024, or a file named aime24/aime_2024), not "aime25"; AMC means
# AI-MO's 83-problem aimo-validation-amc, not the Qwen harness's 40-problem "amc23".
# SFT's MATH-500 is 65.1 in the README and Fig. 1 but 66.2 in Table 2; we quote the table.
PAPER_BENCHMARKS = [
    PaperBenchmark("AIME 2024", r"aime(2024|24)?$", 3.3, 26.7, 4096),
    PaperBenchmark("AMC", r"amc$", 30.1, 57.8, 4096),
    PaperBenchmark("MATH-500", r"math500", 66.2, 79.2, 8192),
    PaperBenchmark("Minerva Math", r"minerva", 32.7, 38.6, 4096),
    PaperBenchmark("OlympiadBench", r"olympiad", 29.8, 42.1, 4096),
    PaperBenchmark("LeetCode", r"leetcode", 21.7, 33.3, 8192),
    PaperBenchmark("LiveCodeBench (v2)", r"livecodebench|^lcb", 17.8, 28.6, 4096,
                   temperature=0.2, top_p=0.95, n_samples=10),
]
OTHER_MAX_NEW_TOKENS = 4096  # a benchmark the paper did not report: the math scripts' budget

# The toy's greedy decoding; its token limit is the run's max_response_tokens (toy.run_settings).
TOY_SETTINGS = {"temperature": 0.0, "top_p": 1.0, "n_samples": 1}


def paper_benchmark(name):
    """The PaperBenchmark a benchmark name stands for, or None: "MATH-500", "math_500" and
    "math500" all match MATH-500 (case and separators are ignored)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return next((b for b in PAPER_BENCHMARKS if re.search(b.pattern, key)), None)


def paper_settings(name):
    """The paper's sampling settings for a benchmark of this name (4096 greedy for the others)."""
    paper = paper_benchmark(name)
    if paper is None:
        return {"temperature": 0.0, "top_p": 1.0, "n_samples": 1, "max_new_tokens": OTHER_MAX_NEW_TOKENS}
    return {"temperature": paper.temperature, "top_p": paper.top_p, "n_samples": paper.n_samples,
            "max_new_tokens": paper.max_new_tokens}


# ==============================================================================================
# 2. evaluate(): sample, score, aggregate. Shared with train.py.
# ==============================================================================================

def evaluate(model, tokenizer, problems, max_new_tokens, temperature=0.0, n_samples=1, top_p=1.0,
             seed=0, max_batch_tokens=None, max_prefill_tokens=None, progress=True):
    """Sample `n_samples` responses per problem, score them, and return the averages.

    problems: the full list of `data.Problem`s, the same on every rank. Under torch.distributed
        each rank samples and scores a contiguous share and the records are gathered, so every
        rank must call evaluate and every rank gets the same result.
    temperature 0 is greedy (then n_samples=1 is all that makes sense). seed: the sampler's seed
        (rank r uses seed + r, so ranks draw different streams).
    max_batch_tokens, max_prefill_tokens: rollout.generate's memory bounds (None: one batch, one
        prefill forward).
    progress: show a tqdm bar on rank 0.

    A response scores 1 when it is right (math: the answer matches; code: every test passes), else 0.
    Returns {"accuracy": mean score over all responses (pass@1 for one greedy sample, avg@k for
    k samples, i.e. the estimate of pass@1 that LiveCodeBench reports), "n": number of problems,
    "n_samples", "mean_response_tokens" (EOS included), "truncation_rate" (share of responses
    that reached max_new_tokens without an EOS), "records": one dict per response, in problem
    order: {"id", "sample", "prompt", "response", "extracted", "ground_truth", "score",
    "response_tokens", "truncated"}}.
    """
    if not problems:
        raise ValueError("evaluate: no problems")
    if n_samples < 1:
        raise ValueError(f"evaluate: n_samples must be at least 1, got {n_samples}")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    share = problems[rank * len(problems) // world:(rank + 1) * len(problems) // world]
    # A problem's samples are adjacent rows of one generate call; the sampler's generator gives
    # each row its own draws. A rank whose share is empty still calls generate: under FSDP the
    # weights are gathered there collectively, by every rank.
    rows = [problem for problem in share for _ in range(n_samples)]
    eos = data.stop_token_ids(tokenizer)
    bar = tqdm(total=len(rows), unit="response", disable=rank != 0) if progress else None
    responses = generate(model, [p.prompt_ids for p in rows], max_new_tokens, eos,
                         temperature=temperature, top_p=top_p, seed=seed + rank,
                         # ids past the tokenizer's vocabulary are embedding padding (Qwen pads
                         # to a multiple of 64); they must never be sampled
                         vocab_size=len(tokenizer), max_batch_tokens=max_batch_tokens,
                         max_prefill_tokens=max_prefill_tokens, progress=bar)
    if bar is not None:
        bar.close()

    texts, scores = score_responses(tokenizer, rows, responses)
    # Code: score_batch gives the training reward, the fraction of the first 10 tests passed
    # (docs/notes.md §7), but a benchmark's pass@1 counts a program as solved only when it
    # passes every test (the LeetCode and LiveCodeBench judges of the official eval). So partial
    # credit is 0, and a full score is rechecked on all the tests (problems with more than 10).
    code = [i for i, p in enumerate(rows) if p.ability == "code"]
    solved = [i for i in code if scores[i] == 1.0]
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        verdicts = dict(zip(solved, pool.map(lambda i: code_correct(texts[i], rows[i].ground_truth), solved)))
    for i in code:
        scores[i] = float(verdicts.get(i, False))
    records = []
    for k, (problem, ids, text, score) in enumerate(zip(rows, responses, texts, scores)):
        math = problem.ability == "math"
        records.append({
            "id": problem.id,
            "sample": k % n_samples,
            "prompt": problem.prompt_text,
            "response": text,
            "extracted": extract_answer(text) if math else extract_program(text),
            # a math answer is short and worth reading beside the response; code tests can run
            # to megabytes (LiveCodeBench), so they stay in the benchmark file
            "ground_truth": problem.ground_truth if math else None,
            "score": score,
            "response_tokens": len(ids),
            "truncated": truncated(ids, max_new_tokens, eos),
        })
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, records)
        records = [record for part in gathered for record in part]  # rank order = problem order

    count = len(records)
    return {
        "accuracy": sum(r["score"] for r in records) / count,
        "n": len(problems),
        "n_samples": n_samples,
        "mean_response_tokens": sum(r["response_tokens"] for r in records) / count,
        "truncation_rate": sum(r["truncated"] for r in records) / count,
        "records": records,
    }


# ==============================================================================================
# 3. Benchmark files -> Problems.
# ==============================================================================================

# Downloads are often named by split ("test.jsonl" in the Qwen2.5-Math harness's minerva_math/
# and olympiadbench/ folders, and in HuggingFaceH4/MATH-500); such a file is named by its folder.
SPLIT_STEM = re.compile(r"(train|test|validation|val|dev)(-\d+-of-\d+)?", re.IGNORECASE)


def benchmark_name(path):
    """A benchmark's name: the file name without its extension, or the folder's name for a file
    named after a split (minerva_math/test.jsonl -> "minerva_math")."""
    path = Path(path)
    return path.parent.resolve().name if SPLIT_STEM.fullmatch(path.stem) else path.stem


def benchmark_problems(path, name, tokenizer):
    """The `data.Problem`s of a benchmark file: data.load_benchmark finds the columns (and keeps
    only AIME 2024 of AI-MO's AIME file); each question gets the system prompt and the math or
    code suffix (data.benchmark_messages) and the model's chat template."""
    rows = data.load_benchmark(path)
    texts = [data.render_prompt(tokenizer, data.benchmark_messages(row["question"], row["ability"]))
             for row in rows]
    all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [data.Problem(f"{name}:{row['id']}", row["ability"], ids, row["ground_truth"], name, text)
            for row, text, ids in zip(rows, texts, all_ids)]


# ==============================================================================================
# 4. The command line.
# ==============================================================================================

def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark pass@1 of a checkpoint (a Hugging Face folder with its tokenizer).")
    parser.add_argument("--model", required=True, help="checkpoint folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--data", nargs="+", default=[], metavar="FILE",
                        help="benchmark files (.jsonl, .json or .parquet), one benchmark each; "
                             "none: the toy task's held-out set")
    parser.add_argument("--temperature", type=float, help="default: the paper's (0, LiveCodeBench 0.2)")
    parser.add_argument("--top_p", type=float, help="default: the paper's (1, LiveCodeBench 0.95)")
    parser.add_argument("--n_samples", type=int, help="responses per problem, scored as avg@k "
                        "(default: the paper's, 1; LiveCodeBench 10)")
    parser.add_argument("--max_new_tokens", type=int, help="default: the paper's (4096; MATH-500 and "
                        "LeetCode 8192; the toy: the run's max_response_tokens)")
    parser.add_argument("--max_batch_tokens", type=int, help="KV-cache slots per sampling batch "
                        "(default on a GPU: what 90%% of its memory leaves after the weights; on the CPU, one batch)")
    parser.add_argument("--toy_problems", type=int, help="toy held-out problems (no --data; default: the run's "
                        "eval_problems). The toy's settings come from the train.py run's config.json, the folder "
                        "above --model")
    parser.add_argument("--out", help="output folder (default: <model>/eval)")
    args = parser.parse_args(argv)
    for key in ("n_samples", "max_new_tokens", "toy_problems", "max_batch_tokens"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1")
    return args


EVAL_PREFILL_TOKENS = 16384  # prompts prefilled per forward on a GPU (bounds the prefill's activations)


def response_room(problems, context, name):
    """How many new tokens the model's positions leave after the longest prompt.

    Used as a cap on max_new_tokens: vLLM, which ran the official eval, stops a sequence at the
    model's context length, and Qwen2.5-Math-7B (Eurus-2-7B's base) has 4096 positions, so
    MATH-500's and LeetCode's 8192 were in effect 4096 minus the prompt there too. Our cap is
    the same for every prompt of a benchmark (the longest prompt's room), so a little stricter
    for the shorter ones.
    """
    room = context - max(len(p.prompt_ids) for p in problems)
    if room < 1:
        raise ValueError(f"{name}: the longest prompt fills all {context} positions of the model")
    return room


def metric_name(settings):
    return "pass@1" if settings["n_samples"] == 1 else f"avg@{settings['n_samples']}"


def markdown_table(rows):
    """The results as a markdown table; the paper's columns only when a benchmark matched."""
    with_paper = any(row["paper"] for row in rows)
    header = ["benchmark", "n", "metric", "ours %", "mean response tokens", "truncated %"]
    if with_paper:
        header += ["Eurus-2-7B-SFT %", "Eurus-2-7B-PRIME %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["benchmark"], str(row["n"]), row["metric"], f"{100 * row['accuracy']:.1f}",
                 f"{row['mean_response_tokens']:.0f}", f"{100 * row['truncation_rate']:.1f}"]
        if with_paper:
            paper = row["paper"]
            cells += [f"{paper['Eurus-2-7B-SFT']:.1f}", f"{paper['Eurus-2-7B-PRIME']:.1f}"] if paper else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device, _ = init_distributed(timedelta(minutes=30))  # each rank holds the whole model
    try:
        run(args, rank, world, device)
    finally:
        dist.destroy_process_group()


def run(args, rank, world, device):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # Everything that reads the user's input runs before the first response is sampled, so a
    # typo in the last --data file costs seconds, not hours; errors are one line, no traceback.
    try:
        model = load_model(args.model, device, dtype)
        tokenizer = data.load_tokenizer(args.model)
        if args.data:
            names = [benchmark_name(path) for path in args.data]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"two --data files are both named {duplicates}: rename one "
                                 f"(a benchmark is named by its file, or its folder for a split name)")
            benchmarks = [(name, benchmark_problems(path, name, tokenizer)) for name, path in zip(names, args.data)]
        else:
            toy_cfg, max_prompt_tokens, max_response_tokens, toy_path = toy.run_settings(args.model)
            if rank == 0:
                print(f"eval.py: toy settings from {toy_path}" if toy_path else
                      "eval.py: no train.py config.json above the checkpoint: the toy preset's settings")
            benchmarks = [("toy", toy.held_out_problems(toy_cfg, tokenizer, max_prompt_tokens, args.toy_problems))]
        plans = []
        for name, problems in benchmarks:
            settings = paper_settings(name) if args.data else \
                {**TOY_SETTINGS, "max_new_tokens": max_response_tokens}
            settings.update({key: getattr(args, key) for key in settings if getattr(args, key) is not None})
            room = response_room(problems, model.config.max_position_embeddings, name)
            if settings["max_new_tokens"] > room:
                if rank == 0:
                    print(f"eval.py: {name}: max_new_tokens {settings['max_new_tokens']} capped to {room}, "
                          f"what the model's positions leave after the longest prompt")
                settings["max_new_tokens"] = room
            plans.append((name, problems, settings))
    except (OSError, ValueError) as error:
        raise SystemExit(f"eval.py: {error}") from None
    out_dir = args.out or os.path.join(args.model, "eval")

    rows = []
    for name, problems, settings in plans:
        if rank == 0:
            print(f"eval.py: {name}: {len(problems)} problems, {metric_name(settings)}, "
                  f"temperature {settings['temperature']}, top_p {settings['top_p']}, "
                  f"max_new_tokens {settings['max_new_tokens']}", flush=True)
        # rollout.generate's memory bounds on a GPU: the KV cache gets what is left under 90% of its
        # memory (memory.sampling_limits, as train.py sizes its own sampling); none on the CPU
        max_batch_tokens, max_prefill_tokens = memory.sampling_limits(
            model.config, device, math.ceil(len(problems) / world) * settings["n_samples"], 0.9,
            EVAL_PREFILL_TOKENS, dtype, sharded=False)
        result = evaluate(model, tokenizer, problems, settings["max_new_tokens"],
                          temperature=settings["temperature"], n_samples=settings["n_samples"],
                          top_p=settings["top_p"], seed=0, max_batch_tokens=args.max_batch_tokens or max_batch_tokens,
                          max_prefill_tokens=max_prefill_tokens)
        paper = paper_benchmark(name)
        extra = {}
        if not args.data:  # the toy: where its careless habit strikes
            extra, line = toy.habits(result["records"], toy_cfg, args.toy_problems)
            if rank == 0:
                print("eval.py: " + line)
        rows.append({"benchmark": name, "paper_benchmark": paper.title if paper else None,
                     "n": result["n"], "metric": metric_name(settings), **settings,
                     "accuracy": result["accuracy"],
                     "mean_response_tokens": result["mean_response_tokens"],
                     "truncation_rate": result["truncation_rate"],
                     "paper": {"Eurus-2-7B-SFT": paper.sft, "Eurus-2-7B-PRIME": paper.prime} if paper else None,
                     **extra})
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, f"samples_{name}.jsonl"), "w", encoding="utf-8") as f:
                for record in result["records"]:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")

    if rank == 0:
        table = markdown_table(rows)
        print(table)
        results = {"model": os.path.abspath(args.model), "device": str(device), "dtype": str(dtype),
                   "world_size": world, "seed": 0, "data": [os.path.abspath(p) for p in args.data],
                   "benchmarks": rows, "table": table}
        with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"eval.py: wrote {os.path.join(out_dir, 'results.json')} and the samples_*.jsonl beside it")


if __name__ == "__main__":
    main()
