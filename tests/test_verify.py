"""verify.py: math answer equivalence (support/math_grader.py), the code judges, score_batch."""
import importlib.util
import json
import logging
import threading
import time

import pytest

import verify
from support import math_grader, sandbox, workers


# ----------------------------------------------------------------------------------------
# Math: extraction
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, answer", [
    ("so the total is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{3} no wait, \\boxed{4}", "4"),                        # the last box
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),               # nested braces
    ("\\fbox{12}", "12"),
    ("thus $\\boxed 5$", "5"),
    ("\\boxed{7} then a cut-off \\boxed{\\frac{1}{", "7"),          # unbalanced last box
    ("Step 1: ...\nThe answer is $x = 7$.", "x = 7"),
    ("Step 1: ...\nFinal answer: 42.", "42"),
    ("Work.\nTherefore the area is $12\\pi$", "12\\pi"),
    ("\\frac{3}{4}", "\\frac{3}{4}"),                                # a bare answer
    ("so $x = \\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}$", "(2, 2), (6, 2)"),  # one answer, two boxes
    ("$\\boxed{k = 45} \\quad \\boxed{n = 2}$", "k = 45, n = 2"),
    ("$\\boxed{5}$.\n\n**Final Answer**\n$\\boxed{5}$", "5"),      # not one answer split: the last
    ("Step 4 ...\nFinal Answer: The largest $n$ is 34.", "34"),       # after the marker's "is"
    ("Final Answer: The final answer is $28\\%$. I hope it is correct.", "28\\%"),
    ("So the answer is\n\\[\n9\n\\]", "9"),
    ("Step 2 ...\nAnswer\n\\[\n9\n\\]", "9"),                       # a display block ends the response
    ("Step 2 ...\nTherefore, the error grows by 100%.", "100%"),    # a concluding sentence's number
    ("Step 2 ...\nSo we still need 7 more", None),                  # cut off: no answer
    ("Some reasoning\nwith no answer at all", None),
    ("", None),
])
def test_extract_answer(response, answer):
    assert verify.extract_answer(response) == answer


# ----------------------------------------------------------------------------------------
# Math: equivalence, true and false per category
# ----------------------------------------------------------------------------------------

MATH_CASES = [
    # integers and decimals, thousands separators, trailing zeros, signs
    ("\\boxed{1,000,000}", "1000000", True),
    ("\\boxed{1\\,000\\,000}", "1000000", True),
    ("\\boxed{1000100}", "1000000", False),
    ("\\boxed{3.50}", "3.5", True),
    ("\\boxed{-5}", "5", False),
    ("\\boxed{1000000.5}", "1000000", False),
    # fractions, and exact vs decimal
    ("\\boxed{\\dfrac{3}{4}}", "\\frac34", True),
    ("\\boxed{0.75}", "\\frac{3}{4}", True),
    ("\\boxed{6/8}", "\\frac{3}{4}", True),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", True),
    ("\\boxed{0.333333}", "\\frac{1}{3}", True),
    ("\\boxed{0.33}", "\\frac{1}{3}", False),
    ("\\boxed{50}", "0.5", False),
    # radicals, pi, e
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{6.283185}", "2\\pi", True),
    ("\\boxed{6.28}", "2\\pi", False),
    ("\\boxed{1 - e^{-1}}", "1-\\frac{1}{e}", True),
    ("\\boxed{1+\\frac{1}{e}}", "1-\\frac{1}{e}", False),
    # percentages, units, \text, degrees, currency
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{50\\%}", "0.5", True),
    ("\\boxed{12.5\\%}", "0.125", True),
    ("\\boxed{40\\%}", "0.5", False),
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("\\boxed{12 \\text{ inches}^2}", "12", True),
    ("\\boxed{72\\text{ km/h}}", "72", True),
    ("\\boxed{6\\text{ cm}}", "5", False),
    ("\\boxed{30^\\circ}", "30", True),
    ("\\boxed{\\$5.00}", "5", True),
    # equations, assignments, inequalities
    ("\\boxed{x=3}", "3", True),
    ("\\boxed{3}", "x = 3", True),
    ("\\boxed{x = 4}", "3", False),
    ("\\boxed{y = 2x + 3}", "2x+3", True),
    ("\\boxed{x > 3}", "3 < x", True),
    ("\\boxed{x \\ge 3}", "x > 3", False),
    # intervals, sets, tuples, matrices
    ("\\boxed{(-\\infty, 3]}", "x \\le 3", True),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty, 3]", False),
    ("\\boxed{\\{3, 2, 1\\}}", "\\{1,2,3\\}", True),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2,3\\}", False),
    ("\\boxed{(1, 2)}", "(1,2)", True),
    ("\\boxed{(2, 1)}", "(1, 2)", False),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
     "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 4 & 3 \\end{pmatrix}}",
     "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    # algebraic expressions
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{x^2+1}", "(x+1)^2", False),
    # text answers and multiple choice
    ("\\boxed{\\text{Monday}}", "monday", True),
    ("\\boxed{on}", "no", False),                 # sympy alone would read both as n*o
    ("\\boxed{\\text{(C)}}", "C", True),
    ("\\boxed{\\textbf{(C) } 12}", "(C)", True),
    ("\\boxed{D}", "C", False),
    ("\\boxed{c}", "C", False),
    # unboxed fallbacks and answer-free responses
    ("... so the answer is $\\frac{1}{3}$.", "\\frac13", True),
    ("Step 1 ...\nSo we get $x = 7$", "7", True),
    ("Step 1 ...\nI am not sure.", "7", False),
    # a ground truth that is itself a boxed solution
    ("\\boxed{4}", "Adding, we get $\\boxed{4}$.", True),
    # mixed numbers (MATH writes 2\\frac{1}{2})
    ("\\boxed{3\\frac{1}{4}}", "\\frac{13}{4}", True),
    ("\\boxed{3\\frac{1}{4}}", "\\frac{3}{4}", False),
    ("\\boxed{33\\frac{1}{3}\\%}", "33\\frac13", True),
]

# The kinds of issue 15 (each with true and false cases): one answer split over several
# boxes, LaTeX thousands separators, final answers without a box, very small or patterned
# values (no credit for being "close"), matrix environments.
ISSUE_15_CASES = [
    ("Both work: $\\boxed{(4, 1)} \\text{ and } \\boxed{(9, 2)}$.", "(4, 1), (9, 2)", True),
    ("Both work: $\\boxed{(4, 1)} \\text{ and } \\boxed{(9, 3)}$.", "(4, 1), (9, 2)", False),
    ("The values are $\\boxed{7}, \\boxed{8}, \\boxed{9}$.", "\\{7, 8, 9\\}", True),
    ("The values are $\\boxed{7}, \\boxed{8}$.", "\\{7, 8, 9\\}", False),
    ("Hence $\\boxed{r = 6} \\quad \\boxed{s = 11}$", "r = 6, s = 11", True),
    ("So $y = \\boxed{4}$ or $y = \\boxed{-1}$.", "-1, 4", True),
    ("So $y = \\boxed{4}$ or $y = \\boxed{-1}$.", "4", False),      # hedging earns nothing
    ("\\boxed{48,\\! 207}", "48207", True),
    ("\\boxed{3,\\!048,\\!576}", "3048576", True),
    ("\\boxed{48, 207}", "48207", False),                             # a list, not 48207
    ("Checking each case.\n\nFinal Answer: The greatest $m$ is 58.", "58", True),
    ("Checking each case.\n\nFinal Answer: The greatest $m$ is 58.", "85", False),
    ("Each side doubles. Therefore, the volume increases by 700%.", "700\\%", True),
    ("Each side doubles. Therefore, the volume increases by 700%.", "100\\%", False),
    ("Collecting terms:\n\nAnswer\n\\[\n23\n\\]", "23", True),
    ("Collecting terms:\n\nAnswer\n\\[\n23\n\\]", "32", False),
    ("\\boxed{\\frac{1}{1999!}}", "\\frac{1}{1997!}", False),
    ("\\boxed{\\frac{1}{1997!}}", "\\frac{1}{1997!}", True),
    ("\\boxed{\\frac{1}{7^{45}}}", "\\frac{1}{7^{46}}", False),
    ("\\boxed{7^{-46}}", "\\frac{1}{7^{46}}", True),
    ("\\boxed{1 - \\frac{1}{2^{70}}}", "1 - \\frac{1}{2^{71}}", False),
    ("\\boxed{3, 6, 9, \\ldots, 3n}", "1, 2, \\ldots, n", False),
    ("\\boxed{3, 6, 9, \\dots, 3n}", "3, 6, 9, \\cdots, 3n", True),
    ("\\boxed{1, 2, 4, \\ldots}", "1, 2, 3, \\ldots", False),
    ("\\boxed{\\begin{bmatrix} 2 & 0 \\\\ -1 & 7 \\end{bmatrix}}",
     "\\begin{pmatrix}2&0\\\\-1&7\\end{pmatrix}", True),
    ("\\boxed{\\begin{bmatrix} 2 & 0 \\\\ 1 & 7 \\end{bmatrix}}",
     "\\begin{pmatrix}2&0\\\\-1&7\\end{pmatrix}", False),
    ("\\boxed{\\begin{bmatrix} \\dfrac{1}{3} \\\\[4pt] 2 \\end{bmatrix}}",
     "\\begin{pmatrix}\\frac13\\\\2\\end{pmatrix}", True),
]

# The kinds of issue 23 (each with true and false cases): scientific notation (Minerva's golds
# are written "4.5e33"), a unit after a fraction, tiny decimals, a response that ran past its
# turn, one answer in two display blocks, AMC's labelled choices and number words, a ratio
# pattern, percent signs.
RAN_ON = ("So the answer is $\\boxed{5}$.<|im_end|>\n<|im_start|>user\nAnd 2+2?<|im_end|>\n"
          "<|im_start|>assistant\n$\\boxed{4}$")
ISSUE_23_CASES = [
    ("\\boxed{4.5 \\times 10^{33}}", "4.5e33", True),
    ("\\boxed{4.5 \\cdot 10^{33}}", "4.5e33", True),
    ("\\boxed{4.5e33}", "4.5 \\times 10^{33}", True),
    ("\\boxed{4.50 \\times 10^{33}}", "4.5 \\cdot 10^{33}", True),
    ("\\boxed{4.6 \\times 10^{33}}", "4.5e33", False),
    ("\\boxed{4.5 \\times 10^{32}}", "4.5e33", False),
    ("\\boxed{3.89 \\times 10^{-10}}", "3.89e-10", True),
    ("\\boxed{3.88 \\times 10^{-10}}", "3.89e-10", False),
    ("\\boxed{0.001}", "1e-3", True),
    ("\\boxed{10^{-3}}", "1e-3", True),
    ("\\boxed{0.01}", "1e-3", False),
    ("\\boxed{5\\times10^{-3}}", "0.005", True),
    ("\\boxed{4.5 \\times 10^{33}\\text{ ergs}}", "4.5e33", True),
    ("\\boxed{2e - 1}", "0.2", False),                                  # 2e - 1 with Euler's e
    ("\\boxed{\\frac{600}{7}\\text{ km/h}}", "\\frac{600}{7}", True),
    ("\\boxed{\\frac{600}{7}\\text{ km/h}}", "\\frac{700}{6}", False),
    ("\\boxed{0.0000009}", "0.0000002", False),                         # relative, not 1e-6 absolute
    ("\\boxed{.000067}", ".0000672", False),
    ("\\boxed{0.0000672}", ".0000672", True),
    ("\\boxed{0.0123457}", "\\frac{1}{81}", True),                     # six significant digits
    ("\\boxed{0.012346}", "\\frac{1}{81}", False),
    (RAN_ON, "5", True),
    (RAN_ON, "4", False),
    ("Final Answer: 12.\n<|im_start|>user\nNow 3+4?\n<|im_start|>assistant\nThe answer is 7.", "12", True),
    ("\\[\\boxed{x = 2}\\]\n\\[\\boxed{y = 3}\\]", "x = 2, y = 3", True),
    ("\\[\\boxed{x = 2}\\]\n\\[\\boxed{y = 4}\\]", "x = 2, y = 3", False),
    ("\\boxed{\\textbf{(C)}\\ 142}", "142", True),
    ("\\boxed{\\textbf{(C)}\\ 141}", "142", False),
    ("\\boxed{four}", "4", True),
    ("\\boxed{five}", "4", False),
    ("\\boxed{1:4:9:\\ldots}", "1:2:3:\\ldots", False),
    ("\\boxed{1 : 2 : 3 : \\dots}", "1:2:3:\\ldots", True),
    ("\\boxed{100%}", "100\\%", True),
    ("\\boxed{100\\%}", "100%", True),
    ("\\boxed{10%}", "100\\%", False),
]


@pytest.mark.parametrize("response, ground_truth, expected", MATH_CASES + ISSUE_15_CASES + ISSUE_23_CASES)

def test_math_correct(response, ground_truth, expected):
    assert verify.math_correct(response, ground_truth) is expected


def test_math_hostile_answer_is_cut_off_and_pool_recovers():
    # 10^{10^{10}} makes sympy build a ten-billion-digit integer; the worker is killed
    # at the deadline, the verdict is "wrong", and the next comparison still works.
    start = time.monotonic()
    assert verify.math_correct("\\boxed{10^{10^{10}}}", "5", timeout=1.5) is False
    assert time.monotonic() - start < 8
    assert verify.math_correct("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") is True


def test_math_symbolic_works_off_the_main_thread():
    results = []
    thread = threading.Thread(
        target=lambda: results.append(verify.math_correct("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")))
    thread.start()
    thread.join(60)
    assert results == [True]


@pytest.mark.parametrize("ground_truth", [None, "", "   "])
def test_math_missing_ground_truth_is_a_clear_error(ground_truth):
    with pytest.raises((ValueError, TypeError), match="ground_truth"):
        verify.math_correct("\\boxed{1}", ground_truth)


# ----------------------------------------------------------------------------------------
# Code: extraction, test formats, the judge
# ----------------------------------------------------------------------------------------

def test_extract_program_takes_last_python_block():
    response = "```python\nprint(1)\n```\ntext\n```python\nprint(2)\n```\nbye"
    assert verify.extract_program(response) == "\nprint(2)\n"
    assert verify.extract_program("print(3)") == "print(3)"


DOUBLE = {"inputs": ["3\n", "4\n", "10\n"], "outputs": ["6\n", "8\n", "20\n"]}


def test_stdio_true_false_and_partial():
    assert verify.code_score("```python\nprint(2 * int(input()))\n```", DOUBLE) == 1.0
    assert verify.code_correct("print(2 * int(input()))", json.dumps(DOUBLE)) is True
    assert verify.code_score("print(int(input()) + 3)", DOUBLE) == pytest.approx(1 / 3)
    assert verify.code_correct("print(int(input()) + 3)", DOUBLE) is False
    assert verify.code_score("raise SystemExit(1)", DOUBLE) == 0.0


@pytest.mark.parametrize("got, want, same", [
    ("1 2\r\n3  \n\n", "1 2\n3", True),      # CRLF, trailing whitespace, blank lines
    ("0.3333333", "0.333333", True),         # non-integer numbers within 1e-6
    ("0.3334", "0.3333", False),
    ("7", "007", False),                     # integers compare exactly
    ("YES", "Yes", False),                   # case matters
    ("1 2 3", "1 2", False),
    ("", "0", False),
])
def test_token_judge(got, want, same):
    assert verify._tokens_equal(got, want) is same


def test_call_based_formats():
    # TACO/APPS: a list of arguments per input; the output is wrapped in a list.
    taco = {"fn_name": "add", "inputs": [[1, 2], [5, 5]], "outputs": [[3], [10]]}
    assert verify.code_score("def add(a, b):\n    return a + b", taco) == 1.0
    assert verify.code_score("def add(a, b):\n    return a - b", taco) == 0.0
    # LiveCodeBench: newline-separated JSON arguments, JSON output.
    lcb = {"fn_name": "twoSum", "inputs": ["[2, 7, 11, 15]\n9"], "outputs": ["[0, 1]"]}
    leetcode = ("class Solution:\n"
                "    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
                "        seen = {}\n"
                "        for i, x in enumerate(nums):\n"
                "            if target - x in seen:\n"
                "                return (seen[target - x], i)\n"  # a tuple == a JSON list
                "            seen[x] = i\n")
    assert verify.code_correct(leetcode, lcb) is True
    assert verify.code_correct(leetcode.replace("return (seen[target - x], i)", "return [i]"),
                               lcb) is False
    # Printing inside the function does not disturb the returned value.
    assert verify.code_score("def add(a, b):\n    print('debug')\n    return a + b", taco) == 1.0


def test_call_based_unwrap_only_for_one_element_lists():
    tests = {"fn_name": "f", "inputs": [[0]], "outputs": [[5, 6]]}
    assert verify.code_score("def f(x):\n    return 5", tests) == 0.0
    assert verify.code_score("def f(x):\n    return [5, 6]", tests) == 1.0


def test_score_counts_first_ten_tests_but_correct_needs_all():
    # 12 tests; the program fails only the 12th: [PR] scores 10/10 = 1.0, yet not correct.
    tests = {"inputs": [f"{i}\n" for i in range(12)],
             "outputs": [f"{i}\n" for i in range(11)] + ["wrong\n"]}
    assert verify.code_score("print(input())", tests) == 1.0
    assert verify.code_correct("print(input())", tests) is False


# The benchmark judges (tests with a "judge" field, as data.load_benchmark writes them for
# LiveCodeBench and LeetCode): the official comparison rules, not the training judge's.

@pytest.mark.parametrize("got, want, same", [
    ("1 2\n3\n", "1 2\n3", True),
    ("  6  \n\n", "6", True),          # the whole output, and each line, are stripped
    ("1 2 3", "1\n2\n3", False),       # lines matter (the training judge compares tokens)
    ("2.50 1e2", "2.5 100", True),     # numbers compare as decimals, exactly...
    ("0.3333333", "0.333333", False),  # ...with no tolerance (the training judge allows 1e-6)
    ("007", "7", True),                # Decimal("007") == 7 (the training judge: not equal)
    ("1  2", "1 2", True),
    ("a  b", "a b", False),            # text within a line must match exactly
    ("YES", "Yes", False),
])
def test_livecodebench_output_rule(got, want, same):
    assert verify._lcb_lines_equal(got, want) is same


def test_livecodebench_call_rule_is_pythons_equality():
    def lcb(output):
        return {"judge": "livecodebench", "fn_name": "f", "inputs": ["2"], "outputs": [output]}
    assert verify.code_score("def f(x):\n    return 1", lcb("true")) == 1.0         # 1 == True
    assert verify.code_score("def f(x):\n    return 0.1 + 0.2", lcb("0.3")) == 0.0  # no tolerance
    assert verify.code_score("def f(x):\n    return (x, x)", lcb("[2, 2]")) == 1.0
    assert verify.code_score("def f(x):\n    return 5", lcb("[5]")) == 0.0
    # the training judge on the same tests: floats within 1e-6, booleans only equal booleans
    apps = {"fn_name": "f", "inputs": ["2"], "outputs": ["0.3"]}
    assert verify.code_score("def f(x):\n    return 0.1 + 0.2", apps) == 1.0


def test_benchmark_judges_take_the_official_evaluations_code_block():
    response = ("```python\ndef helper():\n    return 1\n```\nand to run it:\n```python\nprint(helper())\n```")
    assert verify.extract_program(response) == "\nprint(helper())\n"          # training: the last block
    assert verify._benchmark_program(response, "livecodebench") == "\ndef helper():\n    return 1\n"
    assert verify._benchmark_program("no fences at all", "livecodebench") == "no fences at all"
    assert verify._benchmark_program("```\ndef f(self):\n    pass\n```", "leetcode") == (
        "class Solution:\n    \n    def f(self):\n        pass\n    ")            # wrapped, as [PR] does


@pytest.mark.parametrize("tests, message", [
    ({"judge": "leetcode"}, "'test_code'"),
    ({"judge": "codeforces", "inputs": ["1"], "outputs": ["1"]}, "'judge' must be one of"),
    ("{not json", "not valid JSON"),
    ([1, 2], "must be a dict"),
    ({"inputs": ["1"]}, "'inputs' and 'outputs'"),
    ({"inputs": ["1", "2"], "outputs": ["1"]}, "2 inputs but 1 outputs"),
    ({"inputs": [], "outputs": []}, "no test cases"),
    ({"inputs": [3], "outputs": ["3"]}, "string input"),
    ({"fn_name": "f", "inputs": ["[1"], "outputs": ["1"]}, "bad JSON"),
    (None, "must be a dict"),
    # LeetCode test code of another shape than [PR]'s (setup lines, `assert <expression> == <literal>`)
    ({"judge": "leetcode", "test_code": "s = Solution(\n"}, "not valid Python"),
    ({"judge": "leetcode", "test_code": "s = Solution()\nassert s.f() != 3\n"}, "line 2: expected `assert"),
    ({"judge": "leetcode", "test_code": "want = 3\nassert Solution().f() == want\n"}, "line 2: the expected value is not"),
    ({"judge": "leetcode", "test_code": "def check(f):\n    assert f() == 3\ncheck(Solution().f)\n"}, "inside a block"),
    ({"judge": "leetcode", "test_code": "s = Solution()\n"}, "no asserts"),
])
def test_malformed_tests_are_clear_errors(tests, message):
    with pytest.raises(ValueError, match=message):
        verify.code_score("print(1)", tests)
    with pytest.raises(ValueError, match=message):
        verify.code_correct("print(1)", tests)


# ----------------------------------------------------------------------------------------
# Cheats: programs written to be paid without solving. Each scores 0 in every judge, jailed and
# not (the sandbox_root fixture runs both). The problem: print or return twice the input.
# ----------------------------------------------------------------------------------------

JUDGE_TESTS = {
    "apps stdin/stdout": {"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]},
    "apps call-based": {"fn_name": "double", "inputs": [[3], [5]], "outputs": [[6], [10]]},
    "livecodebench stdin/stdout": {"judge": "livecodebench", "inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]},
    "livecodebench call-based": {"judge": "livecodebench", "fn_name": "double", "inputs": ["3", "5"],
                                 "outputs": ["6", "10"]},
    "leetcode": {"judge": "leetcode", "test_code": "\nmy_solution = Solution()\n\ntest_input = { \"n\": 3 }\n"
                 "assert my_solution.double(**test_input) == 6\n\ntest_input = { \"n\": 5 }\n"
                 "assert my_solution.double(**test_input) == 10\n"},
}


def judged_program(body: str) -> str:
    """`body` defines double(n); the same text then serves every judge: a script that prints,
    a function, and a LeetCode Solution method."""
    return (body + "\nclass Solution:\n    def double(self, n):\n        return double(n)\n\n"
            "if __name__ == '__main__':\n    print(double(int(input())))\n")


FORGE = ("def forge(*args):\n"             # a pass signal on every descriptor, then a clean exit
         "    for fd in range(3, 64):\n"
         "        try:\n            os.write(fd, b'passed')\n        except OSError:\n            pass\n"
         "    os._exit(0)\n")
CHEATS = {
    "an object equal to everything": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\n    __hash__ = object.__hash__\n"
        "def double(n):\n    return Anything()\n"),
    "an int equal to everything": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def double(n):\n    return Int(7)\n"),
    "an exit before the asserts": "import os\nos._exit(0)\ndef double(n):\n    return 0\n",
    "a forged pass signal": "import os\n" + FORGE + "forge()\ndef double(n):\n    return 0\n",
    "a patched AssertionError and excepthook": (
        "import builtins, os, sys\n" + FORGE + "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "sys.excepthook = forge\ndef double(n):\n    return 0\n"),
    "reading the expected values from the judge": (  # files beside it, and every frame's strings
        "import os, re, sys\nseen = []\nfor name in os.listdir('.'):\n    try:\n"
        "        seen.append(open(name).read())\n    except Exception:\n        pass\n"
        "frame = sys._getframe()\nwhile frame is not None:\n"
        "    seen += [v for v in [*frame.f_locals.values(), *frame.f_globals.values()] if isinstance(v, str)]\n"
        "    frame = frame.f_back\nANSWERS = []\n"
        "for text in re.findall('=' '=' r' *([^\\n]+)', '\\n'.join(seen)):\n    try:\n"
        "        ANSWERS.append(int(text))\n    except ValueError:\n        pass\n"
        "def double(n):\n    return ANSWERS.pop(0) if ANSWERS else 0\n"),
    "a patched json": (
        "import json\njson.dumps = lambda *args, **kwargs: 'true'\njson.loads = lambda *args, **kwargs: [3]\n"
        "def double(n):\n    return 0\n"),
}


@pytest.mark.parametrize("judge", JUDGE_TESTS)
def test_an_honest_program_passes_every_judge(sandbox_root, judge):
    assert verify.code_score(judged_program("def double(n):\n    return 2 * n\n"), JUDGE_TESTS[judge]) == 1.0


@pytest.mark.parametrize("cheat", CHEATS)
def test_cheats_score_zero_in_every_judge(sandbox_root, cheat):
    program = judged_program(CHEATS[cheat])
    scores = {judge: verify.code_score(program, tests, timeout=2.0) for judge, tests in JUDGE_TESTS.items()}
    assert scores == dict.fromkeys(JUDGE_TESTS, 0.0)


def test_leetcode_judge_keeps_pythons_equality():
    """The asserts' == now runs here on plain data: what passed the official assert still
    passes (5.0 == 5, True == 1, a numpy integer), what failed still fails (a tuple is not a
    list); an exception or a result that is not plain data fails."""
    def judged(expected, returned, imports=""):
        tests = {"judge": "leetcode", "test_code": f"s = Solution()\nassert s.f(x=1) == {expected}\n"}
        return verify.code_score(f"{imports}class Solution:\n    def f(self, x):\n        return {returned}\n", tests)
    assert judged("5", "5.0") == judged("1", "True") == judged("[1, [2, 'a']]", "[1, [2, 'a']]") == 1.0
    assert judged("{1: 'x'}", "{1: 'x'}") == judged("None", "None") == judged("-3", "-3") == 1.0
    assert judged("[1, 2]", "(1, 2)") == judged("5", "6") == judged("'5'", "5") == 0.0
    assert judged("5", "1 // 0") == judged("5", "object()") == 0.0
    if importlib.util.find_spec("numpy"):
        assert judged("5", "np.int64(5)", "import numpy as np\n") == 1.0


# ----------------------------------------------------------------------------------------
# score_batch
# ----------------------------------------------------------------------------------------

def test_score_batch_mixed_keeps_order(sandbox_root):
    code_tests = json.dumps(DOUBLE)
    samples = [
        {"id": "m0", "ability": "math", "response": "\\boxed{2\\sqrt{2}}", "ground_truth": "\\sqrt{8}"},
        {"id": "c0", "ability": "code", "response": "```python\nprint(2*int(input()))\n```",
         "ground_truth": code_tests},
        {"id": "m1", "ability": "math", "response": "\\boxed{5}", "ground_truth": "6"},
        {"id": "c1", "ability": "code", "response": "print(int(input()) + 3)", "ground_truth": DOUBLE},
        {"id": "m2", "ability": "math", "response": "\\boxed{50\\%}", "ground_truth": "0.5"},
        {"id": "c2", "ability": "code", "response": "while True: pass", "ground_truth": code_tests},
    ]
    scores = verify.score_batch(samples, workers=2, code_timeout=1.0)
    assert scores == [1.0, 1.0, 0.0, pytest.approx(1 / 3), 1.0, 0.0]


@pytest.mark.parametrize("cpus, local_world_size, workers", [
    (16, None, 16), (16, "8", 2), (2, "8", 1), (96, "8", 12), (1, "2", 1)])
def test_default_workers_share_the_node_among_local_ranks(monkeypatch, cpus, local_world_size, workers):
    monkeypatch.setattr(sandbox, "usable_cpus", lambda: cpus)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)  # as torchrun sets it
    assert verify.default_workers() == workers


def test_score_batch_pool_is_sized_per_local_rank(monkeypatch):
    sizes = []

    class Recording(verify.ThreadPoolExecutor):
        def __init__(self, max_workers):
            sizes.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(verify, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(sandbox, "usable_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    sample = {"ability": "math", "response": "\\boxed{1}", "ground_truth": "1"}
    assert verify.score_batch([sample]) == [1.0]
    assert verify.score_batch([sample], workers=3) == [1.0]
    assert sizes == [2, 3]


def test_score_batch_bad_rows_score_zero_with_a_warning(caplog):
    samples = [
        {"id": "no-gt", "ability": "math", "response": "\\boxed{1}"},
        {"id": "bad-tests", "ability": "code", "response": "print(1)", "ground_truth": "{oops"},
        {"id": "what", "ability": "chemistry", "response": "x", "ground_truth": "y"},
        "not a dict",
        {"id": "fine", "ability": "math", "response": "\\boxed{1}", "ground_truth": "1"},
    ]
    failures = {}
    with caplog.at_level(logging.WARNING, logger="verify"):
        scores = verify.score_batch(samples, workers=2, failures=failures)
    assert scores == [0.0, 0.0, 0.0, 0.0, 1.0] and failures == {"malformed": 4}
    text = caplog.text

    assert "'no-gt'" in text and "ground_truth" in text
    assert "'bad-tests'" in text and "not valid JSON" in text
    assert "'what'" in text and "id=3" in text
    assert "'fine'" not in text


# A verifier that fails to decide is not a wrong answer: score_batch counts it by kind, the
# single-sample functions score it as wrong with a warning, and train.collect stops on too many.

@pytest.fixture
def fresh_math_pool(monkeypatch):
    """A Math-Verify pool of its own (no idle worker from earlier tests), closed afterwards."""
    pool = workers.Pool(math_grader.__name__, "_symbolic_worker", "Math-Verify")
    monkeypatch.setattr(math_grader, "_POOL", pool)
    yield pool
    pool.close()


SYMBOLIC = {"ability": "math", "response": "\\boxed{2\\sqrt{2}}", "ground_truth": "\\sqrt{8}"}  # needs Math-Verify


def test_math_verifier_failures_are_counted(fresh_math_pool, monkeypatch):
    hostile = {"ability": "math", "response": "\\boxed{10^{10^{10}}}", "ground_truth": "5"}
    failures = {}
    assert verify.score_batch([hostile, SYMBOLIC], workers=1, math_timeout=1.0, failures=failures) == [0.0, 1.0]
    assert failures == {"timeout": 1}
    monkeypatch.setattr(fresh_math_pool, "_boot", "raise SystemExit(3)")  # a worker that cannot start
    fresh_math_pool.close()
    failures = {}
    assert verify.score_batch([SYMBOLIC, SYMBOLIC], workers=2, failures=failures) == [0.0, 0.0]
    assert failures == {"crash": 2}
    assert verify.math_correct(SYMBOLIC["response"], SYMBOLIC["ground_truth"]) is False


def test_sandbox_failures_are_counted_not_blamed_on_the_program(sandbox_root, monkeypatch, caplog):
    sample = {"ability": "code", "response": "print(2 * int(input()))", "ground_truth": DOUBLE}
    monkeypatch.setattr(sandbox, "_PRELUDE", "raise SystemExit(1)")  # dies before the program starts
    failures = {}
    assert verify.score_batch([sample], failures=failures) == [0.0] and failures == {"crash": 1}
    monkeypatch.setattr(sandbox, "_PRELUDE", "import time\ntime.sleep(30)")  # not up before the deadline
    failures = {}
    assert verify.score_batch([sample], code_timeout=0.5, failures=failures) == [0.0]
    assert failures == {"timeout": 1}
    with caplog.at_level(logging.WARNING, logger="verify"):
        assert verify.code_score(sample["response"], DOUBLE, timeout=0.5) == 0.0
        assert verify.code_correct(sample["response"], DOUBLE, timeout=0.5) is False
    assert "the code sandbox did not start the program (start_timeout)" in caplog.text


def test_training_stops_when_too_many_responses_cannot_be_scored(tmp_path):
    """train.collect on a real (tiny) policy whose every response has malformed tests: with the
    share allowed it counts them (metrics.jsonl's unscored_* keys); past it, it stops."""
    import dataclasses

    import torch
    import torch.distributed as dist

    import data
    import train
    from support import metrics
    from tests.tiny import toy_config, toy_network
    from toy import task as toy
    tok = toy.build_toy_tokenizer(str(tmp_path / "tokenizer"))
    prompt = data.tokenize_prompt(tok, [{"role": "user", "content": "1+2"}])
    problems = [data.Problem(f"p{i}", "code", prompt, "{not json", "test", "1+2") for i in range(4)]
    cfg = toy_config(prompts_per_step=2, samples_per_prompt=2, max_response_tokens=4, accuracy_filter=False)
    device = torch.device("cpu")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        net = toy_network(tok, 64)
        rollouts, counts = train.collect(net, problems, data.PromptStream(4, 0, 0, 1), tok,
                                         dataclasses.replace(cfg, max_unscored_share=1.0), 1, device)
        assert (counts["unscored_malformed"], counts["unscored_timeout"], counts["unscored_crash"]) == (4, 0, 0)
        mask = rollouts.mask(device)
        row = metrics.step_metrics(1, rollouts, counts, None, None, torch.zeros_like(mask),
                                   train.PolicyStats(0.0, 0.0, 0.0, 0.0, 0.0), dict.fromkeys(
                                       ("start", "collect", "old", "prm"), 0.0) | {"policy": 1.0}, cfg, device)
        assert (row["unscored_malformed"], row["unscored_timeout"], row["unscored_crash"]) == (4, 0, 0)
        with pytest.raises(SystemExit, match=r"step 1: the verifier could not score 4 of 4 responses "
                                             r"\(timeout 0, crash 0, malformed 4\), more than --max_unscored_share=0.1"):
            train.collect(net, problems, data.PromptStream(4, 0, 0, 1), tok, cfg, 1, device)
    finally:
        dist.destroy_process_group()
