"""data.py: prompts in: the paper's prompts, the chat template, RL problems, the prompt stream.

PRIME learns from prompts alone: each step samples K responses per prompt, and a rule-based
verifier turns each response into an outcome reward r_o by comparing it with the prompt's
ground truth (docs/notes.md §5-§7). So the data the trainer needs is, per problem, the
chat-templated prompt token ids and a ground truth (an answer string for math, the tests for
code). This file produces exactly that, from Eurus-2-RL-Data, the paper's RL prompts, in local
parquet files (`load_rl_data`), or from the toy task's rows (toy/task.py), and serves the
prompts to each rank step by step (`PromptStream`, with the accuracy filter's buffer). Benchmark
files for eval.py are read by `load_benchmark` (support/benchmark_files.py, every released layout).

Both sources share one row schema (the verl / Eurus-2-RL-Data schema, docs/notes.md §6):

    {"data_source": str,
     "prompt": [{"role": "system"|"user"|"assistant", "content": str}, ...],   # a chat
     "ability": "math" | "code",
     "reward_model": {"style": "rule", "ground_truth": str},                 # answer or tests JSON
     "extra_info": {...}}                                                    # free-form

and one code path from rows to `Problem`s (`rows_to_problems`), so every CPU run of the toy
exercises the same templating, validation and length filter the 7B run uses.

Read top to bottom: the paper's prompts, the chat template, rows -> Problems, local files, the
prompt stream.
"""

import json
import logging
import os
import random
from dataclasses import dataclass

from transformers import AutoTokenizer

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
# Quirk of the official *evaluation*: [PR] `eval/system_prompt.md` holds this text with every
# newline written as the two characters backslash + "n", ends with one "\n" instead of two, and
# is read with `open().read()`, so the benchmark prompts of Table 2 contained literal "\n"
# sequences. Training uses this text; `eval.py --protocol=paper` sends the official file's
# bytes (support/paper_eval.py derives them from this text), `--protocol=ours` this text.
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
# 4. Local files: Eurus-2-RL-Data (docs/notes.md §6), tokenizers, benchmark and chat files.
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
        import datasets  # only where parquet files are read (support/gpu_check.py runs without it)
        table = datasets.Dataset.from_parquet(path)
        missing = [c for c in RL_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {table.column_names}, "
                             f"need {list(RL_COLUMNS)} (the Eurus-2-RL-Data schema)")
        file_problems, file_dropped = rows_to_problems(table, tokenizer, max_prompt_tokens, source=path)
        problems += file_problems
        n_dropped += file_dropped
    return problems, n_dropped

def load_tokenizer(path):
    """A checkpoint's own tokenizer (train.py saves it into every exported folder). Checked by
    hand: transformers quietly builds an empty tokenizer from a folder without one."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"no tokenizer in {path!r} (tokenizer.json / tokenizer_config.json); "
                                f"save the model's tokenizer into the checkpoint folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer in {path!r} has no chat template; prompts are chat-formatted")
    return tokenizer


def read_records(path):
    """A local file's rows as dicts: parquet through `datasets`, else JSON Lines (or one JSON array).
    Benchmark files (support/benchmark_files.py) and SFT chat files (support/sft.py) come this way."""
    if path.endswith(".parquet"):
        import datasets
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


def load_benchmark(path):
    """A benchmark file's problems as {"id", "question", "ability", "ground_truth"} dicts, for every
    layout the README lists, as released (support/benchmark_files.py reads them)."""
    from support.benchmark_files import load_benchmark as load
    return load(path)


# ==============================================================================================
# 5. The prompt stream: each rank's prompts, step after step (Alg. 1 line 3).
# ==============================================================================================

class PromptStream:
    """This rank's prompts, forever: a seeded shuffle of the training problems per epoch (every
    rank the same order; rank r takes every world-th), and a buffer of prompts that were kept
    beyond a step's quota. take() serves the buffer first, within the k prompts asked for; the
    official BufferedDataLoader instead puts the buffered prompts (up to a batch of them) on top
    of a fresh draw of a full batch in a step's first sampling round, which is larger than a batch
    there and lets more kept prompts overflow into the buffer (docs/notes.md §5)."""

    def __init__(self, n_problems, seed, rank, world):
        self.n, self.seed, self.rank, self.world = n_problems, seed, rank, world
        self.epoch, self.cursor, self.buffer = 0, 0, []

    def take(self, k):
        """The next k problem indices: buffered ones first, then this rank's slice of the
        epoch's shuffle, wrapping into the next epoch (a new shuffle) when it runs out."""
        out = self.buffer[:k]
        self.buffer = self.buffer[k:]
        while len(out) < k:
            # the epoch's order is a pure function of (seed, epoch): nothing to store but a cursor
            order = list(range(self.n))
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
            mine = order[self.rank::self.world]
            take = min(k - len(out), len(mine) - self.cursor)
            out += mine[self.cursor:self.cursor + take]
            self.cursor += take
            if self.cursor == len(mine):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state(self):  # what a checkpoint stores: enough to serve the same prompts after resume
        return {"epoch": self.epoch, "cursor": self.cursor, "buffer": self.buffer}

    def load(self, state):
        self.epoch, self.cursor, self.buffer = state["epoch"], state["cursor"], list(state["buffer"])
