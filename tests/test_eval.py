"""eval.py: the scoring and aggregation of `evaluate` (with known responses), a real run on a tiny
random model, the command line on benchmark files (columns, AIME 2024, the table, the outputs,
errors), and a 2-rank gloo run that must equal one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoTokenizer

import data
import eval as ev
import model as M
from support import paper_eval
from tests.tiny import save_toy_checkpoint, toy_network
from toy import task as toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITIONS = 1024  # room for a benchmark prompt (~560 characters with the system prompt) and more


def make_checkpoint(path, with_tokenizer=True):
    """A tiny random model for the toy tokenizer, saved as train.py saves a checkpoint: the model
    folder first (save_model replaces the folder), then the tokenizer into it."""
    tokenizer = toy.build_toy_tokenizer(str(path) + "-tokenizer")
    return save_toy_checkpoint(path, toy_network(tokenizer, POSITIONS), tokenizer if with_tokenizer else None)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("eval") / "ckpt")


@pytest.fixture(scope="module")
def tok(ckpt):
    return AutoTokenizer.from_pretrained(ckpt)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def held_out(tok, n):
    """The toy's first n held-out problems, as train.py builds them under the toy preset."""
    return toy.held_out_problems(toy.ToyConfig(), tok, toy.PRESET["max_prompt_tokens"], n)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# --- grade(): the official graders and ours, where they disagree ---------------------------------

# (benchmark, response, official gold, our gold, official score, our score). The official golds are
# what paper_eval.benchmark_rows derives from the released rows (AIME without leading zeros, AMC a
# float); ours what data.load_benchmark reads. The official verdicts are those of the official
# graders run under their pinned versions (tests/test_paper_eval.py).
GRADE_CASES = [
    # the official grader credits what ours rejects
    ("math500", "so \\boxed{25}", "0.25", "0.25", 1.0, 0.0),            # a number equals gold * 100
    ("amc", "\\boxed{1.42}", "142.0", "142", 1.0, 0.0),                   # ... or gold / 100
    ("math500", "\\boxed{1000100}", "1000000", "1000000", 1.0, 0.0),      # relative 1e-4
    ("math500", "\\boxed{(3,4)}", "(3,4]", "(3,4]", 1.0, 0.0),            # interval brackets ignored
    ("math500", "\\boxed{\\frac{1}{2},3}", "\\frac{1}{2},-3,5", "\\frac{1}{2},-3,5", 1.0, 0.0),  # first items
    ("olympiadbench", "\\boxed{1,7}", "1,-1,7,-7", "1,-1,7,-7", 1.0, 0.0),  # parse_latex reads "1" of each
    ("minerva", "\\boxed{0.25}", "25", "$\\boxed{25}$", 1.0, 0.0),
    # ours credits what the official grader rejects
    ("aime", "The answer is: 12", "12", "012", 0.0, 1.0),                 # AIME's marker never matches
    ("math500", "\\boxed{2^10}", "1024", "1024", 0.0, 1.0),              # parse_expr: ^ is XOR
    ("math500", "\\boxed{x_1}", "x_1", "x_1", 0.0, 1.0),                 # any "_" makes it wrong
    ("minerva", "\\boxed{5 m}", "5", "\\boxed{5}", 0.0, 1.0),          # Minerva keeps the unit
    ("aime", "\\boxed{\\pi}", "\\pi", "\\pi", 0.0, 1.0),                 # AIME/AMC's character strip leaves "\\"
    # both agree
    ("aime", "so \\boxed{25}", "25", "025", 1.0, 1.0),
    ("olympiadbench", "\\boxed{7, -7}", "7,-7", "7,-7", 1.0, 1.0),
    ("math500", "\\boxed{3}", "4", "4", 0.0, 0.0),
]


@pytest.mark.parametrize("bench, response, official_gold, our_gold, official, ours", GRADE_CASES)
def test_grade_official_and_ours(bench, response, official_gold, our_gold, official, ours):
    assert ev.grade(bench, response, official_gold) == official          # protocol="paper" is the default
    assert ev.grade(bench, response, our_gold, "ours") == ours


def test_grade_code_official_time_limits_and_judges(monkeypatch):
    import verify
    tests = json.dumps({"inputs": ["3\n"], "outputs": ["6\n"], "judge": "livecodebench"})
    assert ev.grade("livecodebench", "```python\nprint(2 * int(input()))\n```", tests) == 1.0
    assert ev.grade("livecodebench", "```python\nprint(7)\n```", tests, "ours") == 0.0
    leetcode = json.dumps({"judge": "leetcode", "test_code": "assert Solution().f(2) == 4\n"})
    assert ev.grade("leetcode", "```python\nclass Solution:\n    def f(self, x):\n        return 2 * x\n```",
                    leetcode, "ours") == 1.0
    limits = []
    monkeypatch.setattr(ev, "code_correct", lambda program, tests, timeout: limits.append(timeout) or True)
    for bench in ("leetcode", "livecodebench"):
        for protocol in ("paper", "ours"):
            ev.grade(bench, "x", tests, protocol)
    # LeetCode: 10 s for the problem's test script; LiveCodeBench: 6 s per test; ours: 5 s per test
    assert limits == [10.0, verify.CODE_TIMEOUT, 6.0, verify.CODE_TIMEOUT] and verify.CODE_TIMEOUT == 5.0


def test_grade_rejects_unknown_names():
    with pytest.raises(ValueError, match="benchmark must be one of"):
        ev.grade("gsm8k", "1", "1")
    with pytest.raises(ValueError, match="protocol must be one of"):
        ev.grade("aime", "1", "1", "official")


def test_benchmark_name_is_the_stem_or_the_folder_of_a_split_file(tmp_path):
    assert ev.benchmark_name("a/b/aime24.jsonl") == "aime24"
    assert ev.benchmark_name(tmp_path / "minerva_math" / "test.jsonl") == "minerva_math"
    assert ev.benchmark_name(tmp_path / "MATH-500" / "test-00000-of-00001.parquet") == "MATH-500"


# --- evaluate: scoring and aggregation with known responses --------------------------------------


def test_stop_token_ids_are_eos_im_end_and_endoftext_once(tok):
    vocab = tok.get_vocab()
    assert tok.eos_token_id == vocab["<|im_end|>"]  # so the list must not hold it twice
    assert data.stop_token_ids(tok) == [vocab["<|im_end|>"], vocab["<|endoftext|>"]]


def test_evaluate_scores_and_averages_known_responses(tok, monkeypatch):
    problems = held_out(tok, 5)
    im_end, endoftext, im_start = (tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"))
    limit = 20
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    gt = [p.ground_truth for p in problems]
    wanted = [
        enc(f"\\boxed{{{gt[0]}}}") + [im_end],                                   # right
        enc(f"\\boxed{{{int(gt[1]) + 1}}}") + [endoftext],                       # wrong, the other EOS
        enc("7" * limit),                                                        # cut off: no EOS
        enc(f"\\boxed{{{gt[3]}}}".ljust(limit - 1)) + [im_end],                  # right, EOS at the limit
        [im_start] + enc(f"\\boxed{{{gt[4]}}}") + [im_end],                      # right, a special token inside
    ]
    calls = []

    def fake_generate(model, prompts, max_new_tokens, eos_token_id, **kwargs):
        calls.append((prompts, max_new_tokens, eos_token_id, kwargs))
        return [wanted[[p.prompt_ids for p in problems].index(prompt)] for prompt in prompts]

    monkeypatch.setattr(ev, "generate", fake_generate)
    result = ev.evaluate("model", tok, problems, limit, temperature=0.0, progress=False)

    prompts, max_new_tokens, eos, kwargs = calls[0]
    assert prompts == [p.prompt_ids for p in problems] and max_new_tokens == limit
    assert eos == [im_end, endoftext] and kwargs["vocab_size"] == len(tok) == 99
    assert kwargs["temperature"] == 0.0 and kwargs["seed"] == 0
    assert result["n"] == 5 and result["n_samples"] == 1
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["truncation_rate"] == pytest.approx(1 / 5)
    assert result["mean_response_tokens"] == pytest.approx(sum(map(len, wanted)) / 5)
    records = result["records"]
    assert [r["id"] for r in records] == [p.id for p in problems]
    assert [r["score"] for r in records] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert [r["truncated"] for r in records] == [False, False, True, False, False]
    assert [r["extracted"] for r in records] == [gt[0], str(int(gt[1]) + 1), "7" * limit, gt[3], gt[4]]
    # decoded without special tokens, as the official reward code did
    assert records[4]["response"] == f"\\boxed{{{gt[4]}}}" and records[0]["response"] == f"\\boxed{{{gt[0]}}}"
    assert records[0]["prompt"] == problems[0].prompt_text and records[0]["ground_truth"] == gt[0]


def test_evaluate_n_samples_is_avg_at_k_over_adjacent_samples(tok, monkeypatch):
    problems = held_out(tok, 2)
    im_end = tok.eos_token_id
    seen = []

    def fake_generate(model, prompts, max_new_tokens, eos_token_id, **kwargs):
        seen.extend(prompts)
        out = []
        for k, prompt in enumerate(prompts):  # only the first sample of each problem is right
            truth = problems[[p.prompt_ids for p in problems].index(prompt)].ground_truth
            answer = truth if k % 3 == 0 else str(int(truth) + 1)
            out.append(tok(f"\\boxed{{{answer}}}", add_special_tokens=False)["input_ids"] + [im_end])
        return out

    monkeypatch.setattr(ev, "generate", fake_generate)
    result = ev.evaluate("model", tok, problems, 16, temperature=1.0, n_samples=3, progress=False)
    assert seen == [problems[0].prompt_ids] * 3 + [problems[1].prompt_ids] * 3
    assert result["n"] == 2 and result["accuracy"] == pytest.approx(2 / 6)
    assert [(r["id"], r["sample"]) for r in result["records"]] == [
        (p.id, k) for p in problems for k in range(3)]


def test_evaluate_code_counts_only_programs_that_pass_every_test(tok, monkeypatch):
    doubles = lambda n, last: {"inputs": [f"{i}\n" for i in range(n)],  # noqa: E731
                               "outputs": [f"{2 * i}\n" for i in range(n - 1)] + [last]}
    tests = [doubles(11, "20\n"),   # all 11 pass
             doubles(11, "99\n"),   # the first 10 pass (the training reward is 1.0), the 11th fails
             doubles(2, "99\n")]    # one of two passes (the training reward is 0.5)
    messages = [data.benchmark_messages(f"Double it ({k}).", "code") for k in range(3)]
    problems = [data.Problem(f"code:{k}", "code", data.tokenize_prompt(tok, m), json.dumps(t), "code", "")
                for k, (m, t) in enumerate(zip(messages, tests))]
    program = tok("```python\nprint(2 * int(input()))\n```", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(ev, "generate", lambda model, prompts, *a, **k: [program + [tok.eos_token_id]] * len(prompts))
    result = ev.evaluate("model", tok, problems, 64, progress=False)
    assert [r["score"] for r in result["records"]] == [1.0, 0.0, 0.0]
    assert result["records"][0]["extracted"] == "\nprint(2 * int(input()))\n"
    assert result["records"][0]["ground_truth"] is None


def test_evaluate_rejects_nothing_to_do(tok):
    with pytest.raises(ValueError, match="no problems"):
        ev.evaluate("model", tok, [], 8)
    with pytest.raises(ValueError, match="n_samples"):
        ev.evaluate("model", tok, held_out(tok, 1), 8, n_samples=0)


def test_evaluate_paper_protocol_stops_caps_each_prompt_and_grades_twice(tok, monkeypatch):
    """Protocol "paper": a response is cut at the benchmark's stop strings, a response that used the
    common max_new_tokens goes on to its own prompt's cap, and both graders grade the same text;
    protocol "ours" does neither and scores with our grader."""
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    im_end = tok.eos_token_id

    def problem(k, cap, paper_gold, our_gold):
        prompt = enc(f"Question {k}?")
        return ev.BenchmarkProblem(f"math500:{k}", "math", prompt, our_gold, "math500", f"Question {k}?",
                                   benchmark="math500", paper_gold=paper_gold, max_new_tokens=cap)

    problems = [problem(0, 40, "0.25", "0.25"),   # 25 for 0.25: the official grader credits it, ours does not
                problem(1, 40, "4", "4"),          # a stop string, then another answer
                problem(2, 50, "7", "7")]          # needs 50 tokens; the common cap is 40
    first = {0: enc("so \\boxed{25}") + [im_end], 1: enc("\\boxed{4}\n###\nProblem: \\boxed{9}") + [im_end],
             2: enc("1" * 40)}
    calls = []

    def fake_generate(model, prompts, max_new_tokens, eos_token_id, **kwargs):
        calls.append((len(prompts), max_new_tokens))
        out = []
        for prompt in prompts:
            k = next(i for i, p in enumerate(problems) if prompt[:len(p.prompt_ids)] == p.prompt_ids)
            out.append(first[k] if len(prompt) == len(problems[k].prompt_ids) else enc("\\boxed{7}") + [im_end])
        return out

    monkeypatch.setattr(ev, "generate", fake_generate)
    paper = ev.evaluate("model", tok, problems, 40, progress=False, protocol="paper")
    assert calls == [(3, 40), (1, 10)]  # row 2 went on for the 10 tokens its cap leaves
    records = paper["records"]
    assert [r["response"] for r in records] == ["so \\boxed{25}", "\\boxed{4}", "1" * 40 + "\\boxed{7}"]
    assert [r["response_tokens"] for r in records] == [len(first[0]), len(first[1]), 50]
    assert [(r["paper_score"], r["our_score"]) for r in records] == [(1.0, 0.0), (1.0, 1.0), (1.0, 1.0)]
    assert [r["score"] for r in records] == [1.0, 1.0, 1.0] and paper["differ"] == 1
    assert (paper["paper_accuracy"], paper["our_accuracy"]) == (1.0, pytest.approx(2 / 3))
    assert [r["paper_extracted"] for r in records] == ["25", "4", "7"] and records[0]["paper_gold"] == "0.25"
    assert paper["truncation_rate"] == 0.0

    calls.clear()
    ours = ev.evaluate("model", tok, problems, 40, progress=False, protocol="ours")
    assert calls == [(3, 40)]  # one cap for all
    assert [(r["paper_score"], r["our_score"]) for r in ours["records"]] == [(1.0, 0.0), (0.0, 0.0), (0.0, 0.0)]
    assert [r["score"] for r in ours["records"]] == [0.0, 0.0, 0.0]  # ours: the last box, 9, is wrong
    assert [r["truncated"] for r in ours["records"]] == [False, False, True]


# --- evaluate: a real run -------------------------------------------------------------------------


def test_evaluate_real_tiny_model(ckpt, tok):
    network = M.load_model(ckpt)
    problems = held_out(tok, 3)
    result = ev.evaluate(network, tok, problems, 6, progress=False)
    assert result["n"] == 3 and len(result["records"]) == 3
    assert 0.0 <= result["accuracy"] <= 1.0 and 0 < result["mean_response_tokens"] <= 6
    for record, problem in zip(result["records"], problems):
        assert set(record) == {"id", "sample", "prompt", "response", "extracted", "ground_truth", "score",
                               "response_tokens", "truncated"}
        assert record["id"] == problem.id and record["prompt"] == problem.prompt_text
        assert record["ground_truth"] == problem.ground_truth and record["score"] in (0.0, 1.0)
        if record["response_tokens"] < 6:  # stopped early: an EOS, so not truncated
            assert not record["truncated"]


# --- the command line -----------------------------------------------------------------------------


def test_cli_toy_default(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    ev.main(["--model", ckpt, "--toy_problems", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    [row] = results["benchmarks"]
    assert row["benchmark"] == "toy" and row["n"] == 3 and row["metric"] == "pass@1"
    assert row["max_new_tokens"] == toy.PRESET["max_response_tokens"] and row["temperature"] == 0.0
    assert "| toy | 3 | pass@1 |" in printed and "Eurus" not in printed  # no paper benchmark: no reference columns
    samples = read_jsonl(out / "samples_toy.jsonl")
    # the toy prompts are the training prompts: the user turn alone, no system prompt
    assert [s["prompt"] for s in samples] == [p.prompt_text for p in held_out(AutoTokenizer.from_pretrained(ckpt), 3)]
    assert "system" not in samples[0]["prompt"]
    assert sum(o["responses"] for o in row["toy_openings"].values()) == 3
    assert "eval.py: toy first lines: " in printed


def test_toy_problems_are_the_runs_held_out_problems(ckpt, tmp_path, capsys):
    """eval.py --model <out_dir>/policy reads <out_dir>/config.json and scores exactly the held-out
    problems train.py built for that run (rows, prompt filter, ids), with its response limit."""
    import train
    from support import cli
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    runs = {"products": ["--toy_task=products", "--toy_products=2", "--toy_max_operand=4", "--eval_problems=7",
                         "--toy_train_problems=50",
                         "--max_response_tokens=40"],
            "expression": ["--toy_steps=2", "--toy_max_operand=12", "--eval_problems=5", "--max_prompt_tokens=24",
                           "--toy_train_problems=50"]}  # two-digit operands make some prompts too long
    for name, argv in runs.items():
        settings = train.settings(argv)
        cfg, toy_cfg = settings[:2]
        out_dir = tmp_path / name
        os.makedirs(out_dir / "policy")
        (out_dir / "config.json").write_text(json.dumps(cli.flat(settings)))  # as train.py writes it
        run_toy, max_prompt, max_response, path = toy.run_settings(str(out_dir / "policy") + "/")
        assert path == str(out_dir / "config.json") and run_toy == toy_cfg
        _, train_held_out = train.load_problems(cfg, toy_cfg, tokenizer)
        ours = toy.held_out_problems(run_toy, tokenizer, max_prompt)
        assert [(p.id, p.prompt_ids, p.ground_truth) for p in ours] == \
            [(p.id, p.prompt_ids, p.ground_truth) for p in train_held_out]
        assert max_response == cfg.max_response_tokens
    assert 0 < len(train_held_out) < 5  # the expression run's prompt limit dropped some: eval drops the same

    # the command line: the policy folder of the products run
    policy = tmp_path / "products" / "policy"
    os.rmdir(policy)
    shutil.copytree(ckpt, policy)
    ev.main(["--model", str(policy), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    [row] = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]
    assert row["n"] == 7 and row["max_new_tokens"] == 40
    assert "toy settings from" in printed and "eval.py: toy decisions: careful" in printed
    assert sum(row["toy_decisions"][k]["decisions"] for k in ("careful", "slip", "neither")) <= 7 * 2

    # no config.json above the checkpoint (or another program's): the toy preset's settings
    preset = (toy.ToyConfig(), toy.PRESET["max_prompt_tokens"], toy.PRESET["max_response_tokens"], None)
    assert toy.run_settings(ckpt) == preset
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert toy.run_settings(str(tmp_path / "other" / "policy")) == preset


def test_cli_files_and_columns_table_lists_every_benchmark(ckpt, tmp_path, capsys):
    import pandas as pd
    math500 = write_jsonl(tmp_path / "MATH-500.jsonl", [
        {"problem": "What is 1+1?", "solution": "It is \\boxed{2}.", "answer": "2", "unique_id": "test/a.json"},
        {"problem": "What is 2+3?", "solution": "\\boxed{5}", "answer": "5", "unique_id": "test/b.json"}])
    quiz = str(tmp_path / "quiz.parquet")  # alternative names: question / ground_truth, no id column
    pd.DataFrame({"question": ["Name 3 plus 4.", "And 6 times 7?", "Or 9 minus 9?"],
                  "ground_truth": ["7", "42", "0"]}).to_parquet(quiz)
    code = write_jsonl(tmp_path / "code.jsonl", [
        {"prompt": "Read n, print 2n.", "input_output": {"inputs": ["3\n"], "outputs": ["6\n"]}}])
    out = tmp_path / "out"
    ev.main(["--model", ckpt, "--data", math500, quiz, code, "--max_new_tokens", "4", "--out", str(out)])
    printed = capsys.readouterr().out

    rows = {row["benchmark"]: row for row in json.loads((out / "results.json").read_text())["benchmarks"]}
    assert list(rows) == ["MATH-500", "quiz", "code"]
    assert [rows[name]["n"] for name in rows] == [2, 3, 1]
    assert rows["MATH-500"]["paper"] == {"Eurus-2-7B-SFT": 66.2, "Eurus-2-7B-PRIME": 79.2}
    assert rows["quiz"]["paper"] is None and rows["code"]["paper"] is None
    assert all(row["max_new_tokens"] == 4 for row in rows.values())
    assert "Eurus-2-7B-SFT %" in printed
    assert [line for line in printed.splitlines() if line.startswith("| MATH-500 |")][0].endswith("| 66.2 | 79.2 |")
    assert [line for line in printed.splitlines() if line.startswith("| quiz |")][0].endswith("| - | - |")

    math_samples = read_jsonl(out / "samples_MATH-500.jsonl")
    assert [s["id"] for s in math_samples] == ["MATH-500:test/a.json", "MATH-500:test/b.json"]
    assert [s["ground_truth"] for s in math_samples] == ["2", "5"]  # `answer` wins over `solution`
    prompt = math_samples[0]["prompt"]  # the official prompt: its system prompt file's bytes, question, suffix
    assert paper_eval.EVAL_SYSTEM_PROMPT in prompt and "What is 1+1?" + data.MATH_SUFFIX in prompt
    assert math_samples[0]["paper_gold"] == "2"  # HuggingFaceH4's file has no expected_answer: its answer
    assert [s["id"] for s in read_jsonl(out / "samples_quiz.jsonl")] == ["quiz:0", "quiz:1", "quiz:2"]
    [code_sample] = read_jsonl(out / "samples_code.jsonl")
    assert data.CODE_SUFFIX in code_sample["prompt"] and code_sample["ground_truth"] is None
    assert code_sample["extracted"] == code_sample["response"]  # no ```python block: the whole text
    quiz_prompt = read_jsonl(out / "samples_quiz.jsonl")[0]["prompt"]  # not a Table 2 benchmark: ours
    assert data.SYSTEM_PROMPT in quiz_prompt and rows["quiz"]["protocol"] == "ours"

    ev.main(["--model", ckpt, "--data", math500, "--max_new_tokens", "4", "--out", str(out), "--protocol", "ours"])
    prompt = read_jsonl(out / "samples_MATH-500.jsonl")[0]["prompt"]
    assert data.SYSTEM_PROMPT in prompt and paper_eval.EVAL_SYSTEM_PROMPT not in prompt


FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FIXTURE_FILES = [os.path.join(FIXTURES, f) for f in (
    "aimo-validation-aime.jsonl", "aimo-validation-amc.jsonl", "math_test_cleaned.json", "minerva_math/test.jsonl",
    "olympiadbench/test.jsonl", "leetcode-test.json", "livecodebench.jsonl")]


def test_cli_every_released_format_under_both_protocols(ckpt, tmp_path, capsys, monkeypatch):
    """The seven benchmarks' files as released (tests/fixtures), under each protocol: the table's
    columns, the prompts, and disagreements.md. The sampler is a stand-in that answers every
    question with "The answer is: 9", so the two graders disagree where their rules do."""
    tok = AutoTokenizer.from_pretrained(ckpt)
    answer = tok("The answer is: 9", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    monkeypatch.setattr(ev, "generate", lambda model, prompts, *a, **k: [answer] * len(prompts))
    out = tmp_path / "paper"
    ev.main(["--model", ckpt, "--data", *FIXTURE_FILES, "--max_new_tokens", "40", "--out", str(out)])
    printed = capsys.readouterr().out
    rows = {row["benchmark"]: row for row in json.loads((out / "results.json").read_text())["benchmarks"]}
    assert list(rows) == ["aimo-validation-aime", "aimo-validation-amc", "math_test_cleaned", "minerva_math",
                          "olympiadbench", "leetcode-test", "livecodebench"]
    assert [rows[b]["n"] for b in rows] == [2, 2, 2, 2, 2, 2, 2]
    assert all(row["protocol"] == "paper" for row in rows.values())
    assert rows["livecodebench"]["metric"] == "avg@10" and rows["livecodebench"]["temperature"] == 0.2
    # AIME's gold "009" is 9: our grader reads "The answer is: 9", the official AIME script cannot
    # (its marker has a capital T); MATH-500's marker works, and its golds are not 9
    aime = rows["aimo-validation-aime"]
    assert (aime["paper_accuracy"], aime["our_accuracy"], aime["differ"]) == (0.0, 0.5, 1)
    assert "| aimo-validation-aime | 2 | pass@1 | paper | 0.0 | 50.0 | 1 |" in printed
    assert printed.count("| paper |") == 7 and "| 3.3 | 26.7 |" in printed
    notes = (out / "disagreements.md").read_text()
    assert "## aimo-validation-aime: 1 responses graded differently" in notes
    assert "official 0, ours 1" in notes and "gold `9`" in notes and "gold `009`" in notes
    lcb = read_jsonl(out / "samples_livecodebench.jsonl")
    assert len(lcb) == 20 and lcb[0]["prompt"].startswith("<|im_start|>system\n" + paper_eval.EVAL_SYSTEM_PROMPT)
    minerva = read_jsonl(out / "samples_minerva_math.jsonl")
    assert [s["paper_gold"] for s in minerva] == ["0.5", "42"]

    out = tmp_path / "ours"
    ev.main(["--model", ckpt, "--data", *FIXTURE_FILES, "--max_new_tokens", "40", "--out", str(out),
             "--protocol", "ours"])
    rows = {row["benchmark"]: row for row in json.loads((out / "results.json").read_text())["benchmarks"]}
    assert all(row["protocol"] == "ours" for row in rows.values())
    assert rows["aimo-validation-aime"]["accuracy"] == 0.5  # ours scores now
    prompt = read_jsonl(out / "samples_olympiadbench.jsonl")[0]["prompt"]
    assert data.SYSTEM_PROMPT in prompt and "(Yes or No)" not in prompt


def test_cli_aime_file_counts_only_the_30_problems_of_2024(ckpt, tmp_path, capsys):
    rows = []
    for year in (2022, 2023, 2024):
        for contest in ("I", "II"):
            for number in range(1, 16):
                rows.append({"id": len(rows), "problem": f"AIME {year} {contest} problem {number}.", "answer": str(number),
                             "url": f"https://artofproblemsolving.com/wiki/index.php/{year}_AIME_{contest}_Problems/Problem_{number}"})
    aime = write_jsonl(tmp_path / "aimo-validation-aime.jsonl", rows)
    out = tmp_path / "out"
    ev.main(["--model", ckpt, "--data", aime, "--max_new_tokens", "2", "--out", str(out)])
    [row] = json.loads((out / "results.json").read_text())["benchmarks"]
    assert row["n"] == 30 and row["paper_benchmark"] == "AIME 2024"
    samples = read_jsonl(out / "samples_aimo-validation-aime.jsonl")
    assert [s["id"] for s in samples] == [f"aimo-validation-aime:{i}" for i in range(60, 90)]
    assert "| aimo-validation-aime | 30 | pass@1 |" in capsys.readouterr().out


def test_cli_caps_max_new_tokens_to_the_models_positions(ckpt, tmp_path, tok, capsys):
    path = write_jsonl(tmp_path / "math_500.jsonl", [{"problem": "What is 1+1?", "answer": "2"}])
    out = tmp_path / "out"
    ev.main(["--model", ckpt, "--data", path, "--out", str(out)])  # the paper's 8192 > 1024 positions
    prompt = read_jsonl(out / "samples_math_500.jsonl")[0]["prompt"]
    [row] = json.loads((out / "results.json").read_text())["benchmarks"]
    assert row["max_new_tokens"] == POSITIONS - len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert "capped" in capsys.readouterr().out


def _error(argv):
    with pytest.raises(SystemExit) as caught:
        ev.main(argv)
    assert isinstance(caught.value.code, str) and caught.value.code.startswith("eval.py: ")
    return caught.value.code


def test_cli_bad_input_is_one_clear_line(ckpt, tmp_path):
    assert "does not exist" in _error(["--model", ckpt, "--data", str(tmp_path / "nope.jsonl")])
    assert "is not a directory" in _error(["--model", str(tmp_path / "no_model")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "holds no problems" in _error(["--model", ckpt, "--data", str(empty)])
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "What?", "label": "1"}])
    assert "unknown column layout" in _error(["--model", ckpt, "--data", odd])
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = write_jsonl(tmp_path / "a" / "test.jsonl", [{"problem": "1+1?", "answer": "2"}])
    two = write_jsonl(tmp_path / "b" / "a.jsonl", [{"problem": "1+1?", "answer": "2"}])
    assert "both named ['a']" in _error(["--model", ckpt, "--data", one, two])
    bare = make_checkpoint(tmp_path / "bare", with_tokenizer=False)
    assert "no tokenizer" in _error(["--model", bare])


def test_cli_missing_file_exits_nonzero_without_a_traceback(ckpt, tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--model", ckpt, "--data", missing],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    assert f"eval.py: benchmark file '{missing}' does not exist" in done.stderr
    assert "Traceback" not in done.stderr


# --- two ranks equal one process ------------------------------------------------------------------


def _fake_generate_by_content(tok, problems, calls):
    """A stand-in sampler whose response depends on the prompt alone (right, wrong, or cut off at
    max_new_tokens, by the answer mod 3), so any split over ranks must give the same records."""
    truths = {tuple(p.prompt_ids): int(p.ground_truth) for p in problems}

    def fake(model, prompts, max_new_tokens, eos_token_id, **kwargs):
        calls.append(len(prompts))
        out = []
        for prompt in prompts:
            truth = truths[tuple(prompt)]
            if truth % 3 == 2:
                out.append(tok("7" * max_new_tokens, add_special_tokens=False)["input_ids"])
            else:
                answer = truth if truth % 3 == 0 else truth + 1
                out.append(tok(f"\\boxed{{{answer}}}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        return out
    return fake


def _two_rank_worker(rank, init_file, tokenizer_dir, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        problems = held_out(tok, 5)
        calls = []
        ev.generate = _fake_generate_by_content(tok, problems, calls)  # this child process only
        five = ev.evaluate(None, tok, problems, 16, progress=False)         # shares of 2 and 3
        one = ev.evaluate(None, tok, problems[:1], 16, progress=False)      # rank 0's share is empty
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"five": five, "one": one, "calls": calls}, f)
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_evaluate_equals_one_process(ckpt, tok, tmp_path, monkeypatch):
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), ckpt, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    problems = held_out(tok, 5)
    monkeypatch.setattr(ev, "generate", _fake_generate_by_content(tok, problems, []))
    alone = ev.evaluate(None, tok, problems, 16, progress=False)
    assert 0 < alone["accuracy"] < 1 and 0 < alone["truncation_rate"] < 1  # the comparison can fail
    for result in ranks:  # every rank gets the whole result
        five = result["five"]
        for key in ("accuracy", "n", "mean_response_tokens", "truncation_rate"):
            assert five[key] == pytest.approx(alone[key])
        assert {r["id"] for r in five["records"]} == {p.id for p in problems}
        assert five["records"] == alone["records"]  # in problem order
        assert result["one"]["n"] == 1 and len(result["one"]["records"]) == 1
    # 5 problems split 2 + 3; 1 problem split 0 + 1, and the empty rank still called the sampler
    assert [r["calls"] for r in ranks] == [[2, 0], [3, 1]]
