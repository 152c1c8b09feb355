"""Outcome verifiers: the reward r_o in [0, 1] that PRIME learns from.

PRIME trains on one number per response, the outcome reward r_o, which a rule-based
verifier computes ([P1 §4.2]): 1 if a math answer is right, the fraction of unit tests a
program passes for code. The implicit PRM then spreads that number over the tokens, so a
wrong verdict here is a wrong training signal, and a verifier that hangs stalls a whole
step (the official code could hang on CPU-bound programs: PRIME issue #56). This file:

  math     extract_answer(response)         -> the final answer as a string, or None
           math_correct(response, ground_truth) -> bool
  code     extract_program(response)        -> the program text
           code_score(program, tests)       -> fraction of the first (at most) 10 tests passed
           code_correct(program, tests)     -> every test passes
  bulk     score_batch(samples)             -> one float per sample, in input order

"[PR]" below means the official PRIME code, as summarised in docs/notes.md §7.

The code sandbox: what it stops and what it does not
----------------------------------------------------
Every test runs as a fresh `python -I` process under resource limits and a Python audit
hook (part 3 below). Where bubblewrap works, that process runs in a bwrap jail: its own
user, pid, network, ipc and uts namespaces, a root holding only /usr and the Python
installation (read-only) and the test's temporary directory (the only writable place),
no capabilities, and the whole pid namespace killed when the test ends. The jail stops
what the hook cannot: code that gets past the hook (a C extension module, including
`_posixsubprocess.fork_exec` called directly, or a CPython bug) still has no network,
cannot read our files outside /usr and the Python installation (credentials in the home
directory, the training data including other problems' tests, this source file), sees no
other process, writes nowhere but its directory, and dies with the jail even after
setsid(). Neither stops: a kernel exploit (there is no seccomp filter), memory use summed
over processes (RLIMIT_AS is per process; there is no cgroup), timing and CPU side
channels between concurrent programs, or a deliberate forgery of the judge's report from
inside its process: a program that writes "passed" on the descriptor our prelude reports
on and exits skips a LeetCode problem's asserts (a forged call-based result is only a
value it could have returned). The official judges, which run the program in their own
process, share this.
Without bubblewrap (one warning per process) the hook is the only line: code past it can
fork, leave the process group we kill and outlive the call, os.mkfifo and os.mknod are
not audited, any file our user can read is readable (except /proc/<other pid>), sockets
are refused by the hook alone, and RLIMIT_NPROC does not bind root. Run untrusted code at
scale as an unprivileged user inside a container or VM you can throw away; this sandbox
keeps honest-but-buggy and casually hostile programs (infinite loops, memory bombs, fork
bombs, shelling out, deleting files, peeking at the environment or our data) from
hurting the trainer.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from fractions import Fraction

logger = logging.getLogger(__name__)


# =========================================================================================
# Math, part 1: find the final answer in a response.
# =========================================================================================
# The paper's prompt asks the model to put its final answer in \boxed{} ([P1 App. A]), so
# the last \boxed{...} is the answer. [PR] match_answer also looks after "answer:" / "the
# answer is"; we use that, a display block that ends the response, a final inline formula
# and a concluding "Therefore ... 41 ..." sentence only as fallbacks when nothing is boxed
# (Math-Verify's extraction accepts all four; its test suite has an example of each).

_BOX = re.compile(r"\\(?:boxed|fbox)")
_ANSWER_IS = re.compile(r"\banswers?\s*(?:is|are|:)\s*:?\s*", re.IGNORECASE)
_INLINE_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
# A display block (\[...\] or $$...$$) with nothing but punctuation after it: "Answer\n\[\n9\n\]".
_TRAILING_DISPLAY = re.compile(r"(?:\\\[(.+?)\\\]|\$\$(.+?)\$\$)[\s.]*$", re.DOTALL)
# What may stand between the boxes of one answer split over several boxes, as in
# "\boxed{(2, 2)} \text{ and } \boxed{(6, 2)}", "\boxed{1}, \boxed{2}", "\boxed{k=45} \quad
# \boxed{n=2}" or "x = \boxed{-2} or x = \boxed{5}": spaces, commas, math delimiters, LaTeX
# spacing and line breaks, "and"/"or" (bare or in \text{}), and a variable's "x =".
_BOX_GAP = re.compile(r"(?:\s|[,;&$]|\\[,;:! ]|\\q?quad|\\\\|\\text\{\s*(?:and|or|,)?\s*\}"
                      r"|\b(?:and|or)\b|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*")
_CONCLUSION = re.compile(r"^\W*(?:therefore|thus|hence|so|finally|in conclusion)\b", re.IGNORECASE)
_COPULA = re.compile(r"\s(?:is|are|equals|be)\s", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:\s*\\?%)?")


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each complete \\boxed{...} / \\fbox{...} (nested braces
    matched) or `\\boxed 5` (no braces: the argument runs to the next space or `$`), in
    order. A box the response was cut off inside is not complete, so it is skipped."""
    found = []
    for match in _BOX.finditer(text):
        rest = text[match.end():]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            start = match.end() + len(rest) - len(stripped) + 1
            depth = 1
            for i in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    found.append((match.start(), i + 1, text[start:i].strip()))
                    break
        elif rest[:1] == " ":
            argument = re.match(r"\s*([^\s$]+)", rest)
            if argument:
                found.append((match.start(), match.end() + argument.end(), argument.group(1)))
    return found


def _final_boxed(text: str) -> str | None:
    """The last box's content; when boxes just before it are separated from it only by
    _BOX_GAP (one answer split over several boxes), their contents joined with ", ".
    A value boxed twice counts once. Hedging is then not rewarded:
    "\\boxed{2} or \\boxed{3}" is the answer "2, 3", which is wrong when the key is 3."""
    boxes = _boxes(text)
    if not boxes:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        gap_start, gap_end = box[1], group[0][0]
        if gap_start > gap_end or gap_end - gap_start > 200 or not _BOX_GAP.fullmatch(text, gap_start, gap_end):
            break
        group.insert(0, box)
    contents = list(dict.fromkeys(content for _, _, content in group))
    return ", ".join(contents)


def extract_answer(response: str) -> str | None:
    """The final answer in `response` as a string, or None when there is none.

    In order: the last \\boxed{} (or \\fbox{}, or `\\boxed 5`), joined with the boxes just
    before it when one answer is split over several; after the last "answer:" / "the
    answer is", the rest of that sentence (from its last "is", as in "Final Answer: The
    largest $n$ is 34."; a formula in it wins); a display block that ends the response;
    the last number of a finished last sentence without a formula that opens with
    "Therefore" / "Thus" / "Hence" / "So"; the last $...$, \\(...\\) or \\[...\\] on the
    last non-empty line. A one-line response is taken to be a bare answer (ground truths
    and hand-written tests look like that; model responses never do).
    """
    boxed = _final_boxed(response)
    if boxed is not None:
        return boxed
    markers = list(_ANSWER_IS.finditer(response))
    if markers:
        answer = _answer_in_sentence(response[markers[-1].end():])
        if answer:
            return answer
    display = _TRAILING_DISPLAY.search(response)
    if display:
        return next(group for group in display.groups() if group is not None).strip()
    lines = [line for line in response.strip().split("\n") if line.strip()]
    if not lines:
        return None
    sentence = _sentences(lines[-1])[-1]
    formula = _last_inline_math(sentence)
    # A finished sentence only: a response cut off at the length limit in the middle of
    # "So we still need 7 more ..." has not answered.
    concluded = _CONCLUSION.match(sentence) and sentence.endswith(".")
    numbers = _NUMBER.findall(sentence) if concluded else []
    if formula is None and numbers:
        return numbers[-1].rstrip(",")
    formula = _last_inline_math(lines[-1])
    if formula is not None:
        return formula
    return lines[0].strip() if len(lines) == 1 else None


def _last_inline_math(text: str) -> str | None:
    found = list(_INLINE_MATH.finditer(text))
    if not found:
        return None
    return next(group for group in found[-1].groups() if group is not None).strip()


def _masked(text: str) -> str:
    """`text` with every formula blanked out (same length), so that a period or an "is"
    inside $...$ does not end a sentence or split an answer."""
    return _INLINE_MATH.sub(lambda m: "#" * len(m.group(0)), text)


def _sentences(text: str) -> list[str]:
    """`text` cut into sentences (at ". " and line ends outside formulas); never empty."""
    cuts = [m.end() for m in re.finditer(r"\.(?:\s+|$)|\n+", _masked(text))]
    pieces = [text[a:b].strip() for a, b in zip([0, *cuts], [*cuts, len(text)])]
    return [piece for piece in pieces if piece] or [""]


def _answer_in_sentence(tail: str) -> str | None:
    """The answer in the sentence that follows an answer marker: the part after its last
    "is" / "are" / "equals" outside formulas ("The largest $n$ is 34." -> "34"), then its
    last formula if it has one, else the text without a final period."""
    sentence = _sentences(tail)[0]
    copulas = list(_COPULA.finditer(_masked(sentence)))
    if copulas:
        sentence = sentence[copulas[-1].end():]
    formula = _last_inline_math(sentence)
    answer = (formula if formula is not None else sentence).strip().rstrip(".").strip()
    return answer or None


# =========================================================================================
# Math, part 2: normalise, then decide. Cheap exact rules first, Math-Verify for the rest.
# =========================================================================================
# [PR] graded with the PRM800K/Hendrycks string normaliser plus sympy and a *relative*
# tolerance of 1e-4, also trying gt*100 and gt/100. That gives false credit: 1000100
# "equals" 1000000 and 50 "equals" 0.5. We keep the normalisation idea but compare plain
# numbers ourselves, exactly, and hand everything else (radicals, pi, sets, intervals,
# matrices, equations) to Math-Verify, the field's LaTeX-to-sympy grader.

_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# A number followed by a unit in \text{...} (optionally squared/cubed): "5\text{ cm}^2",
# "72\text{ km/h}".
_TRAILING_UNIT = re.compile(r"^(.*\d)\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z ./]*\}(?:\^\{?\d\}?)?$")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}([, ]\d{3})+(\.\d+)?")
_ASSIGNMENT = re.compile(r"^\\?[a-zA-Z]+(?:_\{?\w+\}?)?\s*=\s*([^=]+)$")
_CHOICE = re.compile(r"^\(?([A-E])\)?(?:$|[\s.:])")
_WORDS = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")
ELLIPSIS = "\\ldots"  # \dots, \cdots and "..." are spelled this way


def _normalize(answer: str) -> tuple[str, bool]:
    """Strip presentation (math delimiters, \\left/\\right, spacing macros, \\dfrac,
    degrees, currency, \\text units, a final period, thousands separators) and spell a
    few things one way (ellipses, the empty set, "1 or 2" as "1, 2", a matrix row break
    with spacing "\\\\[2pt]"). Returns the text and whether it carried a percent sign."""
    s = answer.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        while s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    s = re.sub(r"\\left\.|\\right\.|\\left|\\right|\\displaystyle", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    # LaTeX thousands separators: "32,\! 349" and "4{,}096" are 32349 and 4096 (but "32, 349"
    # stays a list of two numbers).
    s = re.sub(r",\\!\s*", ",", s).replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"(?<!\\)\\[;: ]|\\q?quad|~", " ", s)  # "\ ", but not a row break's "\\ "
    s = re.sub(r"\\(?:[lc]?dots|ldotp)|\.\.\.", lambda _: ELLIPSIS, s)
    s = s.replace("\\varnothing", "\\emptyset")
    s = re.sub(r"\\\\\s*\[[^\]]*\]", r"\\\\", s)  # \\[2pt] -> \\
    s = re.sub(r"\\text\{\s*(and|or)\s*\}", r" \1 ", s)
    s = re.sub(r"(?<=[\d)\]}])\s*,?\s+(?:and|or)\s+(?=[-+\d(\[\\])", ", ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)  # 30^\circ -> 30
    s = s.strip().rstrip(".").strip()
    percent = s.endswith("%")
    if percent:
        s = s[:-1].rstrip("\\").strip()
    s = re.sub(r"^\\\$\s*", "", s)  # \$5 -> 5
    unit = _TRAILING_UNIT.match(s)
    if unit:
        s = unit.group(1)
    while _TEXT_MACRO.search(s):
        s = _TEXT_MACRO.sub(r"\1", s)
    s = " ".join(s.split()).rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    return s, percent


def _as_number(s: str) -> tuple[Fraction, bool] | None:
    """A plain number (integer, decimal, a/b, \\frac{a}{b}, \\frac12, a mixed number
    2\\frac{1}{2} as MATH writes them) as an exact Fraction plus whether it was written
    as a decimal; None for anything else."""
    s = s.replace(" ", "")
    sign = -1 if s.startswith("-") else 1
    body = s.lstrip("+-") if s[:1] in "+-" and s[1:2] not in "+-" else s
    if re.fullmatch(r"\d+", body):
        return sign * Fraction(int(body)), False
    if re.fullmatch(r"\d*\.\d+|\d+\.", body):
        return sign * Fraction(body if not body.endswith(".") else body[:-1]), True
    frac = (re.fullmatch(r"()(\d+)/(\d+)", body)
            or re.fullmatch(r"(\d*)\\frac\{(\d+)\}\{(\d+)\}", body)
            or re.fullmatch(r"(\d*)\\frac(\d)(\d)", body))
    if frac and int(frac.group(3)) != 0:
        whole, numerator, denominator = (int(x or 0) for x in frac.groups())
        if whole and numerator >= denominator:  # "2\frac{5}{3}" is not a mixed number
            return None
        return sign * (whole + Fraction(numerator, denominator)), False
    return None


def _numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    """Exact numbers compare exactly (1000100 != 1000000). Only when one side is written
    as a decimal may they differ, by at most 1e-6 (Math-Verify rounds floats to 6 places),
    so 1/3 == 0.333333 but 1/3 != 0.33."""
    (x, x_decimal), (y, y_decimal) = a, b
    if x == y:
        return True
    return (x_decimal or y_decimal) and abs(x - y) <= Fraction(1, 10**6)


def _quick_verdict(pred: str, gold: str) -> bool | None:
    """Decide without sympy when we can; None means "ask Math-Verify"."""
    (p, p_pct), (g, g_pct) = _normalize(pred), _normalize(gold)
    if p.replace(" ", "") == g.replace(" ", "") and p_pct == g_pct:
        return True
    # Multiple choice: the key is a capital letter A-E; "(C)", "C", "\text{(C)} 12" match C.
    gold_choice = _CHOICE.fullmatch(g)
    if gold_choice:
        pred_choice = _CHOICE.match(p)
        return bool(pred_choice) and pred_choice.group(1) == gold_choice.group(1)
    # Word answers ("odd", "Monday", "no solution") compare as text, case-insensitively:
    # sympy would read "no" as n*o and credit "on". (A product of letters like "ab" is
    # taken for a word too, so "ba" is not credited for it.)
    if _WORDS.fullmatch(g):
        return p.casefold() == g.casefold()
    # "x = 3" against "3": compare the right-hand side (but "x=3" vs "y=3" goes to sympy).
    if "=" in p and "=" not in g and _ASSIGNMENT.match(p):
        p = _ASSIGNMENT.match(p).group(1)
    if "=" in g and "=" not in p and _ASSIGNMENT.match(g):
        g = _ASSIGNMENT.match(g).group(1)
    p_num, g_num = _as_number(p), _as_number(g)
    if p_num is not None and g_num is not None:
        if p_pct == g_pct:
            return _numbers_equal(p_num, g_num)
        # One side has a percent sign: 50% matches 50 and 0.5, but 50 never matches 0.5.
        pct_side, other = (p_num, g_num) if p_pct else (g_num, p_num)
        return _numbers_equal(pct_side, other) or _numbers_equal(
            (pct_side[0] / 100, pct_side[1]), other)
    return None


def _symbolic_equal(pred: str, gold: str) -> bool:
    """Math-Verify's verdict on two answer strings. Runs only inside a worker process
    (see _SymbolicPool), so its own signal-based timeouts are switched off (they only
    work on a main thread) and our pool's hard kill bounds the time instead."""
    from math_verify import parse, verify

    def as_latex(answer: str) -> str:
        text, percent = _normalize(answer)
        return "$" + text + ("\\%" if percent else "") + "$"

    try:
        gold_parsed = parse(as_latex(gold), parsing_timeout=None)
        pred_parsed = parse(as_latex(pred), parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        # allow_set_relation_comp: "x <= 3" and "(-\infty, 3]" are the same answer.
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None,
                           allow_set_relation_comp=True)
                    and not _exact_numbers_differ(gold_parsed[0], pred_parsed[0]))
    except Exception:  # an unparsable answer is a wrong answer
        return False


def _exact_numbers_differ(a, b) -> bool:
    """Do two exact numbers (sympy expressions without unknowns or decimals) differ?
    Math-Verify compares numbers after rounding them to 6 decimal places, so every value
    below 5e-7 equals every other: 1/2^98 "equals" 1/2^99 and 1/2006! "equals" 1/2004!.
    Exact answers must agree to 30 significant digits instead (evaluated with 40, which
    also settles equal radicals that sympy does not simplify into each other). Decimals
    keep Math-Verify's rule, as plain numbers keep ours (_numbers_equal)."""
    import sympy
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False  # sets, intervals, matrices, equations: Math-Verify's verdict stands
    if a.free_symbols or b.free_symbols or a.atoms(sympy.Float) or b.atoms(sympy.Float):
        return False
    x, y = sympy.N(a, 40), sympy.N(b, 40)
    return bool(abs(x - y) > sympy.Float("1e-30", 40) * max(abs(x), abs(y)))


# ----- a pool of Math-Verify worker processes with hard kills ------------------------------
# sympy can run for minutes or eat gigabytes on a hostile answer (10^{10^{10}}), and a
# thread cannot be stopped, so every symbolic comparison runs in a worker process that is
# killed when it misses its deadline. A worker is a plain `python -I` child that imports
# math_verify once (about a second) and then answers one request per line on its stdin, so
# it works the same from any thread of any caller (multiprocessing's spawn/forkserver
# would re-run the caller's __main__ in every worker; forking a multi-threaded trainer is
# unsafe). Idle workers are kept for the next call; they are our own trusted code, they
# exit when our end of their stdin closes, and atexit kills any that remain.

MATH_TIMEOUT = 10.0  # seconds per symbolic comparison ([PR]: 1 s per sympy step, 300 s per sample)
_MATH_WORKER_MEMORY = 2 << 30  # bytes of address space per worker (sympy on 10^{10^{10}})
_WORKER_START_TIMEOUT = 60.0   # importing sympy on a loaded 2-core machine can take seconds
_WORKER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "import importlib; importlib.import_module(sys.argv[2])._symbolic_worker()")


def _symbolic_worker() -> None:
    """Worker main loop: a JSON [pred, gold] per stdin line -> "1" or "0" per stdout line."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (_MATH_WORKER_MEMORY, _MATH_WORKER_MEMORY))
    replies = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # nothing but verdicts may reach our stdout
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notes
    import math_verify  # noqa: F401  (the slow import, done before saying "ready")
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        pred, gold = json.loads(line)
        replies.write("1\n" if _symbolic_equal(pred, gold) else "0\n")
        replies.flush()


def _read_line(process: subprocess.Popen, deadline: float) -> str | None:
    """One line from a worker's stdout, or None if it did not come before `deadline`."""
    fd = process.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:  # the worker died (e.g. out of memory)
            return None
        data += chunk
    return data.decode()


class _SymbolicPool:
    """Worker processes shared by every caller: a caller borrows an idle worker (or starts
    one), sends one comparison, and gets the verdict back, or kills the worker when the
    deadline passes. There are never more workers than concurrent callers."""

    def __init__(self):
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live: set = set()

    def _start(self) -> subprocess.Popen | None:
        here = os.path.dirname(os.path.abspath(__file__))
        module = os.path.splitext(os.path.basename(__file__))[0]
        worker = subprocess.Popen(
            [sys.executable, "-I", "-c", _WORKER_BOOT, here, module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)  # a Ctrl-C meant for us does not kill it mid-reply
        with self._lock:
            self._live.add(worker)
        if _read_line(worker, time.monotonic() + _WORKER_START_TIMEOUT) != "ready\n":
            self._kill(worker)
            return None
        return worker

    def _kill(self, worker: subprocess.Popen) -> None:
        worker.kill()
        worker.wait()
        worker.stdin.close()
        worker.stdout.close()
        with self._lock:
            self._live.discard(worker)

    def equal(self, pred: str, gold: str, timeout: float) -> bool:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = self._start()
            if worker is None:
                logger.warning("math: a Math-Verify worker failed to start; scored as wrong")
                return False
        try:
            worker.stdin.write((json.dumps([pred, gold]) + "\n").encode())
            worker.stdin.flush()
            reply = _read_line(worker, time.monotonic() + timeout)
        except OSError:  # BrokenPipeError: the worker had died
            reply = None
        if reply is None:
            logger.info("math: symbolic comparison gave no verdict in %.1f s; wrong", timeout)
            self._kill(worker)
            return False
        self._idle.put(worker)
        return reply == "1\n"

    def close(self) -> None:
        with self._lock:
            workers = list(self._live)
        for worker in workers:
            self._kill(worker)
        while not self._idle.empty():
            self._idle.get_nowait()


_SYMBOLIC_POOL = _SymbolicPool()
atexit.register(_SYMBOLIC_POOL.close)


def _require_text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _gold_answer(ground_truth) -> str:
    """The reference answer: a dataset's answer string, or a solution with a \\boxed{}."""
    text = _require_text(ground_truth, "ground_truth")
    if not text.strip():
        raise ValueError("ground_truth is missing (empty string)")
    boxed = _final_boxed(text)
    return boxed if boxed is not None else text.strip()


def _math_correct(response, ground_truth, timeout: float) -> bool:
    gold = _gold_answer(ground_truth)
    pred = extract_answer(_require_text(response, "response"))
    if pred is None or not pred.strip():
        return False
    return _answers_equal(pred, gold, timeout)


def _answers_equal(pred: str, gold: str, timeout: float) -> bool:
    """Our exact rules, then the pattern rule below, then Math-Verify."""
    verdict = _quick_verdict(pred, gold)
    if verdict is not None:
        return verdict
    # A pattern such as "1, 3, 5, \ldots, 2n-1" is compared term by term, an "\ldots" only
    # with an "\ldots" in the same place: Math-Verify reads such a list as something else
    # entirely (it credited "1, 3, 5, \ldots, 2n-1" for "1, 2, \ldots, n").
    p, g = (_split_top_level(_normalize(x)[0]) for x in (pred, gold))
    if ELLIPSIS in p or ELLIPSIS in g:
        return len(p) == len(g) and all(
            a == b == ELLIPSIS or (ELLIPSIS not in (a, b) and _answers_equal(a, b, timeout))
            for a, b in zip(p, g))
    return _SYMBOLIC_POOL.equal(pred, gold, timeout)


def _split_top_level(s: str) -> list[str]:
    """`s` split at the commas that are not inside (), [] or {}: "1, f(2, 3), \\ldots"."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if c == "," and depth == 0:
            parts.append(s[start:i].strip())
            start = i + 1
    return [*parts, s[start:].strip()]


def math_correct(response: str, ground_truth: str, timeout: float = MATH_TIMEOUT) -> bool:
    """Is the final answer in `response` (a model response or a bare answer) equal to
    `ground_truth` (a dataset answer string)? Raises ValueError/TypeError on a missing
    ground truth; a response without an answer is simply wrong. Symbolic comparisons run
    in a worker process killed after `timeout` seconds (then: False)."""
    return _math_correct(response, ground_truth, timeout)


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
# Each runs programs in our sandbox; the official judges exec'd them in a forked process.
JUDGES = ("apps", "livecodebench", "leetcode")


def extract_program(response: str) -> str:
    """The last ```python block of a response, or the whole text if there is none (the
    [PR] training rule: completion.split('```python')[-1].split('```')[0])."""
    return _require_text(response, "response").split("```python")[-1].split("```")[0]


def _benchmark_program(response: str, judge: str) -> str:
    """The program the official LeetCode / LiveCodeBench evaluation runs for a response:
    the last ```python block that defines something ("def "), else the last ```python
    block; the same over plain ``` blocks; else the text before the first ``` ([PR]
    evaluate_leetcode.match_code, and [PR]'s copy of lcb_runner extraction_utils.extract_code).
    LeetCode then wraps code without "class Solution:" in one, indented, as
    evaluate_leetcode.py does (its tests call Solution().method)."""
    response = _require_text(response, "response")
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
    {"judge": "leetcode", "test_code": str}, one case whose code travels on stdin.
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
        return judge, [("script", None, test_code.encode(), None)]
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


# =========================================================================================
# Code, part 3: the sandbox.
# =========================================================================================
# [PR] ran programs in a multiprocessing child with APPS' reliability_guard (destructive
# os functions set to None), a signal.alarm of 5 s per test and no memory limit. Here each
# test runs in a fresh `python -I` process (isolated mode: no PYTHON* variables, no user
# site, no script directory on sys.path) in its own temporary directory and its own
# session, so one os.killpg reaches everything it started. When the machine has
# bubblewrap, that process runs inside a bwrap jail (below: its own namespaces, nothing of
# the file system but the Python installation, read-only, and the temporary directory).
# The prelude below runs first in that process: it sets resource limits, then installs an
# audit hook that kills the process (exit code _REFUSED) on any refused action, then runs
# the program. In the jail the hook is a second line; without it, the only one.

_REFUSED = 86                  # exit code of a process whose audit hook refused an action
_MEMORY_LIMIT = 1 << 30        # RLIMIT_AS per test program: 1 GiB of address space
_FILE_SIZE_LIMIT = 16 << 20    # RLIMIT_FSIZE: no file written bigger than 16 MiB
_OPEN_FILES_LIMIT = 64         # RLIMIT_NOFILE
_OUTPUT_LIMIT = 16 << 20       # bytes of stdout read; past it the test fails and the program is
                               # killed at once (no test expects that much; waiting for the
                               # timeout while draining would only burn CPU)
CODE_TIMEOUT = 5.0             # [PR] code_util: 5 s wall clock per test (LeetCode's and
                               # LiveCodeBench's official judges allow 10 s per script and 6 s per test)
MAX_SCORED_TESTS = 10          # [PR] code_util: reward = passed / min(#tests, 10)

# Names pre-imported for the program, as LeetCode's judge and [PR]'s testing_util (which
# prepends a block of imports) provide: `List[int]` annotations must not be a NameError.
_PREAMBLE = """\
import sys, math, collections, itertools, functools, heapq, bisect, string, re
from typing import *
from collections import Counter, defaultdict, deque, OrderedDict
from functools import lru_cache, cache, reduce
from itertools import accumulate, product, permutations, combinations
from heapq import heappush, heappop, heapify
from bisect import bisect_left, bisect_right
from math import gcd, inf, sqrt, ceil, floor, log, log2
"""
# The benchmark judges' own blocks: lcb_runner's `import_string` (testing_util.py), and
# [PR]'s LeetCode IMPORT_HELPER["python"] (eval/utils/evaluation_leetcode.py; numpy only
# where it is installed).
_LCB_PREAMBLE = """\
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics
import itertools, functools, operator, io, sys, json
sys.setrecursionlimit(50000)
"""
_LEETCODE_PREAMBLE = """\
import math, re, sys, copy, datetime, itertools, collections, heapq, functools, hashlib, string
try:
    import numpy
    import numpy as np
except ImportError:
    pass
from typing import *
from collections import *
from functools import *
"""
_PREAMBLES = {"apps": _PREAMBLE, "livecodebench": _LCB_PREAMBLE, "leetcode": _LEETCODE_PREAMBLE}

_PRELUDE = r'''
import json, os, resource, sys
mode, fn_name, cpu_seconds, memory, file_size, open_files, refused_code, preamble = sys.argv[1:]
for limit, value in ((resource.RLIMIT_CPU, int(cpu_seconds)), (resource.RLIMIT_AS, int(memory)),
                     (resource.RLIMIT_FSIZE, int(file_size)), (resource.RLIMIT_NOFILE, int(open_files)),
                     (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
root = os.path.realpath(os.getcwd())
with open("solution.py") as f:
    source = f.read()
if mode != "stdio":                          # call: the arguments as JSON; script: the test code
    given = sys.stdin.read()
    result_fd = os.dup(1)                      # the result goes here; the program's own
    devnull = os.open(os.devnull, os.O_WRONLY) # prints go to /dev/null
    os.dup2(devnull, 1)
    os.close(devnull)

def inside(path):
    if isinstance(path, int):
        return False
    real = os.path.realpath(os.fsdecode(path))
    return real == root or real.startswith(root + os.sep)

def refuse(event):
    os.write(2, ("sandbox: refused " + event + "\n").encode())
    os._exit(int(refused_code))

ALWAYS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
          "subprocess.Popen", "os.killpg", "os.link", "os.symlink", "resource.setrlimit",
          "resource.prlimit", "pty.spawn"}
PATHS = {"os.remove": (0,), "os.rmdir": (0,), "shutil.rmtree": (0,), "os.rename": (0, 1),
         "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.mkdir": (0,),
         "os.utime": (0,), "os.chflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
OWN_PID = str(os.getpid())

def hook(event, args):
    if event in ALWAYS or event.startswith("socket."):
        refuse(event)
    elif event.startswith("ctypes."):
        if not (event == "ctypes.dlopen" and args[0] is None):  # numpy's import opens itself
            refuse(event)
    elif event == "os.kill":
        if args[0] != os.getpid():
            refuse(event)
    elif event in PATHS:
        if not all(inside(args[i]) for i in PATHS[event]):
            refuse(event)
    elif event == "open":
        path, mode_, flags = args
        if isinstance(path, int):
            return
        name = os.fsdecode(path)
        parts = os.path.realpath(name).split(os.sep)
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != OWN_PID:
            refuse("open " + name)         # another process's environ, memory, fds
        writing = (flags or 0) & WRITE_FLAGS or any(c in (mode_ or "") for c in "wax+")
        if writing and name not in (os.devnull, "/dev/stdout", "/dev/stderr") and not inside(name):
            refuse("open for writing " + name)
        if os.path.isdir(name) and not inside(name):  # a dir_fd outside would let relative
            refuse("open directory " + name)           # paths in os.open(dir_fd=) escape

sys.addaudithook(hook)
del hook
namespace = {"__name__": "__main__" if mode == "stdio" else "solution", "__builtins__": __builtins__}
exec(preamble, namespace)
if mode == "script":                           # LeetCode: the program, then the problem's tests
    source += "\n" + given
exec(compile(source, "solution.py", "exec"), namespace)
if mode == "call":
    sys.stdin = open(os.devnull)
    solution = namespace.get("Solution")
    if isinstance(solution, type) and hasattr(solution, fn_name):   # LeetCode style
        function = getattr(solution(), fn_name)
    else:
        function = namespace[fn_name]
    result = json.dumps(function(*json.loads(given)))  # a non-JSON result (any object) fails here
    os.write(result_fd, result.encode())
elif mode == "script":                         # reached only if every assert held; a program that
    os.write(result_fd, b"passed")             # exits early (sys.exit(0), os._exit(0)) fails
'''

# The child's whole environment: no inherited variables, so no inherited secrets.
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----- the jail: bubblewrap ---------------------------------------------------------------
# bwrap (https://github.com/containers/bubblewrap, Debian package `bubblewrap`) starts a
# command in new namespaces without a daemon or root. Ours:
#   --unshare-all      user, pid, network, ipc, uts and cgroup namespaces: no network at all
#                      (only a loopback of its own), and the program sees its own processes only;
#   a new root         an empty tmpfs holding read-only binds of /usr (+ the /bin, /lib ... links
#                      or directories) and of the Python installation, a fresh /proc and a
#                      minimal /dev, and the test's temporary directory, read-write; nothing
#                      else of the host (no home directory, no training data, no other test's
#                      directory), and after --remount-ro / nothing else writable;
#   --cap-drop ALL     no capabilities inside, even when we run as root;
#   --new-session      no access to a controlling terminal (TIOCSTI);
#   --die-with-parent  the jail is killed if the thread that started it dies;
#   --as-pid-1         the test program itself is the jail's pid 1. (bwrap's own pid-1 reaper
#                      would outlive bwrap by a moment at every exit and be left to the host's
#                      init as a zombie, and that init may be the trainer, in a container.)
#   --info-fd          bwrap reports the host pid of the jail's pid 1. Killing that process
#                      ends the whole pid namespace, including anything that left our process
#                      group with setsid(); bwrap, its parent, then reaps it and exits.
# It adds 4-7 ms to a test's ~50-60 ms (README, benchmarks/bench_verify.py). Where bwrap is missing or cannot
# create namespaces (no unprivileged user namespaces, a restrictive container seccomp filter)
# the probe below fails once, we log one warning per process, and tests run unjailed.

_BWRAP = shutil.which("bwrap")
_jail_lock = threading.Lock()
_jail_state: bool | None = None  # None: not probed yet in this process


def _jail_argv(workdir: str, info_fd: int | None = None) -> list[str]:
    """The bwrap command line (to be followed by the command) for a test in `workdir`."""
    argv = [_BWRAP, "--unshare-all", "--cap-drop", "ALL", "--new-session", "--die-with-parent",
            "--as-pid-1"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.abspath(sys.executable)),
              os.path.dirname(os.path.realpath(sys.executable))}
    bound: list[str] = []
    for path in ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", *sorted(python)]:
        if any(path == top or path.startswith(top + os.sep) for top in bound):
            continue
        if os.path.islink(path) and os.path.dirname(path) == "/":  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
            bound.append(path)
    return argv + ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",  # where shared libraries are
                   "--proc", "/proc", "--dev", "/dev", "--bind", workdir, workdir,
                   "--chdir", workdir, "--remount-ro", "/"]


def _jail_works() -> bool:
    """Can this process jail its tests? Probed once (a jailed `python -I` must start and
    print); on failure, one warning and the unjailed sandbox for the rest of the process."""
    global _jail_state
    with _jail_lock:
        if _jail_state is None:
            reason = "bubblewrap (bwrap) is not installed" if _BWRAP is None else _jail_probe_failure()
            _jail_state = reason is None
            if reason:
                logger.warning("verify: %s; code tests run without a jail, under resource limits "
                               "and an audit hook only (see README, 'The code sandbox')", reason)
    return _jail_state


def _jail_probe_failure() -> str | None:
    """None if a jailed Python runs, else why not."""
    workdir = tempfile.mkdtemp(prefix="prime_verify_")
    try:
        result = subprocess.run([*_jail_argv(workdir), sys.executable, "-I", "-c", "print('jailed')"],
                                capture_output=True, env=_CHILD_ENV, timeout=_WORKER_START_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap did not run ({error})"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result.returncode != 0 or result.stdout != b"jailed\n":
        message = result.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap is installed but cannot jail ({message[-1] if message else result.returncode})"
    return None


def _run_in_sandbox(source: str, mode: str, fn_name: str | None, stdin: bytes,
                    timeout: float, preamble: str = _PREAMBLE) -> tuple[str, bytes]:
    """Run one program on one input (mode "stdio", "call" or "script": see the prelude),
    after `preamble`. Returns (status, stdout) with status one of
    "ok" (exit code 0), "error" (non-zero exit, e.g. an exception), "refused" (the audit
    hook stopped it), "timeout", "output_limit". The jail (if any) and the process group
    are killed and the temporary directory removed before this returns, whatever happened."""
    workdir = tempfile.mkdtemp(prefix="prime_verify_")
    info_read = info_write = jail_pidfd = None
    try:
        with open(os.path.join(workdir, "solution.py"), "w") as f:
            f.write(source)
        with open(os.path.join(workdir, "stdin"), "wb") as f:
            f.write(stdin)
        env = dict(_CHILD_ENV, HOME=workdir, TMPDIR=workdir)
        limits = [str(math.ceil(timeout) + 1), str(_MEMORY_LIMIT), str(_FILE_SIZE_LIMIT),
                  str(_OPEN_FILES_LIMIT), str(_REFUSED)]
        command = [sys.executable, "-I", "-c", _PRELUDE, mode, fn_name or "", *limits, preamble]
        if _jail_works():
            info_read, info_write = os.pipe()
            command = _jail_argv(workdir, info_write) + command
        with open(os.path.join(workdir, "stdin"), "rb") as stdin_file:
            process = subprocess.Popen(
                command, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd=workdir, env=env, start_new_session=True, close_fds=True,
                pass_fds=() if info_write is None else (info_write,))
        deadline = time.monotonic() + timeout
        try:
            if info_read is not None:
                os.close(info_write)
                info_write = None
                jail_pidfd = _jail_pid1(info_read, deadline)
            status, output = _collect(process, deadline)
        finally:
            _kill_group(process, jail_pidfd)
        if status is None:
            status = {0: "ok", _REFUSED: "refused"}.get(process.returncode, "error")
        return status, output
    finally:
        for fd in (info_read, info_write):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _jail_pid1(info_read: int, deadline: float) -> int | None:
    """A pidfd for the jail's pid 1, from bwrap's --info-fd report ({"child-pid": N, ...},
    written and closed as soon as the namespaces exist); None if none came. The pidfd is
    opened at once, while that process is certainly alive, so it cannot name a reused pid."""
    report = b""
    poller = select.poll()
    poller.register(info_read, select.POLLIN)
    while (remaining := deadline - time.monotonic()) > 0 and poller.poll(remaining * 1000):
        chunk = os.read(info_read, 4096)
        if not chunk:
            break
        report += chunk
    try:
        return os.pidfd_open(json.loads(report)["child-pid"])
    except (ValueError, KeyError, TypeError, OSError):  # no report, or pid 1 already gone
        return None


def _collect(process: subprocess.Popen, deadline: float) -> tuple[str | None, bytes]:
    """Read stdout until EOF and wait for the exit, both before `deadline`. The child is
    left unreaped (os.waitid WNOWAIT) so that its process group id cannot be reused before
    _kill_group runs. Returns (None, output) on a normal exit, else a failure status."""
    fd = process.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", b"".join(chunks)
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > _OUTPUT_LIMIT:
            return "output_limit", b""
        chunks.append(chunk)
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:  # closed stdout but kept running
            return "timeout", b"".join(chunks)
        time.sleep(0.002)
    return None, b"".join(chunks)


def _kill_group(process: subprocess.Popen, jail_pidfd: int | None = None) -> None:
    """SIGKILL the jail's pid 1 (the kernel then kills every process in the jail) and let
    bwrap reap it and exit; SIGKILL the child's whole process group; reap the child."""
    if jail_pidfd is not None:
        try:
            signal.pidfd_send_signal(jail_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(jail_pidfd)
        deadline = time.monotonic() + 1.0  # bwrap exits within milliseconds of its child
        while (os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
               and time.monotonic() < deadline):
            time.sleep(0.002)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    process.stdout.close()


def _passes(source: str, judge: str, case, timeout: float) -> bool:
    mode, fn_name, stdin, expected = case
    status, output = _run_in_sandbox(source, mode, fn_name, stdin, timeout, _PREAMBLES[judge])
    if status != "ok":
        return False
    if mode == "script":
        return output == b"passed"
    text = output.decode("utf-8", errors="replace")
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
    passed, as [PR] gives stdin/stdout problems (README, differences from the official code)."""
    judge, cases = _parse_tests(tests)
    source = _program(program, judge)
    cases = cases[:MAX_SCORED_TESTS]
    return sum(_passes(source, judge, case, timeout) for case in cases) / len(cases)


def code_correct(program: str, tests, timeout: float = CODE_TIMEOUT) -> bool:
    """Does `program` pass every test (all of them, not only the first 10)? Stops at the
    first failure. Raises ValueError on malformed `tests`."""
    judge, cases = _parse_tests(tests)
    source = _program(program, judge)
    return all(_passes(source, judge, case, timeout) for case in cases)


def _program(response: str, judge: str) -> str:
    return extract_program(response) if judge == "apps" else _benchmark_program(response, judge)


# =========================================================================================
# Bulk: score_batch for training and evaluation.
# =========================================================================================

def default_workers() -> int:
    """How many samples one process scores at once: the node's CPUs shared among the
    processes torchrun started on it (LOCAL_WORLD_SIZE), at least 1. Each sample in flight
    keeps a CPU busy (a test program or a Math-Verify worker), and with 8 ranks each taking
    os.cpu_count() the node would be oversubscribed eightfold while other ranks still decode."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def score_batch(samples: list[dict], workers: int | None = None,
                math_timeout: float = MATH_TIMEOUT, code_timeout: float = CODE_TIMEOUT) -> list[float]:
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
    the batch. A malformed row (unknown ability, missing or bad fields, bad tests) scores 0
    and logs a warning naming its id: one bad row must not crash training. Unlike [PR]
    (which set every score to 0.5 when anything failed globally) nothing else is affected.
    """
    workers = workers or default_workers()

    def score(index: int, sample) -> float:
        row_id = sample.get("id", index) if isinstance(sample, dict) else index
        try:
            if not isinstance(sample, dict):
                raise TypeError(f"sample must be a dict, got {type(sample).__name__}")
            ability, response = sample.get("ability"), sample.get("response")
            ground_truth = sample.get("ground_truth")
            if ability == "math":
                return float(_math_correct(response, ground_truth, math_timeout))
            if ability == "code":
                return code_score(_require_text(response, "response"), ground_truth, code_timeout)
            raise ValueError(f"unknown ability {ability!r} (expected 'math' or 'code')")
        except Exception as error:  # never let one row take down a training step
            logger.warning("score_batch: row id=%r scored 0: %s: %s",
                           row_id, type(error).__name__, error)
            return 0.0

    with ThreadPoolExecutor(max_workers=workers) as executor:
        return list(executor.map(score, range(len(samples)), samples))
