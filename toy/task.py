"""toy/task.py: the toy task, a problem a tiny model can learn on a CPU, end to end.

`python train.py` must show PRIME raising held-out accuracy on a 2-core CPU within minutes. This
file holds everything that is the toy's and not PRIME's: its settings (ToyConfig) and the toy
preset's values for train.py's Config (PRESET); the problems, multi-step integer arithmetic in the
Eurus-2-RL-Data row schema (so they reach the trainer through data.rows_to_problems, the code path
of the 7B run); the careless SFT teacher; the character tokenizer and the tiny Qwen2 config; the
held-out split that train.py and eval.py both measure; and the counters that read how a response
took the task's decisions. docs/toy.md has what the toy has shown.

Read top to bottom: the settings, the task and its teachers, the tokenizer and model config, the
held-out problems, the habit counters.
"""

import dataclasses
import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass

from transformers import AutoTokenizer, Qwen2Config, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

import data
from support.cli import knob, out_of


# ==============================================================================================
# 1. Settings.
# ==============================================================================================

TOY_TASKS = ("expression", "products")  # ToyConfig.toy_task, toy_rows(task=...)


@dataclass
class ToyConfig:
    """the built-in toy task (train.py without --train_files)."""
    toy_task: str = knob("expression", "expression (one place where the careless habit strikes: the first line) "
                                       "or products (toy_products places, each on its own; toy/task.py)")
    toy_steps: int = knob(3, "operations per problem (expression task)")
    toy_products: int = knob(3, "products per problem, each a place to slip (products task)")
    toy_max_operand: int = knob(6, "operands are drawn from 1..toy_max_operand (at 9 the tiny model's arithmetic "
                                   "slips, not its habits, limit the accuracy; docs/toy.md)")
    toy_careless_share: float = knob(0.6, "share of SFT solutions worked left to right, ignoring that * comes first "
                                          "(wrong on ~37% of problems); products task: the chance of a slip at each "
                                          "product, drawn for each on its own")
    toy_train_problems: int = knob(20000, "size of the RL training pool")
    eval_problems: int = knob(500, "held-out problems for the greedy accuracy before/after")
    sft_problems: int = knob(20000, "SFT examples (worked solutions) of the toy's warm start")
    toy_hidden: int = knob(128, "toy model: hidden size")
    toy_layers: int = knob(4, "toy model: decoder layers")

    def problems(self):
        return [p for p in [out_of("toy_task", self.toy_task, TOY_TASKS)] if p]

    def row_args(self):
        """toy_rows's problem-shape keywords."""
        return dict(steps=self.toy_steps, max_operand=self.toy_max_operand, task=self.toy_task,
                    products=self.toy_products)


# The toy preset: train.py's Config values for the CPU (Config's defaults are the paper's recipe),
# and the SFT warm start's (support/sft.py). 64 kept prompts x 4 samples per step, two PRM and two
# policy updates of 128 responses, 100 steps; learning rates fit for a 0.9M-parameter model. The
# process rewards' normaliser divides over the whole step (process_norm_rows=0), as the toy's
# documented runs did in one process, now on any number of ranks.
PRESET = dict(
    out_dir="runs/toy", bf16=False, activation_checkpointing=False, max_prompt_tokens=64, max_response_tokens=48,
    prompts_per_step=64, prm_lr=1e-4, prm_mini_batch=128, policy_lr=2e-5, policy_mini_batch=128, steps=100,
    process_norm_rows=0, micro_batch_tokens=4096, save_every=25, eval_every=0, sft_epochs=2, sft_batch=32, sft_lr=1e-3)


# ==============================================================================================
# 2. The task: multi-step integer arithmetic, and its teachers.
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
# (multiplication table slips), so unlearning the habit could not gain much (docs/toy.md).
#
# That task has one place where the habit strikes, the first line, and outcome-only RL finds it
# as fast as PRIME does (docs/toy.md). The paper's claim rests on long
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
    lever is this first line (docs/toy.md): eval.py counts the answers on the toy (toy_openings)."""
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
# 3. The toy tokenizer and the tiny Qwen2 config.
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
# 4. The problems train.py trains and measures on.
# ==============================================================================================

def train_problems(toy, tokenizer, seed, max_prompt_tokens):
    """The RL training pool: toy_train_problems rows of the train split, seeded by the run's seed."""
    rows = toy_rows("train", toy.toy_train_problems, seed=seed, **toy.row_args())
    return data.rows_to_problems(rows, tokenizer, max_prompt_tokens, source="toy-train")[0]


def test_rows(toy, n=None):
    """The held-out split's rows, the same for every run of these settings (seed 0; the split is
    a hash of the problem text, so training never meets them): the first n (default eval_problems)."""
    return toy_rows("test", n or toy.eval_problems, seed=0, **toy.row_args())


def held_out_problems(toy, tokenizer, max_prompt_tokens, n=None):
    """The held-out problems train.py measures before and after PRIME, and eval.py measures on a
    toy checkpoint (source "toy-test": a problem's id ends in its row number)."""
    return data.rows_to_problems(test_rows(toy, n), tokenizer, max_prompt_tokens, source="toy-test")[0]


def run_settings(model_path):
    """(ToyConfig, max_prompt_tokens, max_response_tokens, the config.json read or None) of the
    train.py run that exported the checkpoint at `model_path`: train.py writes <out_dir>/config.json
    and exports into <out_dir> (policy, prm, sft), so the folder above a checkpoint holds its
    settings. Without one: the toy preset's."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    run = {}
    if os.path.isfile(path):
        with open(path) as f:
            run = json.load(f)
        if not isinstance(run, dict) or "toy_steps" not in run:  # another program's config.json
            run, path = {}, None
    else:
        path = None
    fields = {f.name for f in dataclasses.fields(ToyConfig)}
    toy = ToyConfig(**{k: v for k, v in run.items() if k in fields})
    return (toy, run.get("max_prompt_tokens", PRESET["max_prompt_tokens"]),
            run.get("max_response_tokens", PRESET["max_response_tokens"]), path)


# ==============================================================================================
# 5. Habit counters: how the responses took the task's decisions (eval.py prints them).
# ==============================================================================================

def _row_of(record, rows):
    """The toy row of an eval record (id "toy-test:<row>"; rows from test_rows)."""
    return rows[int(record["id"].rsplit(":", 1)[1])]


def openings(records, rows):
    """The expression task: how each answer opens (toy_first_step), {kind: {"responses", "right"}}.
    Of the problems where the order of operations matters at once, a careless SFT model opens most
    "careless"; RL's gain is mostly those turning "careful"."""
    counts = {}
    for record in records:
        kind = toy_first_step(_row_of(record, rows)["prompt"][0]["content"], record["response"])
        n, right = counts.get(kind, (0, 0))
        counts[kind] = (n + 1, right + record["score"])
    return {kind: {"responses": n, "right": right} for kind, (n, right) in sorted(counts.items())}


def decision_counts(records, rows):
    """The products task: every decision of every response (toy_decisions) counted by kind,
    {"careful" / "slip" / "neither": {"decisions"}}, and "all careful": {"responses", "right"},
    the responses that took all their problem's decisions carefully and how many were right."""
    decisions = {"careful": 0, "slip": 0, "neither": 0}
    careful_throughout = right = 0
    for record in records:
        row = _row_of(record, rows)
        kinds = [kind for _, kind in toy_decisions(row["prompt"][0]["content"], record["response"])]
        for kind in kinds:
            decisions[kind] += 1
        if kinds.count("careful") == len(row["extra_info"]["careless_decisions"]):
            careful_throughout += 1
            right += record["score"]
    return {**{kind: {"decisions": n} for kind, n in decisions.items()},
            "all careful": {"responses": careful_throughout, "right": right}}


def habits(records, toy, n=None):
    """(the counts of the toy's task, one line saying them) for eval records of the held-out split."""
    rows = test_rows(toy, n)
    if toy.toy_task == "expression":
        counts = openings(records, rows)
        return {"toy_openings": counts}, "toy first lines: " + ", ".join(
            f"{kind} {o['responses']} ({o['right']:g} right)" for kind, o in counts.items())
    counts = decision_counts(records, rows)
    every = counts["all careful"]
    return {"toy_decisions": counts}, ("toy decisions: " + ", ".join(
        f"{kind} {counts[kind]['decisions']}" for kind in ("careful", "slip", "neither"))
        + f"; every decision careful in {every['responses']} responses ({every['right']:g} right)")
