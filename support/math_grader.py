"""support/math_grader.py: is a math answer right? The rules behind verify.math_correct.

A wrong verdict is a wrong training signal, so this grader is built to agree with careful human
grading (docs/results.md has its record against public graders' cases and the official grader):
find the final answer (the last \\boxed{}, with fallbacks for unboxed answers), normalise its
presentation, decide plain numbers exactly ourselves, and hand everything else (radicals, pi,
sets, intervals, matrices, equations) to Math-Verify, the field's LaTeX-to-sympy grader, in a
worker process that is killed when it runs too long.

"[PR]" below means the official PRIME code, as summarised in docs/notes.md §7.
"""
from __future__ import annotations

import logging
import re
from fractions import Fraction

from support import workers

logger = logging.getLogger(__name__)


# =========================================================================================
# Math, part 1: find the final answer in a response.
# =========================================================================================
# The prompt asks the model to put its final answer in \boxed{} (the math suffix of the
# official README and eval scripts, data.MATH_SUFFIX; docs/notes.md §6), so the last
# \boxed{...} is the answer. [PR] match_answer also looks after "answer:" / "the
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
# \boxed{n=2}", "x = \boxed{-2} or x = \boxed{5}" or "\[\boxed{x=1}\]\n\[\boxed{y=2}\]": spaces,
# commas, math delimiters, LaTeX spacing and line breaks, "and"/"or" (bare or in \text{}), and a
# variable's "x =".
_BOX_GAP = re.compile(r"(?:\s|[,;&$]|\\[,;:! ()\[\]]|\\q?quad|\\\\|\\text\{\s*(?:and|or|,)?\s*\}"
                      r"|\b(?:and|or)\b|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*")
_CONCLUSION = re.compile(r"^\W*(?:therefore|thus|hence|so|finally|in conclusion)\b", re.IGNORECASE)
_COPULA = re.compile(r"\s(?:is|are|equals|be)\s", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:\s*\\?%)?")
# Where a response that ran past its turn stops being the model's answer: the chat template's
# end of turn, or the start of a turn it made up (text decoded with its special tokens kept).
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|endoftext\|>|<\|im_start\|>(?:user|system)\b")


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
    and hand-written tests look like that; model responses never do). Only the text before an
    end of turn (or a user turn the model went on to write) is read.
    """
    response = _END_OF_TURN.split(response, maxsplit=1)[0]
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
# A number, a fraction or a power of ten followed by a unit in \text{...} (optionally
# squared/cubed): "5\text{ cm}^2", "72\text{ km/h}", "\frac{600}{7}\text{ km/h}",
# "4.5 \times 10^{33}\text{ ergs}".
_TRAILING_UNIT = re.compile(r"^(.*[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z ./]*\}(?:\^\{?\d\}?)?$")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}([, ]\d{3})+(\.\d+)?")
_ASSIGNMENT = re.compile(r"^\\?[a-zA-Z]+(?:_\{?\w+\}?)?\s*=\s*([^=]+)$")
_CHOICE = re.compile(r"^\(?([A-E])\)?(?:$|[\s.:])")
# A choice's label before its value, as AMC solutions write it: "\textbf{(C)}\ 142" -> "(C) 142".
_LABELLED_VALUE = re.compile(r"^\([A-E]\)\s*(.+)$")
# A number in scientific notation (after spaces are removed): "4.5e33" (written without spaces:
# "2e - 1" is 2e-1 with Euler's e), "3.89 \times 10^{-10}", "2\cdot10^5", "10^{-3}".
_E_NOTATION = re.compile(r"(\d+\.?\d*|\.\d+)[eE]([+-]?\d+)")
_TIMES_TEN = re.compile(r"(?:(\d+\.?\d*|\.\d+)\\(?:times|cdot))?10\^\{?([+-]?\d+)\}?")
_MAX_EXPONENT = 400  # 10^{9999999999} is left to Math-Verify's killable worker
_NUMBER_WORDS = {word: str(n) for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
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
    return _NUMBER_WORDS.get(s.casefold(), s), percent


def _as_number(s: str) -> tuple[Fraction, bool] | None:
    """A plain number (integer, decimal, a/b, \\frac{a}{b}, \\frac12, a mixed number
    2\\frac{1}{2} as MATH writes them, scientific notation as Minerva's answers and models
    write it) as an exact Fraction plus whether it was written as a decimal (scientific
    notation with a mantissa counts as one: a measured value); None for anything else."""
    spaced, s = " " in s, s.replace(" ", "")
    sign = -1 if s.startswith("-") else 1
    body = s.lstrip("+-") if s[:1] in "+-" and s[1:2] not in "+-" else s
    scientific = (None if spaced else _E_NOTATION.fullmatch(body)) or _TIMES_TEN.fullmatch(body)
    if scientific:
        mantissa, exponent = scientific.groups()
        if abs(int(exponent)) > _MAX_EXPONENT:
            return None
        return sign * Fraction(mantissa or 1) * Fraction(10) ** int(exponent), mantissa is not None
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
    as a decimal may they differ: by at most 1e-6 (six decimal places, as Math-Verify rounds
    floats) and by at most 5e-6 of the larger (six significant digits, so tiny numbers are
    not all equal: 0.0000009 != 0.0000002, 3.89e-10 != 3.88e-10). So 1/3 == 0.333333 but
    1/3 != 0.33, and 1/81 == 0.0123457."""
    (x, x_decimal), (y, y_decimal) = a, b
    if x == y:
        return True
    tolerance = min(Fraction(1, 10**6), Fraction(5, 10**6) * max(abs(x), abs(y)))
    return (x_decimal or y_decimal) and abs(x - y) <= tolerance


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
    # "(C) 142" against "142": the value after the label.
    if _LABELLED_VALUE.match(p) and not _LABELLED_VALUE.match(g):
        p = _LABELLED_VALUE.match(p).group(1)
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
    (_POOL, support/workers.py), so its own signal-based timeouts are switched off (they only
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


# ----- Math-Verify in worker processes with hard kills (support/workers.py) ------------------

MATH_TIMEOUT = 10.0  # seconds per symbolic comparison ([PR]: 1 s per sympy step, 300 s per sample)


def _symbolic_worker() -> None:
    """A worker's loop: a JSON [pred, gold] per request -> "1" or "0"."""
    def warm_up():
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notes
        import math_verify  # noqa: F401  (the slow import, done before saying "ready")
    workers.serve(lambda request: "1" if _symbolic_equal(*request) else "0", warm_up)


_POOL = workers.Pool(__name__, "_symbolic_worker", "Math-Verify")


def require_text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def gold_answer(ground_truth) -> str:
    """The reference answer: a dataset's answer string, or a solution with a \\boxed{}."""
    text = require_text(ground_truth, "ground_truth")
    if not text.strip():
        raise ValueError("ground_truth is missing (empty string)")
    boxed = _final_boxed(text)
    return boxed if boxed is not None else text.strip()


def answers_equal(pred: str, gold: str, timeout: float) -> bool:
    """Our exact rules, then the pattern rule below, then Math-Verify (NoVerdict when it gave
    none within `timeout` seconds)."""
    verdict = _quick_verdict(pred, gold)
    if verdict is not None:
        return verdict
    # A pattern such as "1, 3, 5, \ldots, 2n-1" or "1:2:3:\ldots" is compared term by term, an
    # "\ldots" only with an "\ldots" in the same place: Math-Verify reads such a list as something
    # else entirely (it credited "1, 3, 5, \ldots, 2n-1" for "1, 2, \ldots, n", and "1:4:9:\ldots"
    # for "1:2:3:\ldots").
    p, g = (_split_top_level(_normalize(x)[0]) for x in (pred, gold))
    if ELLIPSIS in p or ELLIPSIS in g:
        return len(p) == len(g) and all(
            a == b == ELLIPSIS or (ELLIPSIS not in (a, b) and answers_equal(a, b, timeout))
            for a, b in zip(p, g))
    return _POOL.ask([pred, gold], timeout) == "1"


def _split_top_level(s: str) -> list[str]:
    """`s` split at the commas and colons that are not inside (), [] or {}: "1, f(2, 3),
    \\ldots", "1:2:\\ldots"."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if c in ",:" and depth == 0:
            parts.append(s[start:i].strip())
            start = i + 1
    return [*parts, s[start:].strip()]
