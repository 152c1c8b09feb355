"""eval.py: benchmark pass@1, the numbers of the paper's Table 2, measured the way the paper did.

    python eval.py --model CHECKPOINT [--data FILE ...] [--protocol=paper|ours]
    torchrun --nproc_per_node=N eval.py --model CHECKPOINT [--data FILE ...]

The paper's seven benchmarks (AIME 2024, AMC, MATH-500, Minerva Math, OlympiadBench, LeetCode,
LiveCodeBench; a file is recognised by its name, support/paper_eval.py) are sampled under one of
two protocols (docs/evaluation.md has every setting of both, beside the official source):

  paper (default)  what produced Table 2: the official prompt bytes (its system prompt file
                   spells every newline as backslash-n), chat template, sampling, stop strings,
                   vLLM's cap of 4096 positions per prompt + response, the official graders
                   and time limits
  ours             the prompt the policy trained on (data.benchmark_messages), one length cap
                   per benchmark, our graders (verify.py)

Whichever protocol sampled them, every response is graded by both graders, so the table
shows per benchmark the official grader's score, ours on the same responses, how many verdicts
differ, and Table 2's numbers: whether a gap to the paper is the model's or the grader's shows
at a glance. `grade` is the one function the table and the tests use. Any other file (or the
toy, without --data) is sampled and graded our way only.

With no --data, the toy task's held-out problems are evaluated: those train.py evaluated in the
run that wrote the checkpoint (its config.json, in the folder above --model; toy/task.py),
prompted and cut off as train.py did.

Rank 0 prints the table and writes into --out (default <model>/eval, next to the weights the
numbers describe):
    results.json                 the table as JSON, with the settings used
    samples_<benchmark>.jsonl    one line per response: prompt, response, extracted answers
                                 (or program), golds, each grader's verdict
    disagreements.md             every response the two graders judge differently, to read

`evaluate` is also what train.py calls for its held-out accuracy, so train.py's summary and this
table are one computation.

Read top to bottom: grade(), evaluate(), benchmark files -> problems, the command line.
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
from support import memory, paper_eval
from support.distributed import init_distributed
from support.eval_report import disagreements, markdown_table
from support.paper_graders import paper_extract
from toy import task as toy
from verify import (CODE_TIMEOUT, code_correct, default_workers, extract_answer, extract_program, math_correct,
                    score_responses)

PROTOCOLS = ("paper", "ours")


# ==============================================================================================
# 1. grade(): one response, one benchmark, either protocol's grader.
# ==============================================================================================

def grade(benchmark, response, ground_truth, protocol="paper"):
    """The score of one response to a problem of one of the paper's seven benchmarks
    (paper_eval.BENCHMARKS), 1.0 (right, or every test passed) or 0.0.

    ground_truth: what that protocol's grader compares with: for math the official gold under
    "paper" (paper_eval.BenchmarkRow.paper_gold: AIME's answer without leading zeros, AMC's as a
    float, MATH-500's expected_answer, ...), data.load_benchmark's ground truth under "ours"; for
    code the tests JSON under both. `response` is the text as the protocol's sampling left it
    (under "paper": cut at the stop strings, paper_eval.truncate_at_stop).

      paper  math: the official grader (PRIME's for AIME/AMC/MATH-500, the Qwen2.5-Math harness's
                   for Minerva/OlympiadBench; support/paper_graders.py) in a worker process
                   killed at its time limit (then wrong); code: the benchmark's official judge
                   (verify.py's "leetcode" / "livecodebench") under the official limits, LeetCode
                   10 s for the problem's test script, LiveCodeBench 6 s per test
      ours   math: verify.math_correct; code: the same judges, 5 s per test (verify.CODE_TIMEOUT)
    """
    if benchmark not in paper_eval.BENCHMARKS:
        raise ValueError(f"grade: benchmark must be one of {paper_eval.BENCHMARKS}, got {benchmark!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"grade: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if benchmark in paper_eval.CODE_BENCHMARKS:
        limit = paper_eval.PROTOCOLS[benchmark].code_time_limit if protocol == "paper" else CODE_TIMEOUT
        return float(code_correct(response, ground_truth, timeout=limit))
    if protocol == "paper":
        return float(paper_eval.grade_math(benchmark, response, ground_truth))
    return float(math_correct(response, ground_truth))


# ==============================================================================================
# 2. evaluate(): sample, grade, aggregate. Shared with train.py.
# ==============================================================================================

@dataclass
class BenchmarkProblem(data.Problem):
    """A problem of one of the paper's seven benchmarks: a data.Problem (its ground_truth is our
    grader's gold) and what the official evaluation used."""
    benchmark: str = ""      # a key of paper_eval.PROTOCOLS
    paper_gold: str = ""     # the official grader's gold (math) or the tests JSON (code)
    max_new_tokens: int = 0  # protocol "paper": this prompt's own cap (positions left after it)


def evaluate(model, tokenizer, problems, max_new_tokens, temperature=0.0, n_samples=1, top_p=1.0,
             seed=0, max_batch_tokens=None, max_prefill_tokens=None, progress=True, protocol="ours"):
    """Sample `n_samples` responses per problem, grade them, and return the averages.

    problems: the full list, the same on every rank. Under torch.distributed each rank samples
        and grades a contiguous share and the records are gathered, so every rank must call
        evaluate and every rank gets the same result. data.Problems (train.py's held-out set, the
        toy, any benchmark file) are graded our way: verify.score_responses, and a program counts
        only when it passes every test. BenchmarkProblems are graded by both graders (grade), and
        the score is `protocol`'s; under "paper" every response is also cut at the benchmark's
        stop strings and held to its own prompt's cap (responses that reach max_new_tokens go
        on, rank by rank: for eval.py's unsharded model, not for train.py's FSDP one).
    temperature 0 is greedy (then n_samples=1 is all that makes sense). seed: the sampler's seed
        (rank r uses seed + r, so ranks draw different streams).
    max_batch_tokens, max_prefill_tokens: rollout.generate's memory bounds (None: one batch, one
        prefill forward).
    progress: show a tqdm bar on rank 0.

    Returns {"accuracy": mean score over all responses (pass@1 for one greedy sample, avg@k for
    k samples, i.e. the estimate of pass@1 that LiveCodeBench reports), "n": number of problems,
    "n_samples", "mean_response_tokens" (tokens sampled, EOS included), "truncation_rate" (share of
    responses that reached their cap without an EOS or a stop string), "records": one dict per
    response, in problem order: {"id", "sample", "prompt", "response", "extracted", "ground_truth",
    "score", "response_tokens", "truncated"}}; for BenchmarkProblems also "paper_accuracy",
    "our_accuracy", "differ" (responses the two graders judge differently), and per record
    "paper_extracted", "paper_gold", "paper_score", "our_score".
    """
    if not problems:
        raise ValueError("evaluate: no problems")
    if n_samples < 1:
        raise ValueError(f"evaluate: n_samples must be at least 1, got {n_samples}")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    share = problems[rank * len(problems) // world:(rank + 1) * len(problems) // world]
    paired = isinstance(problems[0], BenchmarkProblem)
    # A problem's samples are adjacent rows of one generate call; the sampler's generator gives
    # each row its own draws. A rank whose share is empty still calls generate: under FSDP the
    # weights are gathered there collectively, by every rank.
    rows = [problem for problem in share for _ in range(n_samples)]
    eos = data.stop_token_ids(tokenizer)
    bar = tqdm(total=len(rows), unit="response", disable=rank != 0) if progress else None
    # ids past the tokenizer's vocabulary are embedding padding (Qwen pads to a multiple of 64);
    # they must never be sampled
    sampling = dict(temperature=temperature, top_p=top_p, vocab_size=len(tokenizer),
                    max_batch_tokens=max_batch_tokens, max_prefill_tokens=max_prefill_tokens)
    responses = generate(model, [p.prompt_ids for p in rows], max_new_tokens, eos, seed=seed + rank, progress=bar,
                         **sampling)
    if bar is not None:
        bar.close()
    caps = [max_new_tokens] * len(rows)
    if paired and protocol == "paper":
        caps = [p.max_new_tokens for p in rows]
        responses = sample_to_caps(model, rows, responses, eos, seed + rank, sampling)

    if paired:
        decoded = tokenizer.batch_decode(responses, skip_special_tokens=True)
        stop = paper_eval.PROTOCOLS[problems[0].benchmark].stop if protocol == "paper" else ()
        texts = [paper_eval.truncate_at_stop(text, stop) for text in decoded]
        stopped = [len(text) < len(full) for text, full in zip(texts, decoded)]  # ended at a stop string
        verdicts = grade_both(rows, texts)
        scores = [v[0] if protocol == "paper" else v[1] for v in verdicts]
    else:
        texts, scores = score_responses(tokenizer, rows, responses)
        stopped = [False] * len(rows)
        # Code: score_batch gives the training reward, the fraction of the first 10 tests passed
        # (docs/notes.md §7), but a benchmark's pass@1 counts a program as solved only when it
        # passes every test. So partial credit is 0, and a full score is rechecked on all the tests.
        code = [i for i, p in enumerate(rows) if p.ability == "code"]
        solved = [i for i in code if scores[i] == 1.0]
        with ThreadPoolExecutor(max_workers=default_workers()) as pool:
            passed = dict(zip(solved, pool.map(lambda i: code_correct(texts[i], rows[i].ground_truth), solved)))
        for i in code:
            scores[i] = float(passed.get(i, False))
    records = []
    for k, (problem, ids, text, score, cap) in enumerate(zip(rows, responses, texts, scores, caps)):
        is_math = problem.ability == "math"
        record = {
            "id": problem.id,
            "sample": k % n_samples,
            "prompt": problem.prompt_text,
            "response": text,
            "extracted": extract_answer(text) if is_math else extract_program(text),
            # a math answer is short and worth reading beside the response; code tests can run
            # to megabytes (LiveCodeBench), so they stay in the benchmark file
            "ground_truth": problem.ground_truth if is_math else None,
            "score": score,
            "response_tokens": len(ids),
            "truncated": truncated(ids, cap, eos) and not stopped[k],  # a stop string ends it, as in vLLM
        }
        if paired:
            record.update(paper_extracted=paper_extract(problem.benchmark, text) if is_math else None,
                          paper_gold=problem.paper_gold if is_math else None,
                          paper_score=verdicts[k][0], our_score=verdicts[k][1])
        records.append(record)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, records)
        records = [record for part in gathered for record in part]  # rank order = problem order

    count = len(records)
    result = {
        "accuracy": sum(r["score"] for r in records) / count,
        "n": len(problems),
        "n_samples": n_samples,
        "mean_response_tokens": sum(r["response_tokens"] for r in records) / count,
        "truncation_rate": sum(r["truncated"] for r in records) / count,
        "records": records,
    }
    if paired:
        result.update(paper_accuracy=sum(r["paper_score"] for r in records) / count,
                      our_accuracy=sum(r["our_score"] for r in records) / count,
                      differ=sum(r["paper_score"] != r["our_score"] for r in records))
    return result


def sample_to_caps(model, rows, responses, eos, seed, sampling):
    """Protocol "paper": each response held to its own prompt's cap, as vLLM's max_model_len held
    each sequence (a shorter prompt leaves its response more room). generate gives every row the
    same max_new_tokens, the room the longest prompt leaves; the rows that used it all without an
    EOS go on from where they stopped, together, as far as the one with the least room left, then
    again, until none has room. Sampling on from a cut draws the sequence from the same
    distribution (a token depends only on those before it); greedy gives the same tokens up to
    rounding (the continuation's prefix is prefilled, not decoded token by token)."""
    # A model with more positions than the official run's 4096 lets generate go past a row's cap:
    # such a response is cut to it.
    responses = [list(r[:p.max_new_tokens]) for p, r in zip(rows, responses)]
    for round_ in range(1, len(rows) + 1):  # each round brings at least one row to its cap
        going = [i for i, r in enumerate(responses) if r[-1] not in eos and len(r) < rows[i].max_new_tokens]
        if not going:
            break
        room = min(rows[i].max_new_tokens - len(responses[i]) for i in going)
        more = generate(model, [rows[i].prompt_ids + responses[i] for i in going], room, eos,
                        seed=seed + 1000 * round_, progress=None, **sampling)  # a new stream per round
        for i, tokens in zip(going, more):
            responses[i] += tokens
    return responses


def grade_both(rows, texts):
    """(official verdict, our verdict) for each response text to its BenchmarkProblem, graded
    `default_workers()` at a time (each in flight keeps a CPU busy: a grader worker or a program)."""
    def both(i):
        p, text = rows[i], texts[i]
        return grade(p.benchmark, text, p.paper_gold, "paper"), grade(p.benchmark, text, p.ground_truth, "ours")
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        return list(pool.map(both, range(len(rows))))


# ==============================================================================================
# 3. Benchmark files -> problems.
# ==============================================================================================

# Downloads are often named by split ("test.jsonl" in the Qwen2.5-Math harness's minerva_math/
# and olympiadbench/ folders, and in HuggingFaceH4/MATH-500); such a file is named by its folder.
SPLIT_STEM = re.compile(r"(train|test|validation|val|dev)(-\d+-of-\d+)?", re.IGNORECASE)


def benchmark_name(path):
    """A benchmark's name: the file name without its extension, or the folder's name for a file
    named after a split (minerva_math/test.jsonl -> "minerva_math")."""
    path = Path(path)
    return path.parent.resolve().name if SPLIT_STEM.fullmatch(path.stem) else path.stem


def benchmark_problems(path, name, tokenizer, protocol):
    """The problems of a benchmark file, prompted as `protocol` prompts them. A Table 2 benchmark
    (paper_eval.protocol_for) gives BenchmarkProblems: under "paper" the official system prompt,
    user turn and chat template (paper_eval.render_prompt), under "ours" data.benchmark_messages
    in the model's template. Any other file gives data.Problems, prompted our way."""
    benchmark = paper_eval.protocol_for(name)
    if benchmark is None:
        rows = data.load_benchmark(path)
        texts = [data.render_prompt(tokenizer, data.benchmark_messages(row["question"], row["ability"]))
                 for row in rows]
        all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [data.Problem(f"{name}:{row['id']}", row["ability"], ids, row["ground_truth"], name, text)
                for row, text, ids in zip(rows, texts, all_ids)]
    rows = paper_eval.benchmark_rows(benchmark, path)
    texts = [paper_eval.render_prompt(tokenizer, benchmark, row.user_turn) if protocol == "paper" else
             data.render_prompt(tokenizer, data.benchmark_messages(row.question, row.ability)) for row in rows]
    all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [BenchmarkProblem(f"{name}:{row.id}", row.ability, ids, row.ground_truth, name, text,
                             benchmark=benchmark, paper_gold=row.paper_gold)
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
    parser.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                        help="how the paper's seven benchmarks are prompted, sampled and scored: paper (the "
                             "official evaluation of Table 2) or ours (the training prompt, our graders); both "
                             "graders grade every response either way. Other files and the toy: ours")
    parser.add_argument("--temperature", type=float, help="default: the paper's (0, LiveCodeBench 0.2)")
    parser.add_argument("--top_p", type=float, help="default: the paper's (1, LiveCodeBench 0.95)")
    parser.add_argument("--n_samples", type=int, help="responses per problem, scored as avg@k "
                        "(default: the paper's, 1; LiveCodeBench 10)")
    parser.add_argument("--max_new_tokens", type=int, help="default: the paper's (4096; MATH-500 and "
                        "LeetCode 8192; the toy: the run's max_response_tokens), capped by the model's positions")
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
OTHER_MAX_NEW_TOKENS = 4096  # a benchmark the paper did not report: the math scripts' budget


def sampling_settings(problems, args, toy_max_new_tokens=None):
    """temperature, top_p, n_samples, max_new_tokens for a benchmark: the paper's (the official
    run's SamplingParams: paper_eval.PROTOCOLS, the same under both protocols), greedy with
    OTHER_MAX_NEW_TOKENS for another file, the run's response limit for the toy; then the
    command line's overrides."""
    if toy_max_new_tokens is not None:
        settings = {"temperature": 0.0, "top_p": 1.0, "n_samples": 1, "max_new_tokens": toy_max_new_tokens}
    elif isinstance(problems[0], BenchmarkProblem):
        p = paper_eval.PROTOCOLS[problems[0].benchmark]
        settings = {"temperature": p.temperature, "top_p": p.top_p, "n_samples": p.n_samples,
                    "max_new_tokens": p.max_new_tokens}
    else:
        settings = {"temperature": 0.0, "top_p": 1.0, "n_samples": 1, "max_new_tokens": OTHER_MAX_NEW_TOKENS}
    settings.update({key: getattr(args, key) for key in settings if getattr(args, key) is not None})
    return settings


def cap_to_positions(problems, settings, context, protocol, name):
    """Cap max_new_tokens by what the model's positions leave after the prompts; returns a line
    saying so when it binds, else None.

    vLLM, which ran the official eval, stopped a sequence at max_model_len positions, the model's
    max_position_embeddings (Qwen2.5-Math-7B, Eurus-2-7B's base: 4096), so MATH-500's and
    LeetCode's 8192 were in effect 4096 minus the prompt. Protocol "paper" gives each prompt its
    own cap (BenchmarkProblem.max_new_tokens; one token short of vLLM's, whose last token is
    sampled at position max_model_len - 1 and never fed back); generate's common cap is the room
    the longest prompt leaves. Protocol "ours" gives every prompt that common cap, a little
    stricter for the shorter ones."""
    longest = max(len(p.prompt_ids) for p in problems)
    if longest >= context:
        raise ValueError(f"{name}: the longest prompt fills all {context} positions of the model")
    if protocol == "paper" and isinstance(problems[0], BenchmarkProblem):
        positions = min(context, paper_eval.PROTOCOLS[problems[0].benchmark].max_model_len)
        for p in problems:
            if len(p.prompt_ids) >= positions:
                raise ValueError(f"{p.id}: its prompt fills all {positions} positions of the official run")
            p.max_new_tokens = min(settings["max_new_tokens"], positions - len(p.prompt_ids))
    if settings["max_new_tokens"] <= context - longest:
        return None
    settings["max_new_tokens"] = context - longest
    return (f"{name}: max_new_tokens capped to {context - longest}, what the model's positions leave after the "
            f"longest prompt" + (" (each prompt: its own room, to 4096 positions)" if protocol == "paper" and
                                 isinstance(problems[0], BenchmarkProblem) else ""))


def metric_name(settings):
    return "pass@1" if settings["n_samples"] == 1 else f"avg@{settings['n_samples']}"


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
        toy_max_new_tokens = None
        if args.data:
            names = [benchmark_name(path) for path in args.data]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"two --data files are both named {duplicates}: rename one "
                                 f"(a benchmark is named by its file, or its folder for a split name)")
            benchmarks = [(name, benchmark_problems(path, name, tokenizer, args.protocol))
                          for name, path in zip(names, args.data)]
        else:
            toy_cfg, max_prompt_tokens, toy_max_new_tokens, toy_path = toy.run_settings(args.model)
            if rank == 0:
                print(f"eval.py: toy settings from {toy_path}" if toy_path else
                      "eval.py: no train.py config.json above the checkpoint: the toy preset's settings")
            benchmarks = [("toy", toy.held_out_problems(toy_cfg, tokenizer, max_prompt_tokens, args.toy_problems))]
        plans = []
        for name, problems in benchmarks:
            settings = sampling_settings(problems, args, toy_max_new_tokens)
            protocol = args.protocol if isinstance(problems[0], BenchmarkProblem) else "ours"
            capped = cap_to_positions(problems, settings, model.config.max_position_embeddings, protocol, name)
            if capped and rank == 0:
                print("eval.py: " + capped)
            plans.append((name, problems, settings, protocol))
    except (OSError, ValueError) as error:
        raise SystemExit(f"eval.py: {error}") from None
    out_dir = args.out or os.path.join(args.model, "eval")

    rows, notes = [], []
    for name, problems, settings, protocol in plans:
        if rank == 0:
            print(f"eval.py: {name}: {len(problems)} problems, protocol {protocol}, {metric_name(settings)}, "
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
                          max_prefill_tokens=max_prefill_tokens, protocol=protocol)
        paper = paper_eval.PROTOCOLS[problems[0].benchmark] if isinstance(problems[0], BenchmarkProblem) else None
        extra = {}
        if not args.data:  # the toy: where its careless habit strikes
            extra, line = toy.habits(result["records"], toy_cfg, args.toy_problems)
            if rank == 0:
                print("eval.py: " + line)
        rows.append({"benchmark": name, "paper_benchmark": paper.title if paper else None, "protocol": protocol,
                     "n": result["n"], "metric": metric_name(settings), **settings,
                     "accuracy": result["accuracy"], "paper_accuracy": result.get("paper_accuracy"),
                     "our_accuracy": result.get("our_accuracy", result["accuracy"]), "differ": result.get("differ"),
                     "mean_response_tokens": result["mean_response_tokens"],
                     "truncation_rate": result["truncation_rate"],
                     "paper": {"Eurus-2-7B-SFT": paper.sft, "Eurus-2-7B-PRIME": paper.prime} if paper else None,
                     **extra})
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, f"samples_{name}.jsonl"), "w", encoding="utf-8") as f:
                for record in result["records"]:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            if paper:
                notes += disagreements(name, result["records"])

    if rank == 0:
        table = markdown_table(rows)
        print(table)
        results = {"model": os.path.abspath(args.model), "device": str(device), "dtype": str(dtype),
                   "world_size": world, "seed": 0, "data": [os.path.abspath(p) for p in args.data],
                   "benchmarks": rows, "table": table}
        with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        written = "results.json and the samples_*.jsonl"
        if notes:
            with open(os.path.join(out_dir, "disagreements.md"), "w", encoding="utf-8") as f:
                f.write("# Responses the official grader and ours judge differently\n\n" + "\n".join(notes))
            written += " and disagreements.md"
        print(f"eval.py: wrote {written} in {out_dir}")


if __name__ == "__main__":
    main()
