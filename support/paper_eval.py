"""The official evaluation protocol of PRIME's Table 2, benchmark by benchmark.

Table 2 ([P1 Table 2]: Eurus-2-7B-PRIME 43.9 on average over seven benchmarks, Eurus-2-7B-SFT
28.8) was measured by the official scripts in [PR] eval/ ("[PR]" is PRIME-RL/PRIME at commit
18ad596f08d4, docs/notes.md §0; paths below are relative to it). `eval.py --protocol=paper`
runs that protocol with this module; docs/evaluation.md lists every setting, official beside
ours, with the [PR] file it comes from, and where this reproduction falls short.

    PROTOCOLS[benchmark] -> PaperProtocol: the Table 2 numbers, chat template, sampling, stop
                  strings, length cap and time limits of the official run
    protocol_for(name)                 -> the benchmark a file's name stands for, or None
    benchmark_rows(benchmark, path)    -> a BenchmarkRow per problem of a released file: the
                  question and gold our grader uses, the user turn and gold the official run used
    render_prompt(tokenizer, benchmark, user_turn) -> the prompt text the official run sampled from
    truncate_at_stop(text, stop_strings)           -> what vLLM's stop strings leave of a response
    grade_math(benchmark, response, gold)          -> the official math verdict, computed in a
                  worker process that is killed at the time limit (the graders themselves are
                  support/paper_graders.py)

Read top to bottom: the prompt, the protocol table, benchmark files, stop strings, math
verdicts under a time limit.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import data
from support import benchmark_files, paper_graders, workers
from support.benchmark_files import QUESTION_COLUMNS

logger = logging.getLogger(__name__)

BENCHMARKS = ("aime", "amc", "math500", "minerva", "olympiadbench", "leetcode", "livecodebench")
MATH_BENCHMARKS = paper_graders.MATH_BENCHMARKS
CODE_BENCHMARKS = ("leetcode", "livecodebench")


# =========================================================================================
# 1. The prompt: the system prompt file, the user turn, the chat template.
# =========================================================================================
# Every benchmark read its system prompt from [PR] eval/system_prompt.md with open().read():
# the AIME/AMC/MATH/LeetCode scripts as "system_prompt.md" (run.sh runs them from eval/),
# math_eval.py as "../../../system_prompt.md" (run from Math/Qwen25-Math/evaluation), and
# lcb_runner as PromptConstants.SYSTEM_MESSAGE_o1 = open("../../../system_prompt.md")
# (run from Coding/livecodebench/LiveCodeBench-main). That file is ONE line of 414
# characters: the training prompt (data.SYSTEM_PROMPT, [PR]
# training/scripts/data_prepare.py::short_system_prompt) with every newline written as the
# two characters backslash + "n", ending in one such "\n" (the training text ends in two
# real newlines) and with no real newline at all. So Table 2's prompts held literal
# backslash-n sequences, a prompt the RL policy never saw in training.

def official_system_prompt(training_prompt: str) -> str:
    """eval/system_prompt.md's text from the training prompt: one trailing newline kept,
    then each real newline spelled as backslash + "n"."""
    return (training_prompt.rstrip("\n") + "\n").replace("\n", "\\n")


EVAL_SYSTEM_PROMPT = official_system_prompt(data.SYSTEM_PROMPT)

# The user turn is the question plus data.MATH_SUFFIX or data.CODE_SUFFIX, appended by every
# script itself: [PR] eval/Math/*/evaluate_*.py::make_conv_hf, math_eval.py::main,
# eval/Coding/leetcode/evaluate_leetcode.py::make_conv_hf, and [PR]'s lcb_runner
# prompts/code_generation.py::format_prompt_generation (LMStyle.Qwen25Math).


def paper_user_turn(benchmark: str, question: str, record: dict) -> str:
    """The user message the official run sent, from a problem's question as data.load_benchmark
    reads it and (for the Qwen harness) its row as released.

    AIME / AMC / MATH-500: question + suffix (make_conv_hf, no strip). Minerva / OlympiadBench:
    parser.py::parse_question (" (Yes or No)" / " (True or False)" appended when the gold is one
    of those words), re-read from between the template's user markers and stripped
    (math_eval.py::main), + suffix. LeetCode: prompt_sft + suffix; LiveCodeBench: lcb_runner's
    question template (which data.load_benchmark writes as the question) + suffix."""
    if benchmark in CODE_BENCHMARKS:
        return question + data.CODE_SUFFIX
    if benchmark in paper_graders.QWEN_HARNESS:
        gold = paper_graders.qwen_first_gold(benchmark, record).lower()
        if gold in ("true", "false"):
            question += " (True or False)"
        if gold in ("yes", "no"):
            question += " (Yes or No)"
        return question.strip() + data.MATH_SUFFIX
    return question + data.MATH_SUFFIX


def render_prompt(tokenizer, benchmark: str, user_turn: str) -> str:
    """The prompt text the official run sampled from: EVAL_SYSTEM_PROMPT and the user turn in the
    evaluated model's chat template, except for LiveCodeBench, whose prompts lcb_runner rendered
    with Qwen2.5-Math-7B-Instruct's tokenizer whatever the model (format_prompt_generation,
    LMStyle.Qwen25Math). Given a system message, that template writes plain ChatML (its own
    "Please reason step by step" system message appears only when none is given), so it is
    written out here rather than loaded."""
    messages = [{"role": "system", "content": EVAL_SYSTEM_PROMPT}, {"role": "user", "content": user_turn}]
    if PROTOCOLS[benchmark].chat_template == MODEL_TEMPLATE:
        return data.render_prompt(tokenizer, messages)
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


# =========================================================================================
# 2. The protocol table.
# =========================================================================================
# vLLM ran every benchmark. Its max_model_len bounds prompt + response; where a script does
# not set it, vLLM takes the model's max_position_embeddings, 4096 for Eurus-2-7B-SFT /
# -PRIME (Qwen2.5-Math-7B's config; Eurus-2-7B-SFT's config.json on the Hub says 4096). So
# MATH-500's and LeetCode's max_tokens=8192 could never be reached. vLLM's V0 engine
# (StopChecker.maybe_stop_sequence) ends a sequence once prompt + output > max_model_len, so
# the last token kept is the one sampled at position max_model_len - 1: the response holds at
# most max_model_len + 1 - len(prompt) tokens (one more than a KV cache of max_model_len
# would hold; that token is never fed back). That reading is of vLLM's V0 stop checker, not
# of the exact 0.6.3.post1 / 0.5.4 releases [PR] pinned.

MODEL_TEMPLATE = "model"                                 # the evaluated model's own template
QWEN_MATH_INSTRUCT_TEMPLATE = "Qwen/Qwen2.5-Math-7B-Instruct"
MODEL_MAX_POSITIONS = 4096                               # Eurus-2-7B-*'s max_position_embeddings


@dataclass(frozen=True)
class PaperProtocol:
    """How the official scripts ran one benchmark of Table 2, and what they measured.

    title: the paper's name; pattern: matched against a file's name (lowercased, separators
    removed) by protocol_for; sft / prime: Table 2's Eurus-2-7B-SFT and Eurus-2-7B-PRIME (step
    592) pass@1 in %; chat_template: MODEL_TEMPLATE or the model whose template was applied;
    temperature / top_p / n_samples / max_new_tokens: vLLM SamplingParams (n_samples responses,
    scored as their mean); max_model_len: the cap on prompt + response positions (see above);
    stop: vLLM stop strings (truncate_at_stop cuts at them); code_time_limit: seconds per
    test (LiveCodeBench) or for the problem's whole test script (LeetCode); math_time_limit:
    the official grader's limit: per sympy step for the PRIME grader (a step that runs out falls
    through to the next rule), per comparison for the Qwen harness (then: wrong)."""
    benchmark: str
    title: str
    pattern: str
    sft: float
    prime: float
    chat_template: str
    temperature: float
    top_p: float
    n_samples: int
    max_new_tokens: int
    max_model_len: int
    stop: tuple[str, ...]
    code_time_limit: float | None = None
    math_time_limit: float | None = None


# The Table 2 numbers are [P1 Table 2] (docs/notes.md §8); SFT's MATH-500 is 65.1 in the README
# and Fig. 1 but 66.2 in Table 2, which is quoted. The patterns: AIME means the 2024 problems
# (AI-MO's aimo-validation-aime file, which data.load_benchmark cuts to 2024, or a file named
# aime24/aime_2024), not "aime25"; AMC means AI-MO's 83-problem aimo-validation-amc, not the Qwen
# harness's 40-problem "amc23"; MATH-500 is HuggingFaceH4's file or [PR]'s math_test_cleaned.json.
_PRIME_STOP = ("\n###\nProblem: ", "<|eot_id|>")
_QWEN_STOP = ("</s>", "<|im_end|>", "<|endoftext|>")
PROTOCOLS = {p.benchmark: p for p in (
    # [PR] eval/Math/aime/evaluate_aime.py (generate_sample_batch: SamplingParams; LLM(...) without
    # max_model_len); the grader's 1 s: eval/utils/grader.py::math_equal(timeout=True)
    PaperProtocol("aime", "AIME 2024", r"aime(2024|24)?$", 3.3, 26.7, MODEL_TEMPLATE, 0.0, 1.0, 1, 4096,
                  MODEL_MAX_POSITIONS, _PRIME_STOP, math_time_limit=1.0),
    # [PR] eval/Math/amc/evaluate_amc.py: stop=[]
    PaperProtocol("amc", "AMC", r"amc$", 30.1, 57.8, MODEL_TEMPLATE, 0.0, 1.0, 1, 4096,
                  MODEL_MAX_POSITIONS, (), math_time_limit=1.0),
    # [PR] eval/Math/math/evaluate_math.py
    PaperProtocol("math500", "MATH-500", r"math500|mathtestcleaned", 66.2, 79.2, MODEL_TEMPLATE, 0.0, 1.0, 1,
                  8192, MODEL_MAX_POSITIONS, _PRIME_STOP, math_time_limit=1.0),
    # [PR] eval/Math/Qwen25-Math/evaluation: sh/eval.sh (temperature 0, n_sampling 1, top_p 1),
    # math_eval.py (max_tokens_per_call 4096, stop_words), evaluate.py::evaluate (pebble pool, 3 s)
    PaperProtocol("minerva", "Minerva Math", r"minerva", 32.7, 38.6, MODEL_TEMPLATE, 0.0, 1.0, 1, 4096,
                  MODEL_MAX_POSITIONS, _QWEN_STOP, math_time_limit=3.0),
    PaperProtocol("olympiadbench", "OlympiadBench", r"olympiad", 29.8, 42.1, MODEL_TEMPLATE, 0.0, 1.0, 1, 4096,
                  MODEL_MAX_POSITIONS, _QWEN_STOP, math_time_limit=3.0),
    # [PR] eval/Coding/leetcode/evaluate_leetcode.py; the 10 s:
    # eval/utils/evaluation_leetcode.py::evaluate_functional_correctness(timeout=10.0)
    PaperProtocol("leetcode", "LeetCode", r"leetcode", 21.7, 33.3, MODEL_TEMPLATE, 0.0, 1.0, 1, 8192,
                  MODEL_MAX_POSITIONS, ("<|eot_id|>",), code_time_limit=10.0),
    # [PR] eval/Coding/livecodebench/LiveCodeBench-main/lcb_runner: runner/parser.py::get_args
    # defaults (eval/run.sh overrides none; --timeout 6), runner/vllm_runner.py (max_model_len
    # 4096), prompts/code_generation.py (the template); scored on 2023-05-01..2024-05-31 (v2)
    PaperProtocol("livecodebench", "LiveCodeBench (v2)", r"livecodebench|^lcb", 17.8, 28.6,
                  QWEN_MATH_INSTRUCT_TEMPLATE, 0.2, 0.95, 10, 4096, 4096, ("###",), code_time_limit=6.0),
)}


def protocol_for(name: str) -> str | None:
    """The benchmark (a key of PROTOCOLS) a benchmark's name stands for, or None: "MATH-500",
    "math_500" and "math500" all mean MATH-500 (case and separators are ignored)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return next((b for b, p in PROTOCOLS.items() if re.search(p.pattern, key)), None)


# =========================================================================================
# 3. Benchmark files: the rows as released, each problem's two golds.
# =========================================================================================

@dataclass(frozen=True)
class BenchmarkRow:
    """One problem of a Table 2 benchmark, for both protocols.

    id, ability, question, ground_truth: as data.load_benchmark reads them (our prompt is
    data.benchmark_messages(question, ability), our grader's gold is ground_truth: an answer,
    or the tests JSON); user_turn: the official run's user message (paper_user_turn);
    paper_gold: the official grader's gold (paper_graders.paper_gold; the tests JSON for code)."""
    id: str
    ability: str
    question: str
    ground_truth: str
    user_turn: str
    paper_gold: str


def benchmark_rows(benchmark: str, path: str) -> list[BenchmarkRow]:
    """The problems of a released benchmark file (docs/evaluation.md lists them), with what each
    protocol needs. Our side is data.load_benchmark's reading, which also keeps only AIME 2024 and
    the LiveCodeBench window, as the official scoring did; the official golds of the math
    benchmarks come from the same rows as released (AMC's answer is a float, "142.0"; MATH-500's is
    the cleaned expected_answer of [PR]'s file, which both graders then get). Errors name the file,
    the row and the field."""
    if benchmark not in PROTOCOLS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    records = benchmark_files.read_rows(path)[0]
    ours = data.load_benchmark(path)
    if benchmark in CODE_BENCHMARKS:
        return [BenchmarkRow(p["id"], p["ability"], p["question"], p["ground_truth"],
                             paper_user_turn(benchmark, p["question"], {}), p["ground_truth"]) for p in ours]
    # HuggingFaceH4's MATH-500 has no expected_answer: its answer column is the closest gold there is.
    fallback = benchmark == "math500" and not all("expected_answer" in r for r in records)
    if fallback:
        logger.warning("%s: no expected_answer column: the official grader gets the answer column instead "
                       "(Table 2 used [PR]'s eval/data/math500/math_test_cleaned.json, whose expected_answer "
                       "differs in writing from the solution's answer in 85 of 500 rows)", path)
    rows = []
    for problem, record in zip(ours, _released_rows(ours, records, path)):
        try:
            gold = problem["ground_truth"] if fallback else paper_graders.paper_gold(benchmark, record)
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"{path}: problem {problem['id']}: the official gold needs field {error}") from None
        rows.append(BenchmarkRow(problem["id"], problem["ability"], problem["question"], problem["ground_truth"],
                                 paper_user_turn(benchmark, problem["question"], record), gold))
    return rows


def _released_rows(problems: list[dict], records: list[dict], path: str) -> list[dict]:
    """The row as released of each of data.load_benchmark's math problems. load_benchmark keeps
    the file's order and only drops rows (AIME of other years), and a math question is a column's
    text as it is, so each problem's row is the next one holding its question."""
    rows, remaining = [], iter(records)
    for problem in problems:
        row = next((r for r in remaining if any(r.get(c) == problem["question"] for c in QUESTION_COLUMNS)), None)
        if row is None:
            raise ValueError(f"{path}: problem {problem['id']}: no row of the file holds its question")
        rows.append(row)
    return rows


# =========================================================================================
# 4. Stop strings, applied after generation.
# =========================================================================================

def truncate_at_stop(text: str, stop_strings) -> str:
    """`text` up to the first stop string, the stop string excluded: what vLLM returns when
    generation stops on it (SamplingParams.stop, include_stop_str_in_output=False).

    Cutting afterwards is the same as stopping, for greedy decoding and for sampling alike:
    a token is drawn from a distribution that depends only on the tokens before it, so
    whether generation goes on after a point never changes what came before it; stopping only
    decides where the returned text ends. Generating on and cutting here therefore gives the
    stopped text exactly (greedy), and the same distribution of texts (sampling). vLLM looks
    for its stop strings after every token, so the stop string that is *completed* first
    wins, and the text is cut where that one starts; we take the occurrence that ends first
    (for equal ends, the one listed first, as vLLM's loop does within one token). Token
    boundaries are not visible here: two stop strings completed by one token at different
    characters would be ordered by vLLM's list, by us by position (never the case for the
    stop lists of PROTOCOLS). The length cap is unaffected: a response that hits max_tokens
    before any stop string is the same either way. Empty stop strings are ignored."""
    best = None  # ((end, list position), start)
    for order, stop in enumerate(stop_strings):
        if not stop:
            continue
        start = text.find(stop)
        if start != -1:
            key = (start + len(stop), order)
            if best is None or key < best[0]:
                best = (key, start)
    return text if best is None else text[:best[1]]


# =========================================================================================
# 5. Math verdicts under a hard time limit.
# =========================================================================================
# The official graders ran sympy under time limits (PaperProtocol.math_time_limit), and sympy
# can run for minutes on a hostile answer. A thread cannot be stopped, so each comparison runs
# in a worker process (support/workers.py; it imports support/paper_graders.py only) that is
# killed when its time is up; the verdict is then "wrong", as the official timeouts made it. The kill comes after KILL_AFTER seconds: the
# Qwen harness's own 3 s per comparison; for the PRIME grader, whose 1 s alarms were per
# sympy step and fell through to the next rule (paper_graders runs each step to completion
# instead), after 10 s, the longest limit it gives any step (its nested element comparisons).
KILL_AFTER = {b: 3.0 if b in paper_graders.QWEN_HARNESS else 10.0 for b in MATH_BENCHMARKS}
_POOL = workers.Pool("support.paper_graders", "serve", "official grader")


def grade_math(benchmark: str, response: str, gold: str) -> bool:
    """The official verdict on `response` (after the stop strings) against `gold` (a
    BenchmarkRow's paper_gold): paper_graders.paper_math_correct, in a worker process killed
    after KILL_AFTER[benchmark] seconds (then: wrong)."""
    if benchmark not in MATH_BENCHMARKS:
        raise ValueError(f"{benchmark!r} is not one of the math benchmarks {MATH_BENCHMARKS}")
    try:
        return _POOL.ask([benchmark, response, gold], KILL_AFTER[benchmark]) == "1"
    except workers.NoVerdict as error:  # the official time limits scored a comparison cut off as wrong
        logger.info("paper_eval: %s; scored wrong", error)
        return False
