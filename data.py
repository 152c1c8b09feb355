"""data.py: prompts in, the chat template, the toy task.

PRIME learns from prompts alone: each step samples K responses per prompt, and a rule-based
verifier turns each response into an outcome reward r_o by comparing it with the prompt's
ground truth (docs/notes.md §5-§7). So the data the trainer needs is, per problem, the
chat-templated prompt token ids and a ground truth (an answer string for math, the tests for
code). This file produces exactly that, from three sources:

  1. Eurus-2-RL-Data, the paper's RL prompts, from local parquet files (`load_rl_data`);
  2. the built-in toy task, multi-step integer arithmetic, for CPU runs (`toy_rows`), with
     its character-level tokenizer (`build_toy_tokenizer`) and tiny Qwen2 config
     (`toy_model_config`);
  3. benchmark files for eval.py (`load_benchmark`, `benchmark_messages`);
and, for the SFT stage, chats (`load_sft_data`: `messages` or `conversations` rows, each
tokenized with an assistant-only loss mask by `tokenize_chat`).

Sources 1 and 2 share one row schema (the verl / Eurus-2-RL-Data schema, docs/notes.md §6):

    {"data_source": str,
     "prompt": [{"role": "system"|"user"|"assistant", "content": str}, ...],   # a chat
     "ability": "math" | "code",
     "reward_model": {"style": "rule", "ground_truth": str},                 # answer or tests JSON
     "extra_info": {...}}                                                    # free-form

and one code path from rows to `Problem`s (`rows_to_problems`), so every CPU run of the toy
exercises the same templating, validation and length filter the 7B run uses.

Read top to bottom: the paper's prompts, the chat template, rows -> Problems, the parquet
loader, the toy task, its tokenizer and model config, SFT chats, benchmark files.
"""

import base64
import hashlib
import io
import json
import logging
import math
import os
import pickle
import random
import re
import zlib
from dataclasses import dataclass
from datetime import datetime

import datasets
from transformers import AutoTokenizer, Qwen2Config, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

logger = logging.getLogger(__name__)


# ==============================================================================================
# 1. The paper's prompts (docs/notes.md §6 and §8).
# ==============================================================================================

# The Eurus "action-centric" system prompt. Eurus-2-7B-SFT was fine-tuned on responses written
# under it and every Eurus-2-RL-Data prompt carries it as its system message, so the RL policy
# only ever saw prompts that start with it; eval therefore uses it too.
#
# The text is data, copied verbatim from the official code: `short_system_prompt` in [PR]
# `training/scripts/data_prepare.py`. It starts with one newline and ends with two;
# a decoded Eurus-2-RL-Data prompt quoted in public PRIME-derived code shows the same text between
# "<|im_start|>system\n" and "<|im_end|>", so this is the string the RL policy was trained with.
#
# Quirk of the official *evaluation* (not reproduced here): [PR] `eval/system_prompt.md` holds
# this text with every newline written as the two
# characters backslash + "n", ends with one "\n" instead of two, and is read with `open().read()`,
# so the benchmark prompts of Table 2 contained literal "\n" sequences. We use the training text
# everywhere; a user who wants the eval prompt byte for byte can apply that substitution.
SYSTEM_PROMPT = """
When tackling complex reasoning tasks, you have access to the following actions. Use them as needed to progress through your thought process.

[ASSESS]

[ADVANCE]

[VERIFY]

[SIMPLIFY]

[SYNTHESIZE]

[PIVOT]

[OUTPUT]

You should strictly follow the format below:

[ACTION NAME]

# Your action step 1

# Your action step 2

# Your action step 3

...

Next action: [NEXT ACTION NAME]

"""

# Appended to the question by ability (PRIME README "Usage" and the eval scripts). The math
# suffix asks for the \boxed{} answer that the verifier extracts; the code suffix asks for a
# final ```python block, which is what the code verifier executes (docs/notes.md §7).
MATH_SUFFIX = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
CODE_SUFFIX = "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."

ABILITIES = ("math", "code")


def benchmark_messages(question, ability):
    """The chat for one benchmark question, formatted as the official eval scripts do:
    the system prompt, then the question plus the math or code suffix as the user turn."""
    if ability not in ABILITIES:
        raise ValueError(f"ability must be one of {ABILITIES}, got {ability!r}")
    suffix = MATH_SUFFIX if ability == "math" else CODE_SUFFIX
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question + suffix}]


# ==============================================================================================
# 2. The chat template: messages -> prompt text -> token ids, and the ids that end a response.
# ==============================================================================================

def stop_token_ids(tokenizer):
    """The ids that end a response: the tokenizer's EOS, plus Qwen's end-of-turn <|im_end|> and
    end-of-text <|endoftext|> where the vocabulary has them. A chat model such as
    Eurus-2-7B-SFT ends its turn with <|im_end|>, while Qwen2.5-Math-7B's config names
    <|endoftext|> as EOS; either one means the response is over."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] + [vocab.get(token) for token in ("<|im_end|>", "<|endoftext|>")]
    return list(dict.fromkeys(i for i in ids if i is not None))  # dedupe, keep the order


# The policy continues the prompt after the template's generation prompt (for Qwen's ChatML:
# "<|im_start|>assistant\n"), so a prompt must end with it. Like the official data loader we
# render the template to text and then tokenize that text without adding special tokens (the
# template already wrote them); in transformers 5 this is what `apply_chat_template(...,
# tokenize=True)` does internally, and rendering first lets a whole dataset be tokenized in one
# fast batched call.

def render_prompt(tokenizer, messages):
    """The chat-templated prompt text, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_prompt(tokenizer, messages):
    """Token ids (a list of int) of the chat-templated prompt, generation prompt included."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


# ==============================================================================================
# 3. Rows -> Problems: validation, the template, the prompt-length filter.
# ==============================================================================================

@dataclass
class Problem:
    """One RL prompt, ready for the sampler and the verifier.

    id: "<source>:<row>" (the file, or toy split, and the row number), for logs and errors.
    ability: "math" or "code" (picks the verifier).
    prompt_ids: the chat-templated prompt tokens, ending with the generation prompt.
    ground_truth: math: the answer string; code: the tests as a JSON string
        {"inputs": [...], "outputs": [...], "fn_name"?: str}.
    data_source: the row's `data_source` (e.g. "numina_olympiads", "apps", "toy_arithmetic").
    prompt_text: the same prompt as text (what prompt_ids encode), for logs.
    """
    id: str
    ability: str
    prompt_ids: list[int]
    ground_truth: str
    data_source: str
    prompt_text: str


ROLES = ("system", "user", "assistant")


def _check_row(row, where):
    """Check one row of the shared schema; return (messages, ability, ground_truth, data_source).
    `where` names the file (or toy split) and row for the error message."""
    def bad(field, why):
        return ValueError(f"{where}, field {field!r}: {why}")

    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a dict, got {type(row).__name__}")
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise bad("data_source", f"expected a non-empty string, got {data_source!r}")
    messages = row.get("prompt")
    if not isinstance(messages, list) or not messages:
        raise bad("prompt", f"expected a non-empty list of {{role, content}} messages, "
                            f"got {type(messages).__name__}")
    for k, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            raise bad("prompt", f"message {k} must be {{'role': one of {ROLES}, 'content': str}}, "
                                f"got {message!r:.200}")
    ability = row.get("ability")
    if ability not in ABILITIES:
        raise bad("ability", f"expected one of {ABILITIES}, got {ability!r}")
    reward_model = row.get("reward_model")
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise bad("reward_model.ground_truth", f"expected a non-empty string, got {ground_truth!r:.200}")
    return messages, ability, ground_truth, data_source


def rows_to_problems(rows, tokenizer, max_prompt_tokens=None, source="rows"):
    """Turn rows of the shared schema into `Problem`s: check each row, apply the tokenizer's
    chat template, and drop prompts longer than `max_prompt_tokens` after templating (the
    official recipe drops prompts over 1024 tokens, docs/notes.md §6; None keeps all).

    Returns (problems, n_dropped). Raises ValueError naming `source`, the row number
    (0-based) and the field for a malformed row.
    """
    checked, texts = [], []
    for i, row in enumerate(rows):
        messages, ability, ground_truth, data_source = _check_row(row, f"{source}: row {i}")
        checked.append((i, ability, ground_truth, data_source))
        texts.append(render_prompt(tokenizer, messages))
    all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    problems = []
    for (i, ability, ground_truth, data_source), text, ids in zip(checked, texts, all_ids):
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            continue
        problems.append(Problem(f"{source}:{i}", ability, ids, ground_truth, data_source, text))
    n_dropped = len(checked) - len(problems)
    if n_dropped:
        logger.info("%s: dropped %d of %d prompts longer than %d tokens",
                    source, n_dropped, len(checked), max_prompt_tokens)
    return problems, n_dropped


# ==============================================================================================
# 4. Eurus-2-RL-Data: local parquet files (docs/notes.md §6).
# ==============================================================================================
# Download train.parquet / validation.parquet of PRIME-RL/Eurus-2-RL-Data and pass their paths.
# Each row's `prompt` already holds the system prompt above and the user question; we apply the
# model's chat template to it as given, as the official data loader does.

RL_COLUMNS = ("data_source", "prompt", "ability", "reward_model")  # `extra_info` is not used


def load_rl_data(paths, tokenizer, max_prompt_tokens):
    """Load Eurus-2-RL-Data-style parquet file(s) into `Problem`s.

    paths: one path or a list of paths. Returns (problems, n_dropped), where n_dropped counts
    the prompts longer than `max_prompt_tokens` tokens after the chat template (also logged).
    A missing file is a FileNotFoundError; a missing column or a malformed row is a ValueError
    naming the file (and the row number and field).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    problems, n_dropped = [], 0
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"RL data file {path!r} does not exist")
        table = datasets.Dataset.from_parquet(path)
        missing = [c for c in RL_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {table.column_names}, "
                             f"need {list(RL_COLUMNS)} (the Eurus-2-RL-Data schema)")
        file_problems, file_dropped = rows_to_problems(table, tokenizer, max_prompt_tokens, source=path)
        problems += file_problems
        n_dropped += file_dropped
    return problems, n_dropped


# ==============================================================================================
# 5. The toy task: multi-step integer arithmetic, for CPU runs.
# ==============================================================================================
# `python train.py` must show PRIME raising held-out accuracy on a 2-core CPU within minutes, so
# it needs a task a tiny model can partly learn by SFT and then improve on by RL, with a verifiable
# answer and several steps per solution (PRIME's implicit PRM credits the tokens of each step,
# so the solutions should have steps that can go wrong one by one). The task:
# an expression of `steps` operations on integers 1..max_operand, evaluated with the usual
# precedence (* before + and -, then left to right), e.g.
#
#   prompt (user turn):  5+4*6-3
#   solution:            5+24-3
#                        29-3
#                        \boxed{26}
#
# Each line of the worked solution performs exactly one operation and rewrites what is left of
# the expression, and the last operation's result is written as \boxed{answer}, which
# verify.math_correct extracts and compares with the ground truth "26". Difficulty knobs:
# `steps` (length), `max_operand` (operand size), `ops` (without "*" the numbers stay small).
#
# The rows use the Eurus schema with data_source "toy_arithmetic" and a bare user turn: the
# system prompt would cost ~400 character tokens per prompt for nothing a tiny model can use.
# Toy rows become Problems through the parquet path: rows_to_problems(rows, tokenizer, ...).
#
# The SFT data come from a careless teacher. RL can only amplify what the SFT model already
# samples now and then (the paper's SFT stage exists to give RL behaviours to choose between), so
# the toy gives it a habit worth unlearning: in `careless_share` of the SFT solutions (0.6 in the
# toy preset) the teacher works strictly left to right, ignoring that * comes first:
#
#   careless solution:   9*6-3
#                        54-3
#                        \boxed{51}        (wrong: the answer is 26)
#
# Left to right and the usual order agree on some problems ("6*4+5") and not on others
# ("5+4*6"): with 3 operations on 1..6 (the default) they disagree on about 37%. The SFT model
# then opens such problems the careless way in roughly 60% of its samples, so its greedy answer
# is wrong on nearly all of them, while a sample at temperature 1 still takes the right first
# step a third of the time. The verifier (which knows the true answer) rewards those samples,
# and the implicit PRM learns where they part ways with the wrong ones: the first line. This is
# the situation RL is for (a model that can do the task but often does not); the ground truth of
# every row is the true value, only the SFT target text is careless. Operands stop at 6 by
# default: at 1..9 the tiny model's careful openings were still wrong two times in three
# (multiplication table slips), so unlearning the habit could not gain much (README).
#
# That task has one place where the habit strikes, the first line, and outcome-only RL finds it
# as fast as PRIME does (README, "Does the dense reward help?"). The paper's claim rests on long
# responses in which several steps can each go right or wrong. The second task, "products", has
# `products` such places, each decided on its own: a leading number and products of two operands,
# all added, worked in one pass left to right in which a product binds first:
#
#   prompt:              5+4*6+3*2
#   solution:            5+24+3*2          decision 1: 4*6 before 5+4
#                        29+3*2
#                        29+6              decision 2: 3*2 before 29+3
#                        \boxed{35}
#
# Its careless teacher slips at each decision on its own, with probability careless_share:
# it does the + first, as if the expression were "(5+4)*6" ("9*6+3*2" -> "54+3*2": wrong
# whenever the product's right operand is not 1). So the SFT model slips at each decision with
# about that probability, independently, and a response is right only when every decision went
# right: the outcome says whether all n went right, never which one went wrong. The implicit
# PRM can learn which line did; toy_decisions reads a response's decisions back. Only + joins
# the products: with - the values go negative, and the tiny model's signed arithmetic
# ("-15+12") then failed more often than its habit did.
#
# Held-out problems must never appear in training. A problem's split is a function of its text
# alone (a hash), and each split's generator keeps only its own problems (rejection sampling),
# so train and test are disjoint for every seed and every difficulty setting.

TOY_SOURCE = "toy_arithmetic"
TOY_TEST_SHARE = 4  # one problem text in 4 belongs to the held-out split
TOY_TASKS = ("expression", "products")  # toy_rows(task=...)


def toy_split_of(question):
    """"train" or "test": which split the problem with this text belongs to (fixed forever)."""
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TOY_TEST_SHARE == 0 else "train"


def _apply(a, op, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def _expression(numbers, ops):
    """Interleave numbers and operators: [7, 4, 6], ["+", "*"] -> "7+4*6"."""
    return "".join(str(n) + op for n, op in zip(numbers, ops)) + str(numbers[-1])


def toy_solution(numbers, ops, careless=False, slips=None):
    """The worked solution and its boxed result for numbers[0] ops[0] numbers[1] ...

    One line per operation, the rest of the expression rewritten after it; the final result is
    boxed. Products are of positive numbers, so a negative value can only appear as the leftmost
    term ("3-9+4" -> "-6+4"), and every careful line is a valid expression with the same value.

    slips=None: the expression task's teacher. Each line does the first "*" if any is left,
    else the leftmost operation (+ and - are left-associative). careless=True is its careless
    twin: always the leftmost operation, the whole solution worked left to right
    ("7+4*6" -> "11*6" -> 66).

    slips a sequence of bools: the products task's teacher. One pass left to right: the
    leftmost operation, unless it is a + or - whose right operand is multiplied next, where the
    product binds first ("5+4*6+3*2" -> "5+24+3*2" -> "29+3*2" -> "29+6"). Such a line is a
    *decision*; at the k-th, slips[k] true does the + or - anyway, as if the expression were
    "(5+4)*6" ("9*6+3*2" -> "54+3*2": wrong); decisions past the end of slips are careful. Each
    product is met at exactly one decision, so a problem with n products has n of them.
    """
    numbers, ops = list(numbers), list(ops)
    lines, decision = [], 0
    while ops:
        if slips is None:
            k = ops.index("*") if "*" in ops and not careless else 0
        else:
            k = 0
            if len(ops) > 1 and ops[0] != "*" and ops[1] == "*":  # a decision
                k = 0 if decision < len(slips) and slips[decision] else 1
                decision += 1
        numbers[k:k + 2] = [_apply(numbers[k], ops[k], numbers[k + 1])]
        del ops[k]
        lines.append(_expression(numbers, ops))
    answer = numbers[0]
    lines[-1] = f"\\boxed{{{answer}}}"
    return "\n".join(lines), answer


def _parse(expression):
    """(numbers, ops) of an expression line such as "-6+4*2", or None if it is not one."""
    if not re.fullmatch(r"-?\d+([+\-*]\d+)*", expression):
        return None
    numbers = [int(n) for n in re.findall(r"\d+", expression)]
    if expression.startswith("-"):
        numbers[0] = -numbers[0]
    return numbers, re.findall(r"(?<=\d)[+\-*]", expression)


def _first_line(numbers, ops, **teacher):
    """The first line of a teacher's worked solution (toy_solution's keywords pick the teacher)."""
    return toy_solution(numbers, ops, **teacher)[0].split("\n")[0]


def toy_first_step(question, response):
    """How `response` opens the toy problem `question` (e.g. "5+4*6-3"): "either" when the careful
    and the careless teacher write the same first line (the order of operations does not matter
    yet), else "careful", "careless" or "neither", by the response's first line. The toy's one
    lever is this first line (README, "The toy task"): eval.py counts the answers on the toy."""
    numbers, ops = _parse(question)
    careful, careless = _first_line(numbers, ops), _first_line(numbers, ops, careless=True)
    if careful == careless:
        return "either"
    first = response.split("\n")[0]
    return "careful" if first == careful else "careless" if first == careless else "neither"


def toy_decisions(question, response):
    """How `response` takes each decision of the products task's teacher (see toy_solution) that
    it meets, following its own lines: a list of (line number, kind) per decision, kind "careful",
    "slip" (the careless teacher's line) or "neither". Each line is judged against the line before
    it (the question for line 0), so a step after a slip is judged on the expression the response
    wrote; the walk stops at a line that is not an expression (the boxed answer, anything else).
    A products task response that takes every decision carefully and slips nowhere else is right."""
    decisions, current = [], _parse(question)
    for i, line in enumerate(response.split("\n")):
        if current is None or len(current[1]) < 2:  # one operation left: no decision possible
            break
        careful, slip = _first_line(*current, slips=[]), _first_line(*current, slips=[True])
        if careful != slip:
            decisions.append((i, "careful" if line == careful else "slip" if line == slip else "neither"))
        current = _parse(line)
    return decisions


def toy_rows(split, n, seed=0, steps=3, max_operand=6, ops="+-*", careless_share=0.0, task="expression",
             products=3):
    """`n` distinct toy problems of `split` ("train" or "test") as Eurus-schema rows.

    task "expression": `steps` operations drawn from `ops`; the careless teacher works a whole
    solution left to right, with probability careless_share per solution. task "products":
    `products` products of two operands added to a leading number ("5+4*6+3*2"; steps and ops
    are not used); the careless teacher slips at each of the `products` decisions on its own,
    with probability careless_share each (see above).

    Deterministic in its arguments; a larger n extends a smaller one, and careless_share changes
    only the solutions, never the problems. extra_info holds {"split", "index", "solution",
    "careless"}: the solution is the SFT target, written by the teacher; "careless" says whether
    the teacher was careless anywhere, and on the products task "careless_decisions" lists its
    choice at each decision in order. The ground truth is always the true value. Raises
    ValueError when the split holds fewer than n distinct problems of this size.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if task not in TOY_TASKS:
        raise ValueError(f"task must be one of {TOY_TASKS}, got {task!r}")
    if steps < 1 or max_operand < 1 or not ops or set(ops) - set("+-*") or products < 1:
        raise ValueError(f"need steps >= 1, products >= 1, max_operand >= 1 and ops drawn from '+-*'; got "
                         f"steps={steps}, products={products}, max_operand={max_operand}, ops={ops!r}")
    if not 0.0 <= careless_share <= 1.0:
        raise ValueError(f"careless_share must be in [0, 1], got {careless_share}")
    size = f"steps={steps}, ops={ops!r}" if task == "expression" else f"products={products}"
    rng = random.Random(f"{TOY_SOURCE}:{split}:{seed}")
    teacher = random.Random(f"{TOY_SOURCE}:teacher:{split}:{seed}")  # its own stream: same problems
    seen, rows = set(), []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n + 10_000:  # the problem space is (nearly) exhausted
            raise ValueError(f"only {len(rows)} distinct {split} problems found with {size}, "
                             f"max_operand={max_operand}; asked for {n}")
        if task == "expression":
            numbers = [rng.randint(1, max_operand) for _ in range(steps + 1)]
            chosen_ops = [rng.choice(ops) for _ in range(steps)]
        else:  # a, then "+b*c" per product
            numbers = [rng.randint(1, max_operand) for _ in range(2 * products + 1)]
            chosen_ops = ["+", "*"] * products
        question = _expression(numbers, chosen_ops)
        if question in seen or toy_split_of(question) != split:
            continue
        seen.add(question)
        answer = toy_solution(numbers, chosen_ops)[1]
        extra = {"split": split, "index": len(rows)}
        if task == "expression":
            careless = teacher.random() < careless_share  # drawn for every row: same problems
            extra.update(solution=toy_solution(numbers, chosen_ops, careless=careless)[0], careless=careless)
        else:  # one draw per decision: the products task meets exactly `products` decisions
            slips = [teacher.random() < careless_share for _ in range(products)]
            extra.update(solution=toy_solution(numbers, chosen_ops, slips=slips)[0], careless=any(slips),
                         careless_decisions=slips)
        rows.append({
            "data_source": TOY_SOURCE,
            "prompt": [{"role": "user", "content": question}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(answer)},
            "extra_info": extra,
        })
    return rows


def toy_chats(rows):
    """The toy's SFT data: each row's question and its worked solution (extra_info["solution"])
    as a chat, [user, assistant], for tokenize_chat."""
    chats = []
    for i, row in enumerate(rows):
        solution = (row.get("extra_info") or {}).get("solution")
        if not isinstance(solution, str) or not solution:
            raise ValueError(f"SFT row {i}, field 'extra_info.solution': expected a non-empty string")
        chats.append(row["prompt"] + [{"role": "assistant", "content": solution}])
    return chats


# ==============================================================================================
# 6. The toy tokenizer and the tiny Qwen2 config.
# ==============================================================================================
# One token per character keeps the toy honest and small: digits are read and written one at a
# time, and the vocabulary is ~100 ids, so the embedding and LM head are tiny. The tokenizer is
# an ordinary Hugging Face tokenizer folder, and the special tokens and chat template are
# Qwen2.5's (ChatML), so every piece of the pipeline (template, EOS handling, saving/loading,
# eval.py) runs the way it does for Eurus-2-7B.

TOY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline
# Qwen2.5's special tokens, placed after the ordinary vocabulary as Qwen places them.
# <|endoftext|> pads; <|im_end|> ends a chat turn and is the EOS the sampler stops on (as for
# Qwen2.5 chat models).
PAD_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen2.5's ChatML layout, without Qwen's default system message (no tools either).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_toy_tokenizer(path):
    """Write the character-level ChatML tokenizer as a Hugging Face tokenizer folder at `path`
    and return it as loaded back by `AutoTokenizer.from_pretrained(path)` (offline).

    It is a genuine `Qwen2Tokenizer` (byte-level BPE, Qwen's pre-tokenizer) whose vocabulary is
    single characters and which has no merges, so every printable ASCII character and "\n" is
    one token; <|endoftext|> (pad), <|im_start|> and <|im_end|> (eos) are one token each, and
    decode() returns the exact text. Being Qwen2's own class matters: a checkpoint folder holds
    a config.json with model_type "qwen2", and transformers' AutoTokenizer then loads the
    tokenizer files in it *as* a Qwen2Tokenizer whatever class they were saved from.
    (Without merges, a character outside the vocabulary has no token and is dropped.)
    """
    byte_symbol = bytes_to_unicode()  # byte-level BPE spells " " as "Ġ" and "\n" as "Ċ"
    vocab = {byte_symbol[ord(c)]: i for i, c in enumerate(TOY_CHARS)}
    vocab.update({token: len(TOY_CHARS) + i for i, token in enumerate((PAD_TOKEN, IM_START, IM_END))})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, pad_token=PAD_TOKEN,
                               eos_token=IM_END, extra_special_tokens=[IM_START], chat_template=CHATML_TEMPLATE,
                               clean_up_tokenization_spaces=False)  # "1 , 2" must not decode as "1, 2"
    tokenizer.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def toy_model_config(tokenizer, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     intermediate_size=384, max_position_embeddings=512, tie_word_embeddings=False):
    """A tiny Qwen2 config for `tokenizer` (model.Qwen2ForCausalLM(config) builds it).

    vocab_size is the real vocabulary rounded up to a multiple of 64, as Qwen pads its embedding
    matrix (Qwen2.5-Math-7B: 152,064 rows for 151,665 tokens); the extra ids are never produced
    by the tokenizer, so the sampler must not sample them. max_position_embeddings must cover prompt + response.
    Qwen2.5 has no BOS token; like its config we name <|endoftext|> as bos_token_id (never
    prepended). Defaults follow Qwen2.5-Math-7B where size does not matter: GQA (2 query heads
    per key/value head), untied head, RMSNorm eps 1e-6, RoPE base 10000, no sliding window.
    """
    return Qwen2Config(
        vocab_size=64 * math.ceil(len(tokenizer) / 64),
        hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-6, use_sliding_window=False,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


# ==============================================================================================
# 7. SFT chats: conversations -> token ids with an assistant-only loss mask.
# ==============================================================================================
# Eurus-2-7B-SFT was fine-tuned from Qwen2.5-Math-7B-Base on ~230K chats (docs/notes.md §6).
# `train.py --stage=sft --sft_files=...` reads chat files in the ecosystem's two conventions:
# `messages`, a list of {role, content} (TRL's SFT trainer reads this), or ShareGPT's
# `conversations`, a list of {from, value} (from: system / human / gpt, or user / assistant);
# either may come with a `system` column. Each chat goes through the model's own chat template,
# and only the assistant's tokens carry loss: its content and the end-of-turn token that closes
# it, so that the model learns to stop where the sampler stops.

CHAT_COLUMNS = ("messages", "conversations")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}


def chat_messages(row, where):
    """The row's chat as [{role, content}], checked: a known role, a non-empty string content,
    the first turn system or user, at least one assistant turn. `where` names file and row."""
    def bad(field, why):
        return ValueError(f"{where}, field {field!r}: {why}")

    column = next((c for c in CHAT_COLUMNS if row.get(c) is not None), None)
    if column is None:
        raise ValueError(f"{where}: no chat column (expected one of {CHAT_COLUMNS})")
    turns = row[column]
    if not isinstance(turns, list) or not turns:
        raise bad(column, f"expected a non-empty list of turns, got {type(turns).__name__}")
    role_key, text_key = ("role", "content") if column == "messages" else ("from", "value")
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise bad(column, f"turn {k} must be a dict with {role_key!r} and {text_key!r}, got {turn!r:.100}")
        role = turn.get(role_key) if column == "messages" else SHAREGPT_ROLES.get(turn.get(role_key))
        if role not in ROLES:
            raise bad(column, f"turn {k} has an unknown role {turn.get(role_key)!r}")
        content = turn.get(text_key)
        if not isinstance(content, str) or not content.strip():
            raise bad(column, f"turn {k} ({role}) has empty content")
        messages.append({"role": role, "content": content})
    system = row.get("system")
    if system is not None and messages[0]["role"] != "system":
        if not isinstance(system, str) or not system.strip():
            raise bad("system", f"expected a non-empty string, got {system!r:.100}")
        messages.insert(0, {"role": "system", "content": system})
    if messages[0]["role"] not in ("system", "user"):
        raise bad(column, "the chat must open with a system or user turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise bad(column, "no assistant turn: nothing to train on")
    return messages


def tokenize_chat(tokenizer, messages, stop_ids):
    """(ids, loss): the chat's token ids through the tokenizer's chat template and, per token,
    1 where it is trained (an assistant's content and the end-of-turn that closes it), else 0.

    The template renders the chat turn by turn: before assistant turn i, the chat up to it with
    the generation prompt (what the sampler is given), then with turn i (what it should write).
    The two texts' difference is the assistant's part; each piece is tokenized on its own, as at
    inference, where the prompt is tokenized alone and the model writes the rest. Tokens after
    the last trained one (the template's trailing newline) are dropped: they train nothing.
    Raises ValueError if the template does not render the chat as a growing prefix."""
    ids, loss, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (head.startswith(done) and full.startswith(head)):
            raise ValueError("the chat template does not render this chat turn by turn (each rendering a "
                             "prefix of the next), so the assistant's tokens cannot be found")
        context = tokenizer(head[len(done):], add_special_tokens=False)["input_ids"]
        reply = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        end = next((k + 1 for k, t in enumerate(reply) if t in stop_ids), len(reply))  # through the stop id
        ids += context + reply
        loss += [0] * len(context) + [1] * end + [0] * (len(reply) - end)
        done = full
    last = max(k for k, trained in enumerate(loss) if trained)
    return ids[:last + 1], loss[:last + 1]


def load_sft_data(paths, tokenizer, max_tokens):
    """Chats from local parquet / JSON / JSON Lines files as (ids, loss) pairs (tokenize_chat).
    A chat longer than max_tokens is dropped and counted; nothing else is skipped: a malformed
    row raises ValueError naming its file, row and field. Returns (chats, n_dropped)."""
    stop_ids = set(stop_token_ids(tokenizer))
    chats, dropped = [], 0
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SFT file {path!r} does not exist")
        for i, row in enumerate(_read_records(path)):
            where = f"{path}: row {i}"
            messages = chat_messages(row, where)  # its errors name the file, row and field
            try:
                ids, loss = tokenize_chat(tokenizer, messages, stop_ids)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            if len(ids) > max_tokens:
                dropped += 1
                continue
            chats.append((ids, loss))
    if not chats:
        raise ValueError(f"no SFT chats in {paths} within {max_tokens} tokens ({dropped} longer dropped)")
    return chats, dropped


# ==============================================================================================
# 8. Benchmark files for eval.py (docs/notes.md §8).
# ==============================================================================================
# Benchmarks come as local JSON Lines (or JSON array) or parquet files with various column names.
# `load_benchmark` maps them to one form, {"id", "question", "ability", "ground_truth"}; eval.py
# then builds the prompt with `benchmark_messages` and scores with verify.py. The first present
# name in each list wins (e.g. MATH-500 has both `answer` and `solution`: `answer` is taken).

QUESTION_COLUMNS = ("problem", "question", "prompt")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth", "reward_model.ground_truth", "solution")
TESTS_COLUMNS = ("tests", "input_output", "test_cases")
ID_COLUMNS = ("id", "idx", "problem_id", "unique_id")

# AIME 2024. AI-MO's aimo-validation-aime has 90 problems: AIME 2022, 2023 and 2024, contests I
# and II, 15 each. The paper's AIME 2024 score counts only the 30 of 2024: the official
# eval/Math/aime/evaluate_aime.py groups rows by `url.split("/")[-2]` and reports the
# "2024_AIME_I_Problems" + "2024_AIME_II_Problems" groups. The url is the AoPS wiki page, e.g.
# https://artofproblemsolving.com/wiki/index.php/2024_AIME_II_Problems/Problem_8.
AIME_URL = re.compile(r"/(\d{4})_AIME_(?:I|II)_Problems/")

# LeetCode as in [PR]'s eval data (eval/data/leetcode/leetcode-test.json, JSON Lines despite the
# name): `task_id`, the statement and code stub in `prompt` and `prompt_sft`, and the problem's own
# test code in `test` (asserts on `my_solution = Solution()`). The official eval asks with
# `prompt_sft` plus the code suffix (evaluate_leetcode.make_conv_hf) and passes a program when it
# runs, followed by `test`, without an error: verify.py's "leetcode" judge.
LEETCODE_COLUMNS = ("task_id", "prompt_sft", "test")

# LiveCodeBench code_generation_lite rows as released (lcb_runner/benchmarks/code_generation.py):
# `question_content`, `starter_code`, `public_test_cases` (a JSON list of {input, output, testtype}),
# `private_test_cases` (the same list, JSON, or base64 of zlib-compressed pickled JSON), `metadata`
# (JSON; `func_name` for functional problems), `contest_date`, `question_id`. The tests are the
# public then the private ones, as lcb_runner's get_evaluation_sample lists them; verify.py's
# "livecodebench" judge applies lcb_runner's comparison rules. The paper scored release_v4
# generations on problems of 2023-05-01..2024-05-31 ([PR] eval/run.sh: compute_scores
# --start_date 2023-05-01 --end_date 2024-05-31, compared as datetimes at midnight).
LCB_COLUMNS = ("question_content", "public_test_cases", "private_test_cases", "metadata")
LCB_WINDOW = (datetime(2023, 5, 1), datetime(2024, 5, 31))


def _read_records(path):
    """The file's rows as dicts: parquet through `datasets`, else JSON Lines (or one JSON array)."""
    if path.endswith(".parquet"):
        return datasets.Dataset.from_parquet(path).to_list()
    if not path.endswith((".jsonl", ".json")):
        raise ValueError(f"{path}: unknown file type; expected .jsonl, .json or .parquet")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON ({e})") from None
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: every record must be a JSON object")
    return records


def _get(record, column):
    """record[column], where "a.b" reads a nested field (reward_model.ground_truth)."""
    value = record
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _as_text(value):
    """A ground truth as a string: numbers without a spurious ".0" (AMC answers are floats),
    tests dicts/lists as JSON, strings as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value if isinstance(value, str) else str(value)


def load_benchmark(path):
    """Read a benchmark file into a list of {"id", "question", "ability", "ground_truth"} dicts.

    PRIME's LeetCode file and LiveCodeBench code_generation_lite rows are recognised by their
    columns and read as released (see LEETCODE_COLUMNS and LCB_COLUMNS above); their ground
    truth is tests JSON naming the official judge. Otherwise columns are found by name: the
    question from problem/question/prompt (a string); for code the tests from
    tests/input_output/test_cases (ability "code" whenever such a column exists; ground_truth is
    then the tests JSON); for math the answer from answer/final_answer/ground_truth/
    reward_model.ground_truth/solution; the id from id/idx/problem_id/unique_id, else the row
    number. Given AI-MO's aimo-validation-aime (AIME 2022-2024), only the 30 problems of 2024
    are kept, as in the paper; given LiveCodeBench rows of several periods, only those of the
    paper's window. A missing file, an unknown column layout, an empty file or an empty or
    malformed field is a clear error naming the file, the row and the field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark file {path!r} does not exist")
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path}: the file holds no problems")
    if any("prompt_sft" in r and "test" in r for r in records):
        return _leetcode_problems(path, records)
    if any("public_test_cases" in r for r in records):
        return _livecodebench_problems(path, records)

    columns = sorted({key for r in records for key in r})

    def present(names):  # the first of `names` that some row fills
        return next((c for c in names if any(_get(r, c) is not None for r in records)), None)

    question_col, tests_col = present(QUESTION_COLUMNS), present(TESTS_COLUMNS)
    answer_col = tests_col or present(ANSWER_COLUMNS)
    if question_col is None or answer_col is None:
        raise ValueError(f"{path}: unknown column layout; found columns {columns}. Accepted: question "
                         f"from {list(QUESTION_COLUMNS)}, and math answers from {list(ANSWER_COLUMNS)} "
                         f"or code tests from {list(TESTS_COLUMNS)}")
    id_col = present(ID_COLUMNS)
    ability = "code" if tests_col else "math"

    problems = []
    for i, record in enumerate(records):
        question, truth = _get(record, question_col), _get(record, answer_col)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}: row {i}, field {question_col!r}: expected a non-empty string, "
                             f"got {question!r:.100}")
        if truth is None or (isinstance(truth, str) and not truth.strip()):
            raise ValueError(f"{path}: row {i}, field {answer_col!r}: missing")
        if answer_col == "final_answer" and isinstance(truth, list) and truth:
            truth = truth[0].strip().strip("$")  # OlympiadBench: ["$3$"], read as the Qwen2.5-Math harness does
        problem_id = _get(record, id_col) if id_col else None
        problems.append({"id": str(i if problem_id is None else problem_id), "question": question,
                         "ability": ability, "ground_truth": _as_text(truth)})

    # The AIME 2024 selection: only for a file whose every row is an AoPS AIME page, spanning
    # several years, 2024 among them (a file of 2024 or 2025 problems alone is kept whole).
    years = [AIME_URL.search(str(r.get("url", ""))) for r in records]
    if all(years) and len({m.group(1) for m in years}) > 1 and any(m.group(1) == "2024" for m in years):
        problems = [p for p, m in zip(problems, years) if m.group(1) == "2024"]
        logger.info("%s: AIME file with several years: kept the %d problems of 2024 of %d",
                    path, len(problems), len(records))
    return problems


def _required_text(record, field, where):
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}, field {field!r}: expected a non-empty string, got {value!r:.100}")
    return value


def _leetcode_problems(path, records):
    """PRIME's LeetCode rows -> problems judged by verify.py's "leetcode" judge."""
    problems = []
    for i, record in enumerate(records):
        where = f"{path}: row {i}"
        task_id, question, test_code = (_required_text(record, field, where) for field in LEETCODE_COLUMNS)
        problems.append({"id": task_id, "question": question, "ability": "code",
                         "ground_truth": json.dumps({"judge": "leetcode", "test_code": test_code})})
    return problems


class _StringUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a plain JSON string. A pickle that names any class or function
    (which could run code while loading) is refused rather than trusted."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only a string is expected)")


def _lcb_tests(value, where):
    """A LiveCodeBench test-case field -> [{"input": str, "output": str, "testtype": ...}]:
    JSON, or (private tests, as released) base64 of zlib-compressed pickled JSON."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    try:
        tests = json.loads(value)
    except json.JSONDecodeError:
        try:
            text = _StringUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value, validate=True)))).load()
            tests = json.loads(text)
        except (ValueError, TypeError, EOFError, zlib.error, pickle.UnpicklingError) as error:
            raise ValueError(f"{where}: neither JSON nor base64 of zlib-compressed pickled JSON "
                             f"({type(error).__name__}: {error})") from None
    if not isinstance(tests, list) or not all(
            isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
            for t in tests):
        raise ValueError(f"{where}: expected a list of {{'input': str, 'output': str, 'testtype': str}}")
    return tests


def _lcb_question(content, starter_code):
    """The question as [PR]'s LiveCodeBench run asked it (lcb_runner prompts/code_generation.py,
    get_generic_question_template_answer; benchmark_messages then adds the code suffix, as
    [PR]'s format_prompt_generation did)."""
    prompt = f"### Question:\n{content}\n\n"
    if starter_code:
        prompt += ("### Format: You will use the following starter code to write the solution to the "
                   "problem and enclose your code within delimiters.\n")
        prompt += f"```python\n{starter_code}\n```\n\n"
    else:
        prompt += ("### Format: Read the inputs from stdin solve the problem and write the answer to "
                   "stdout (do not directly test on the sample inputs). Enclose your code within "
                   "delimiters as follows.\n")
        prompt += "```python\n# YOUR CODE HERE\n```\n\n"
    return prompt + "### Answer: (use the provided format with backticks)\n\n"


def _livecodebench_problems(path, records):
    """LiveCodeBench code_generation_lite rows -> problems judged by verify.py's
    "livecodebench" judge, cut to the paper's window when the file reaches into it."""
    problems, dates = [], []
    for i, record in enumerate(records):
        where = f"{path}: row {i}"
        content = _required_text(record, "question_content", where)
        starter_code = record.get("starter_code") or ""
        if not isinstance(starter_code, str):
            raise ValueError(f"{where}, field 'starter_code': expected a string, got {starter_code!r:.100}")
        tests = (_lcb_tests(record.get("public_test_cases"), f"{where}, field 'public_test_cases'")
                 + _lcb_tests(record.get("private_test_cases"), f"{where}, field 'private_test_cases'"))
        if not tests:
            raise ValueError(f"{where}, fields 'public_test_cases'/'private_test_cases': no test cases")
        metadata = record.get("metadata") or "{}"
        try:
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}, field 'metadata': not valid JSON ({error})") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}, field 'metadata': expected a JSON object, got {metadata!r:.100}")
        fn_name = metadata.get("func_name")
        if any(t.get("testtype") == "functional" for t in tests) and not isinstance(fn_name, str):
            raise ValueError(f"{where}, field 'metadata': functional tests need a 'func_name'")
        try:
            dates.append(datetime.fromisoformat(_required_text(record, "contest_date", where)))
        except ValueError as error:
            raise ValueError(f"{where}, field 'contest_date': {error}") from None
        ground_truth = {"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests],
                        "judge": "livecodebench"}
        if fn_name:
            ground_truth["fn_name"] = fn_name
        problem_id = record.get("question_id")
        problems.append({"id": str(i if problem_id is None else problem_id),
                         "question": _lcb_question(content, starter_code), "ability": "code",
                         "ground_truth": json.dumps(ground_truth)})
    start, end = LCB_WINDOW
    in_window = [p for p, date in zip(problems, dates) if start <= date <= end]
    if in_window and len(in_window) < len(problems):
        logger.info("%s: LiveCodeBench rows of several periods: kept the %d of %d in the paper's "
                    "window %s..%s", path, len(in_window), len(problems), start.date(), end.date())
        return in_window
    return problems
