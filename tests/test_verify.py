"""verify.py: math answer equivalence, the code judge, the sandbox under attack, score_batch.

Adversarial programs run with short timeouts (1-2 s); the whole file should take well
under a minute on 2 cores.
"""
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time

import pytest

import verify


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


@pytest.mark.parametrize("response, ground_truth, expected", MATH_CASES + ISSUE_15_CASES)
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


def test_object_claiming_equality_cannot_pass():
    tests = {"fn_name": "f", "inputs": [[1]], "outputs": [[42]]}
    cheat = ("class Anything:\n"
             "    def __eq__(self, other):\n"
             "        return True\n"
             "def f(x):\n"
             "    return Anything()\n")
    assert verify.code_score(cheat, tests) == 0.0
    int_cheat = ("class Int(int):\n"
                 "    def __eq__(self, other):\n"
                 "        return True\n"
                 "def f(x):\n"
                 "    return Int(7)\n")
    assert verify.code_score(int_cheat, tests) == 0.0


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
])
def test_malformed_tests_are_clear_errors(tests, message):
    with pytest.raises(ValueError, match=message):
        verify.code_score("print(1)", tests)
    with pytest.raises(ValueError, match=message):
        verify.code_correct("print(1)", tests)


# ----------------------------------------------------------------------------------------
# The sandbox under attack: each attack fails, the test process is unharmed, nothing is
# left running, nothing is written outside the program's temporary directory. Every attack
# runs twice: in the bwrap jail (skipped where bubblewrap cannot jail) and without it.
# ----------------------------------------------------------------------------------------

@pytest.fixture(params=["jail", "no_jail"])
def sandbox_root(request, tmp_path, monkeypatch):
    """Pick the jail or the unjailed fallback, and make the sandbox create its temporary
    directories under our own folder, so we can find any process still running in one (by
    its cwd) and any directory left behind."""
    if request.param == "no_jail":
        monkeypatch.setattr(verify, "_jail_state", False)
    elif not verify._jail_works():
        pytest.skip("bubblewrap (bwrap) cannot jail on this machine")
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    before = set(_children())  # e.g. multiprocessing's resource tracker, left by earlier tests
    yield root
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone, or a zombie
            continue
        if cwd.startswith(str(root)):
            leftovers.append(pid)
    for pid in leftovers:  # do not let a failing test leak processes into the session
        os.kill(int(pid), signal.SIGKILL)
    assert leftovers == [], "sandboxed processes still running"
    assert list(root.iterdir()) == [], "temporary directories left behind"
    assert sorted(set(_children()) - before) == [], "child processes still running"


def _children() -> list[int]:
    """Our child processes, other than the (trusted, long-lived) Math-Verify workers."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"_symbolic_worker" not in cmdline:
            found.append(int(pid))
    return found


def _attack(source: str, timeout: float = 2.0, stdin: bytes = b""):
    start = time.monotonic()
    status, output = verify._run_in_sandbox(source, "stdio", None, stdin, timeout)
    return status, output, time.monotonic() - start


def test_infinite_loop_times_out(sandbox_root):
    status, _, seconds = _attack("while True:\n    pass", timeout=1.0)
    assert status == "timeout" and seconds < 3
    assert verify.code_score("while True:\n    pass", DOUBLE, timeout=1.0) == 0.0


def test_sleeping_child_after_closing_stdout_times_out(sandbox_root):
    status, _, seconds = _attack("import os, time\nos.close(1)\ntime.sleep(30)", timeout=1.0)
    assert status == "timeout" and seconds < 3


def test_memory_bomb_fails(sandbox_root):
    status, _, seconds = _attack("x = bytearray(8 * 1024**3)\nprint('allocated')")
    assert status == "error" and seconds < 3
    status, _, _ = _attack("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024**2))")
    assert status == "error"


def test_fork_bomb_is_refused(sandbox_root):
    assert _attack("import os\nwhile True:\n    os.fork()")[0] == "refused"
    assert _attack("import multiprocessing as mp\nmp.Process(target=print).start()")[0] == "refused"


@pytest.mark.parametrize("source", [
    "import os\nos.system('echo pwned')",
    "import subprocess\nsubprocess.run(['echo', 'pwned'])",
    "import os\nos.execv('/bin/echo', ['echo', 'pwned'])",
    "import os\nos.posix_spawn('/bin/echo', ['echo'], {})",
    "import socket\nsocket.create_connection(('127.0.0.1', 80))",
    "import ctypes\nctypes.CDLL('libc.so.6').system(b'echo pwned')",
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
])
def test_escapes_are_refused(sandbox_root, source):
    status, output, _ = _attack(source)
    assert status == "refused" and b"pwned" not in output


def test_refusal_counts_even_if_the_program_catches_it(sandbox_root):
    source = "import os\ntry:\n    os.system('true')\nexcept BaseException:\n    pass\nprint(6)"
    assert verify.code_score(source, {"inputs": [""], "outputs": ["6"]}) == 0.0


def test_killing_the_parent_is_refused(sandbox_root):
    status, _, _ = _attack("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert status == "refused"
    status, _, _ = _attack("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)")
    assert status == "refused"
    assert os.getpid() > 0  # and we are still here to say so


def test_writing_or_deleting_outside_is_refused(sandbox_root, tmp_path):
    target = tmp_path / "outside.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for source in (f"open({str(target)!r}, 'w').write('x')",
                   f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                   f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                   f"import os\nos.remove({str(victim)!r})",
                   f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                   f"import os\nos.rename({str(victim)!r}, 'stolen')",
                   # a directory fd outside would make relative paths escape
                   f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
                   f"os.close(os.open('outside.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))"):
        assert _attack(source)[0] == "refused", source
    assert not target.exists() and victim.read_text() == "keep me"
    # Inside its own directory a program may write, read back and delete.
    inside = "open('scratch', 'w').write('4')\nprint(open('scratch').read())\nimport os\nos.remove('scratch')"
    assert _attack(inside)[:2] == ("ok", b"4\n")


def test_environment_secrets_are_not_visible(sandbox_root, monkeypatch):
    monkeypatch.setenv("PRIME_FAKE_SECRET", "hunter2")
    peek = "import os\nprint(os.environ.get('PRIME_FAKE_SECRET', 'none'))"
    assert verify.code_score(peek, {"inputs": [""], "outputs": ["none"]}) == 1.0
    assert verify.code_score(peek, {"inputs": [""], "outputs": ["hunter2"]}) == 0.0
    # The parent's initial environment in /proc is out of reach too.
    status, output, _ = _attack("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())")
    assert status == "refused" and b"PATH" not in output


def test_exit_before_printing_fails(sandbox_root):
    tests = {"inputs": ["3\n"], "outputs": ["6\n"]}
    assert verify.code_score("import os\nos._exit(0)\nprint(6)", tests) == 0.0
    assert verify.code_score("print(6)\nimport sys\nsys.exit(3)", tests) == 0.0


def test_output_flood_is_cut_off(sandbox_root):
    status, output, seconds = _attack("while True:\n    print('x' * 100000)", timeout=5.0)
    assert status == "output_limit" and output == b"" and seconds < 4


def test_ordinary_libraries_still_work(sandbox_root):
    numpy = pytest.importorskip("numpy")
    assert numpy is not None
    source = "import numpy as np, threading\nt = threading.Thread(target=lambda: None)\nt.start()\nprint(np.arange(4).sum())"
    assert _attack(source)[:2] == ("ok", b"6\n")


# ----------------------------------------------------------------------------------------
# What only the jail stops. Where the audit hook would stop an attack too, the hook is taken
# out of the prelude for the test, as for code that gets past it (a C extension, a CPython
# bug): the jail alone must hold.
# ----------------------------------------------------------------------------------------

jail_only = pytest.mark.parametrize("sandbox_root", ["jail"], indirect=True)


def _without_audit_hook(monkeypatch):
    assert "sys.addaudithook(hook)" in verify._PRELUDE
    monkeypatch.setattr(verify, "_PRELUDE", verify._PRELUDE.replace("sys.addaudithook(hook)", "pass"))


@jail_only
def test_jail_hides_files_outside_its_directory(sandbox_root, tmp_path):
    other = tmp_path / "other_problem_tests.json"     # readable by the trainer, not by the jail
    other.write_text('{"inputs": ["secret input"], "outputs": ["secret output"]}')
    status, output, _ = _attack(f"print(open({str(other)!r}).read())")
    assert status == "error" and b"secret" not in output
    status, output, _ = _attack(f"print(open({verify.__file__!r}).read())")
    assert status == "error" and output == b""
    # At the top of its file system: only what Python needs and the way to its directory.
    status, output, _ = _attack("import os\nprint(' '.join(os.listdir('/')))")
    needed = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev"}
    needed |= {path.split(os.sep)[1] for path in (sys.prefix, sys.base_prefix, str(sandbox_root))}
    assert status == "ok" and set(output.decode().split()) <= needed


@jail_only
def test_jail_hides_other_processes(sandbox_root):
    status, output, _ = _attack("import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()), os.getppid())")
    assert (status, output) == ("ok", b"['1'] 0\n")  # itself, as pid 1; its parent is outside


@jail_only
def test_jail_has_no_network(sandbox_root, monkeypatch):
    _without_audit_hook(monkeypatch)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        source = ("import socket\ntry:\n"
                  f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                  "    print('connected')\nexcept OSError:\n    print('no network')")
        assert _attack(source)[:2] == ("ok", b"no network\n")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached our listener


@jail_only
def test_jail_allows_writes_only_in_its_directory(sandbox_root, tmp_path, monkeypatch):
    _without_audit_hook(monkeypatch)
    targets = [str(tmp_path / "outside.txt"), "/outside.txt", "/usr/outside.txt",
               f"/tmp/prime_outside_{os.getpid()}.txt"]
    source = (f"for path in {targets!r} + ['inside.txt']:\n"
              "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
              "    except OSError:\n        print('blocked', path)")
    status, output, _ = _attack(source)
    assert status == "ok"
    assert output.decode().splitlines() == [f"blocked {path}" for path in targets] + ["wrote inside.txt"]
    assert not any(os.path.exists(path) for path in targets)


@jail_only
def test_jail_kills_processes_that_left_the_group(sandbox_root, monkeypatch):
    # With the hook out of the way a program can fork, leave our process group with
    # setsid() and outlive the call; in the jail it dies with the jail's pid 1.
    _without_audit_hook(monkeypatch)
    marker = b"sleep\x0031.4159\x00"
    source = ("import os\nif os.fork() == 0:\n    os.setsid()\n"
              "    os.execv('/usr/bin/sleep', ['sleep', '31.4159'])\n"
              "import time\ntime.sleep(0.3)\nprint('parent done')")
    assert _attack(source)[:2] == ("ok", b"parent done\n")
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == marker:
                    survivors.append(int(pid))
        except OSError:
            continue
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_no_jail_warns_once_per_process(monkeypatch, caplog):
    for bwrap in (None, "/bin/false"):  # not installed; installed but cannot create namespaces
        monkeypatch.setattr(verify, "_BWRAP", bwrap)
        monkeypatch.setattr(verify, "_jail_state", None)
        with caplog.at_level(logging.WARNING, logger="verify"):
            caplog.clear()
            assert verify._jail_works() is False and verify._jail_works() is False
        assert len(caplog.records) == 1 and "without a jail" in caplog.text
    # and the fallback still judges
    assert verify.code_score("print(2 * int(input()))", DOUBLE) == 1.0


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
    (16, None, 16), (16, "8", 2), (2, "8", 1), (96, "8", 12), (None, "2", 1)])
def test_default_workers_share_the_node_among_local_ranks(monkeypatch, cpus, local_world_size, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
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
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
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
    with caplog.at_level(logging.WARNING, logger="verify"):
        scores = verify.score_batch(samples, workers=2)
    assert scores == [0.0, 0.0, 0.0, 0.0, 1.0]
    text = caplog.text
    assert "'no-gt'" in text and "ground_truth" in text
    assert "'bad-tests'" in text and "not valid JSON" in text
    assert "'what'" in text and "id=3" in text
    assert "'fine'" not in text
