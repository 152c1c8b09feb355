"""verify.py: the outcome reward r_o in [0, 1] that PRIME learns from (Alg. 1 line 5).

PRIME trains on one number per response, the outcome reward r_o, which a rule-based verifier
computes ([P1 §4.2]): 1 if a math answer is right, the fraction of unit tests a program passes
for code. The implicit PRM then spreads that number over the tokens, so a wrong verdict here is
a wrong training signal, and a verifier that hangs stalls a whole step (the official code could
hang on CPU-bound programs: PRIME issue #56). This file:

  math     math_correct(response, ground_truth) -> bool   (extract_answer: the final answer)
  code     extract_program(response)        -> the program text
           code_score(program, tests)       -> fraction of the first (at most) 10 tests passed
           code_correct(program, tests)     -> every test passes
  bulk     score_batch(samples)             -> one float per sample, in input order
           score_responses(tokenizer, problems, responses): the trainer's reward of token ids

The machinery lives in support/: math_grader.py decides whether two answers are equal (exact
numbers exactly, the rest by Math-Verify in killable worker processes); sandbox.py runs each
test of a program in a jail (docs/sandbox.md: what it stops and what it does not).

"[PR]" below means the official PRIME code, as summarised in docs/notes.md §7.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation

from support import math_grader, sandbox
from support.math_grader import MATH_TIMEOUT, extract_answer, require_text
from support.workers import NoVerdict

logger = logging.getLogger(__name__)

CODE_TIMEOUT = 5.0      # [PR] code_util: 5 s wall clock per test (LeetCode's and LiveCodeBench's
                        # official judges allow 10 s per script and 6 s per test)
MAX_SCORED_TESTS = 10   # [PR] code_util: reward = passed / min(#tests, 10)


# =========================================================================================
# Math: the final answer, compared with the ground truth.
# =========================================================================================
# The paper's prompt asks for the final answer in \boxed{} (docs/notes.md §6), so the answer is
# the last \boxed{...} (fallbacks for an unboxed final answer: math_grader.extract_answer). The
# official code compared answers with a string normaliser, sympy and a relative tolerance of
# 1e-4 that credits 1000100 for 1000000 and 50 for 0.5; ours compares plain numbers exactly and
# the rest with Math-Verify (support/math_grader.py; docs/results.md measures both graders).

def math_correct(response: str, ground_truth: str, timeout: float = MATH_TIMEOUT) -> bool:
    """Is the final answer in `response` (a model response or a bare answer) equal to
    `ground_truth` (a dataset answer string, or a solution with a \\boxed{})? Raises
    ValueError/TypeError on a missing ground truth; a response without an answer is simply
    wrong. Symbolic comparisons run in a worker process killed after `timeout` seconds (then:
    False, with a warning; score_batch counts such failures instead)."""
    return _or_wrong(_math_verdict, response, ground_truth, timeout)


def _math_verdict(response, ground_truth, timeout) -> bool:
    gold = math_grader.gold_answer(ground_truth)
    pred = extract_answer(require_text(response, "response"))
    if pred is None or not pred.strip():
        return False
    return math_grader.answers_equal(pred, gold, timeout)  # NoVerdict when the verifier failed


def _or_wrong(verdict, *args):
    """verdict(*args), or False (wrong, a score of 0) when the verifier failed to decide: the
    rule of the single-sample functions, which must return a verdict."""
    try:
        return verdict(*args)
    except NoVerdict as error:
        logger.warning("verify: no verdict (%s); scored as wrong", error)
        return False


# =========================================================================================
# Code, part 1: the program and its tests.
# =========================================================================================

# Three judges, named by the tests' optional "judge" field (data.load_benchmark writes it for
# the two code benchmarks of the paper's Table 2; training data has none):
#   "apps"           [PR]'s training judge, for Eurus-2-RL-Data / APPS / TACO tests (the default);
#   "livecodebench"  lcb_runner's judge (lcb_runner/evaluation/testing_util.py in
#                    github.com/LiveCodeBench/LiveCodeBench): its comparison rules and imports;
#   "leetcode"       [PR]'s LeetCode judge (eval/Coding/leetcode/evaluate_leetcode.py and
#                    eval/utils/execution_leetcode.py): the program followed by the problem's
#                    own test code (asserts on a Solution()) must run without an error.
# Each runs programs in our sandbox; the official judges exec'd them in a forked process, the
# LeetCode one with its asserts in the program's own process, where a returned object whose
# __eq__ is always true passes them. Ours decide outside it: see _leetcode_script.
JUDGES = ("apps", "livecodebench", "leetcode")


def extract_program(response: str) -> str:
    """The last ```python block of a response, or the whole text if there is none (the
    [PR] training rule: completion.split('```python')[-1].split('```')[0])."""
    return require_text(response, "response").split("```python")[-1].split("```")[0]


def _benchmark_program(response: str, judge: str) -> str:
    """The program the official LeetCode / LiveCodeBench evaluation runs for a response:
    the last ```python block that defines something ("def "), else the last ```python
    block; the same over plain ``` blocks; else the text before the first ``` ([PR]
    evaluate_leetcode.match_code, and [PR]'s copy of lcb_runner extraction_utils.extract_code).
    LeetCode then wraps code without "class Solution:" in one, indented, as
    evaluate_leetcode.py does (its tests call Solution().method)."""
    response = require_text(response, "response")
    code = response.split("```")[0]
    for fence in (r"```python(.*?)```", r"```(.*?)```"):
        blocks = re.findall(fence, response, re.DOTALL)
        if blocks:
            code = next((block for block in reversed(blocks) if "def " in block), blocks[-1])
            break
    if judge == "leetcode" and "class Solution:" not in code:
        code = "class Solution:\n" + "\n".join("    " + line for line in code.split("\n"))
    return code


def _parse_tests(tests) -> tuple[str, list[tuple[str, str | None, bytes, object]]]:
    """Test JSON -> (judge, [(mode, fn_name, stdin, expected)]).

    stdin/stdout form: {"inputs": [str, ...], "outputs": [str, ...]} (a list of lines is
    joined with newlines, as APPS stores some). Call-based form adds "fn_name"; each input
    is then a list of arguments (TACO/APPS) or a string of newline-separated JSON arguments
    (LiveCodeBench), whose output is a JSON string too. The arguments travel to the child
    as JSON on stdin. Optional "judge": one of JUDGES (default "apps"); "leetcode" tests are
    {"judge": "leetcode", "test_code": str}, one case (_leetcode_script).
    Raises ValueError naming what is wrong."""
    if isinstance(tests, (str, bytes)):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as error:
            raise ValueError(f"tests is not valid JSON: {error}") from None
    if not isinstance(tests, dict):
        raise ValueError(f"tests must be a dict or a JSON object, got {type(tests).__name__}")
    judge = tests.get("judge", "apps")
    if judge not in JUDGES:
        raise ValueError(f"tests field 'judge' must be one of {JUDGES}, got {judge!r}")
    if judge == "leetcode":
        test_code = tests.get("test_code")
        if not isinstance(test_code, str) or not test_code.strip():
            raise ValueError("leetcode tests need a non-empty string field 'test_code'")
        script, expected = _leetcode_script(test_code)
        return judge, [("script", None, script.encode(), expected)]
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("tests needs list fields 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise ValueError(f"tests has {len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise ValueError("tests has no test cases")
    fn_name = tests.get("fn_name") or None
    if fn_name is not None and not isinstance(fn_name, str):
        raise ValueError("tests field 'fn_name' must be a string")
    cases = []
    for index, (given, expected) in enumerate(zip(inputs, outputs)):
        if fn_name is None:
            given, expected = (
                "\n".join(map(str, x)) if isinstance(x, list) else x for x in (given, expected))
            if not isinstance(given, str) or not isinstance(expected, str):
                raise ValueError(f"test {index}: stdin/stdout tests need string input and output")
            cases.append(("stdio", None, given.encode(), expected))
            continue
        try:
            if isinstance(given, str):  # LiveCodeBench: one JSON value per line
                arguments = [json.loads(line) for line in given.split("\n") if line.strip()]
                expected = json.loads(expected) if isinstance(expected, str) else expected
                unwrap = False
            elif isinstance(given, list):  # TACO/APPS: the argument list itself
                arguments = given
                unwrap = True
            else:
                raise ValueError(f"test {index}: call-based input must be a list or a string")
        except json.JSONDecodeError as error:
            raise ValueError(f"test {index}: bad JSON in call-based test: {error}") from None
        cases.append(("call", fn_name, json.dumps(arguments).encode(), (expected, unwrap)))
    return judge, cases


def _leetcode_script(test_code: str) -> tuple[str, list]:
    """A LeetCode problem's test code -> (the script the sandbox runs after the program, the
    values it must produce). Every line of [PR]'s test code is a setup statement
    (`my_solution = Solution()`, `test_input = {...}`, helpers such as a list-to-ListNode
    lambda) or `assert <expression> == <literal>`. Each assert becomes `__report__(<expression>)`,
    which sends the value back as a literal of builtin types; its literal stays here, and
    _passes compares the two with Python's ==, as the assert did. So the expected values never
    reach the program, and no object of its own takes part in the comparison. Raises
    ValueError for test code of another shape."""
    try:
        tree = ast.parse(test_code)
    except SyntaxError as error:
        raise ValueError(f"leetcode test_code is not valid Python: {error}") from None
    expected = []
    for index, node in enumerate(tree.body):
        if not isinstance(node, ast.Assert):
            continue
        test = node.test
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            raise ValueError(f"leetcode test_code line {node.lineno}: expected `assert <expression> == <literal>`")
        try:
            expected.append(ast.literal_eval(test.comparators[0]))
        except ValueError:
            raise ValueError(f"leetcode test_code line {node.lineno}: the expected value is not a literal") from None
        report = ast.Call(ast.Name("__report__", ast.Load()), [test.left], [])
        tree.body[index] = ast.copy_location(ast.Expr(report), node)
    if any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
        raise ValueError("leetcode test_code: an assert inside a block (only top-level asserts are judged)")
    if not expected:
        raise ValueError("leetcode test_code has no asserts")
    return ast.unparse(ast.fix_missing_locations(tree)), expected


# =========================================================================================
# Code, part 2: judging output.
# =========================================================================================

def _tokens_equal(got: str, want: str) -> bool:
    """Standard judge: whitespace-separated tokens, equal as strings, or as numbers within
    1e-6 (absolute or relative) when either is not an integer. So CRLF, trailing spaces and
    blank lines do not matter; case, extra tokens and "007" vs "7" do."""
    got_tokens, want_tokens = got.split(), want.split()
    if len(got_tokens) != len(want_tokens):
        return False
    for a, b in zip(got_tokens, want_tokens):
        if a == b:
            continue
        if re.fullmatch(r"[+-]?\d+", a) and re.fullmatch(r"[+-]?\d+", b):
            return False
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        if not (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= 1e-6 * max(1.0, abs(y))):
            return False
    return True


def _lcb_lines_equal(got: str, want: str) -> bool:
    """LiveCodeBench's stdin/stdout rule (testing_util.grade_stdio): both outputs stripped
    and cut into lines, each line stripped; as many lines, and each pair equal as text or,
    token by token, as Decimals (exactly: "2.50" equals "2.5", 0.3333333 is not 0.333333)."""
    got_lines = [line.strip() for line in got.strip().split("\n")]
    want_lines = [line.strip() for line in want.strip().split("\n")]
    if len(got_lines) != len(want_lines):
        return False
    for a, b in zip(got_lines, want_lines):
        if a == b:
            continue
        try:
            if [Decimal(x) for x in a.split()] != [Decimal(x) for x in b.split()]:
                return False
        except (InvalidOperation, ValueError):  # not numbers, or a signalling NaN
            return False
    return True


def _values_equal(got, want) -> bool:
    """Deserialised JSON values: same structure, ints exact, floats within 1e-6, bools only
    equal bools. `got` was produced by json.loads, so no user-defined __eq__ exists here."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        if isinstance(got, int) and isinstance(want, int):
            return got == want
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6) or got == want
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(map(_values_equal, got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_values_equal(got[k], want[k]) for k in got)
    return type(got) is type(want) and got == want


def _passes(source: str, judge: str, case, timeout: float) -> bool:
    mode, fn_name, stdin, expected = case
    status, output = sandbox.run(source, mode, fn_name, stdin, timeout, sandbox.PREAMBLES[judge])
    if status in ("start_timeout", "start_failed"):  # the sandbox's failure, not the program's
        raise NoVerdict("timeout" if status == "start_timeout" else "crash",
                        f"the code sandbox did not start the program ({status})")
    if status != "ok":
        return False
    text = output.decode("utf-8", errors="replace")
    if mode == "script":  # one literal per assert, in order; every assert must hold
        values = text.split("\n")
        if values.pop() != "" or len(values) != len(expected):
            return False
        try:
            return all(ast.literal_eval(got) == want for got, want in zip(values, expected))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False
    if mode == "stdio":
        return _lcb_lines_equal(text, expected) if judge == "livecodebench" else _tokens_equal(text, expected)
    try:
        got = json.loads(text)
    except json.JSONDecodeError:
        return False
    want, unwrap = expected
    if judge == "livecodebench":  # grade_call_based: prediction == expected, Python's ==, after
        return got == want        # a tuple becomes a list (JSON did that); JSON values only here
    # [PR]/APPS testing_util: TACO/APPS outputs wrap the return value in a list, and a
    # result equal to that list's element passes. We allow it only for one-element lists,
    # so [5, 6] is not credited by returning 5.
    return _values_equal(got, want) or (
        unwrap and isinstance(want, list) and len(want) == 1 and _values_equal(got, want[0]))


def code_score(program: str, tests, timeout: float = CODE_TIMEOUT) -> float:
    """Fraction of the first min(#tests, 10) tests that `program` passes. `program` may be
    a whole response (the last ```python block is used; for the benchmark judges, the block
    their official evaluation takes). A LeetCode problem is one test: 1.0 or 0.0, as its
    judge says. Raises ValueError on malformed `tests`.

    [PR]'s reward differs for call-based problems (fn_name). Its first pass runs every test
    and gives 1.0 if all pass; otherwise it scores the first 10 one by one, but builds each
    one-test dict from "inputs" and "outputs" only, dropping "fn_name", so that each test
    then runs the program as a stdin/stdout script, which prints nothing and fails: a
    call-based problem scores 1.0 or (almost always) 0.0 there. We give it the fraction
    passed, as [PR] gives stdin/stdout problems (docs/results.md, differences from the official code).

    When the sandbox could not start a test the score is 0, with a warning (score_batch counts
    such failures instead)."""
    return float(_or_wrong(_code_score, program, tests, timeout))


def _code_score(program, tests, timeout) -> float:
    judge, cases = _parse_tests(tests)
    source = _program(program, judge)
    cases = cases[:MAX_SCORED_TESTS]
    return sum(_passes(source, judge, case, timeout) for case in cases) / len(cases)


def code_correct(program: str, tests, timeout: float = CODE_TIMEOUT) -> bool:
    """Does `program` pass every test (all of them, not only the first 10)? Stops at the
    first failure. Raises ValueError on malformed `tests`; False when the sandbox could not
    start a test."""
    judge, cases = _parse_tests(tests)
    source = _program(program, judge)
    return bool(_or_wrong(lambda: all(_passes(source, judge, case, timeout) for case in cases)))


def _program(response: str, judge: str) -> str:
    return extract_program(response) if judge == "apps" else _benchmark_program(response, judge)


# =========================================================================================
# Bulk: score_batch for training and evaluation.
# =========================================================================================

def default_workers() -> int:
    """How many samples one process scores at once: the CPUs this process may use (its
    affinity mask and cgroup CPU quota: sandbox.usable_cpus) shared among the processes
    torchrun started on the node (LOCAL_WORLD_SIZE), at least 1. Each sample in flight keeps
    a CPU busy (a test program or a Math-Verify worker), and with 8 ranks each taking every
    CPU the node would be oversubscribed eightfold while other ranks still decode."""
    return max(1, sandbox.usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


# Why a sample could not be scored (the verifier's failure, not the response's): it ran out of
# time (a symbolic comparison past its deadline, a sandbox not up before the test's), it
# crashed (a Math-Verify worker or the sandbox died or could not start), or the row is malformed.
FAILURES = ("timeout", "crash", "malformed")


def score_batch(samples: list[dict], workers: int | None = None, math_timeout: float = MATH_TIMEOUT,
                code_timeout: float = CODE_TIMEOUT, failures: dict | None = None) -> list[float]:
    """Outcome rewards r_o for a batch, in input order, each in [0, 1].

    Each sample is a dict in the spirit of an Eurus-2-RL-Data row:
        "ability":      "math" or "code"
        "response":     the model's decoded response (str)
        "ground_truth": math: the answer string; code: the tests, as a JSON string or a
                        dict {"inputs": [...], "outputs": [...], "fn_name"?: str}
        "id":           optional, anything printable; named in warnings
    Math scores 1.0 or 0.0 (math_correct); code scores code_score (fraction of the first
    10 tests passed).

    `workers` (default: default_workers()) samples are scored at once by threads; each symbolic
    math comparison runs in a worker process killed after `math_timeout` s, and each code
    test in its own sandboxed process killed after `code_timeout` s, so no sample can hang
    the batch. A sample that cannot be scored scores 0 and logs a warning naming its id: a
    malformed row (unknown ability, missing or bad fields, bad tests), or a verifier that
    failed (see FAILURES); one bad row must not crash training. Unlike [PR] (which set every
    score to 0.5 when anything failed globally) nothing else is affected. Given a dict
    `failures`, the count of each kind in FAILURES is added to it, so that a caller can tell
    a broken verifier from wrong answers (train.py stops when too many fail).
    """
    workers = workers or default_workers()

    def score(index: int, sample) -> tuple[float, str | None]:
        row_id = sample.get("id", index) if isinstance(sample, dict) else index
        try:
            if not isinstance(sample, dict):
                raise TypeError(f"sample must be a dict, got {type(sample).__name__}")
            ability, response = sample.get("ability"), sample.get("response")
            ground_truth = sample.get("ground_truth")
            if ability == "math":
                return float(_math_verdict(response, ground_truth, math_timeout)), None
            if ability == "code":
                return _code_score(require_text(response, "response"), ground_truth, code_timeout), None
            raise ValueError(f"unknown ability {ability!r} (expected 'math' or 'code')")
        except Exception as error:  # never let one row take down a training step
            kind = (error.kind if isinstance(error, NoVerdict)
                    else "malformed" if isinstance(error, (ValueError, TypeError)) else "crash")
            logger.warning("score_batch: row id=%r scored 0 (%s): %s: %s",
                           row_id, kind, type(error).__name__, error)
            return 0.0, kind

    with ThreadPoolExecutor(max_workers=workers) as executor:
        results = list(executor.map(score, range(len(samples)), samples))
    if failures is not None:
        for _, kind in results:
            if kind is not None:
                failures[kind] = failures.get(kind, 0) + 1
    return [value for value, _ in results]


def score_responses(tokenizer, problems, responses, failures: dict | None = None):
    """The outcome reward r_o of each response (token ids) to its problem (a data.Problem), as
    train.py and eval.py score them: the text decoded without special tokens, as the official
    reward code scored it (docs/notes.md §7: the verifiers see what a reader sees), scored by
    score_batch (which adds the counts of samples it could not score to `failures`).
    Returns (texts, scores)."""
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = score_batch([{"ability": p.ability, "response": text, "ground_truth": p.ground_truth, "id": p.id}
                          for p, text in zip(problems, texts)], failures=failures)
    return texts, scores
