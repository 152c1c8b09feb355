"""The official math graders of PRIME's Table 2, reimplemented: what the paper's numbers counted
as right for AIME 2024, AMC, MATH-500, Minerva Math and OlympiadBench.

verify.math_correct (our grader) and these differ in both directions (tests/test_eval.py holds
cases of each); `eval.py --protocol=paper` grades with these. It is a reimplementation written
from reading the official code, not a copy of it; every rule cites where it comes from. Pure
functions of strings, without time limits: support/paper_eval.py's grade_math runs them in a
worker process that it kills when the time limit has passed.

    paper_gold(benchmark, record)            -> the gold the official script used
    paper_extract(benchmark, response)       -> its extracted answer (str or None)
    paper_math_equal(benchmark, pred, gold)  -> its equivalence verdict
    paper_math_correct(benchmark, response, gold) -> extract + equal

"[PR]" is the official code, PRIME-RL/PRIME at commit 18ad596f08d4 (docs/notes.md §0);
paths are relative to that repository. Two graders were used:

  * AIME 2024, AMC, MATH-500 ("the PRIME grader"): each script's own `match_answer`
    ([PR] eval/Math/{aime,amc,math}/evaluate_*.py) and [PR] eval/utils/grader.py::math_equal
    (the ToRA / PRM800K grader: string match, numbers within a relative 1e-4 also against
    gold/100 and gold*100, then sympy).
  * Minerva Math, OlympiadBench ("the Qwen harness"): Qwen2.5-Math's evaluation code copied
    into [PR] eval/Math/Qwen25-Math/evaluation (parser.py::extract_answer, strip_string,
    grader.py::math_equal), run by its sh/eval.sh with prompt type "qwen25-math-cot".

Where this file cannot do what the official code did, it says so at the spot, and
docs/evaluation.md lists every such difference. The main ones:
  * sympy 1.14 and antlr4 4.13 here, sympy 1.12 and antlr4 4.11 there ([PR]
    eval/requirements_prime.txt, requirements_qwen_math.txt). sympy refuses its ANTLR LaTeX
    parser under antlr4 4.13; we run that same parser (sympy's own generated grammar and
    converter) by skipping the version gate (_sympy_parse_latex, which also takes the place
    of sympy's module-level parse_latex for the converter's own recursive calls). The
    grammar, generated parser and converter are unchanged between 1.12 and 1.14 apart from
    an added `strict` flag that defaults off.
  * The Qwen harness's third parser, its bundled latex2sympy2, is replaced by
    latex2sympy2_extended (Math-Verify's fork), which also reads intervals; it is reached only
    when sympy's LaTeX parser and parse_expr both fail on an answer.
  * Python `eval` on answers holding "\\pi" is replaced by an evaluator of number arithmetic
    only; sympy's parse_expr is refused strings containing "__" (sandbox escapes).
  * No time limits inside (see above). A step the official code cut off after 1 s (and then
    went on to the next rule) runs to completion here.
"""
from __future__ import annotations

import ast
import math
import operator
import re

from support import workers

PRIME_GRADER = ("aime", "amc", "math500")     # [PR] eval/utils/grader.py
QWEN_HARNESS = ("minerva", "olympiadbench")   # [PR] eval/Math/Qwen25-Math/evaluation
MATH_BENCHMARKS = PRIME_GRADER + QWEN_HARNESS


# =========================================================================================
# 1. Parsers shared by both graders: sympy's parse_expr and LaTeX parser, latex2sympy.
# =========================================================================================

def _parse_expr(text: str):
    """sympy.parsing.sympy_parser.parse_expr with its default transformations, as both
    graders call it: Python syntax, so "^" is XOR (parse_expr("2^3") is 1, not 8), "1,7" is the
    tuple (1, 7) and "{1,2}" a Python set. parse_expr evaluates the text as Python, so a
    model's answer could reach object internals through attribute chains; we refuse any text
    holding "__" (no mathematical answer does; the official code would have run it)."""
    if "__" in text:
        raise ValueError("refused: '__' in an answer parsed as Python")
    from sympy.parsing.sympy_parser import parse_expr
    return parse_expr(text)


_ANTLR_CLASSES = None


def _sympy_parse_latex(text: str, strict: bool = False):
    """sympy.parsing.latex.parse_latex (ANTLR backend, non-strict), run under antlr4 4.13.

    sympy refuses to run its parser unless antlr4-python3-runtime is 4.11 (an ImportError
    here); the grammar it generated with 4.11 loads in the 4.13 runtime (same ATN
    serialization), so we build the lexer and parser ourselves from sympy's own generated
    classes and converter, with its error listener, skipping only that gate and the runtime's
    version warning. Like sympy's (and unlike strict=True), it reads the longest valid prefix
    and ignores the rest: "1,7" parses as 1, "(3,4]" raises. Raises on invalid LaTeX.

    sympy's converter calls its module's parse_latex again for a differential fraction
    ("\\frac{dx}{dt}"), which would hit the gate; so on first use this function takes that
    name's place in sympy.parsing.latex._parse_latex_antlr (a process-wide change that only
    matters where sympy would otherwise raise ImportError)."""
    global _ANTLR_CLASSES
    if _ANTLR_CLASSES is None:
        from sympy.parsing.latex import _parse_latex_antlr as backend

        class Lexer(backend.LaTeXLexer):
            def checkVersion(self, toolVersion):  # noqa: N803 (antlr's name)
                pass

        class Parser(backend.LaTeXParser):
            def checkVersion(self, toolVersion):  # noqa: N803
                pass

        backend.parse_latex = _sympy_parse_latex
        _ANTLR_CLASSES = backend, Lexer, Parser
    backend, lexer_class, parser_class = _ANTLR_CLASSES
    import antlr4
    errors = backend.MathErrorListener(text)
    lexer = lexer_class(antlr4.InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(errors)
    parser = parser_class(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(errors)
    relation = parser.math().relation()
    if strict and (relation.start.start != 0 or relation.stop.stop != len(text) - 1):
        raise backend.LaTeXParsingError("Invalid LaTeX")
    return backend.convert_relation(relation)


def _latex2sympy(text: str):
    """Stand-in for the Qwen harness's bundled latex2sympy2 (an OrangeX4 latex2sympy2 fork,
    [PR] eval/Math/Qwen25-Math/evaluation/latex2sympy): latex2sympy2_extended, Math-Verify's
    fork of the same code. Known differences: it reads intervals ("(3,4]"), which the bundled
    one rejects; "a=b" is Eq(a, b) here and b there."""
    from latex2sympy2_extended import latex2sympy
    return latex2sympy(text)


# =========================================================================================
# 2. AIME 2024, AMC, MATH-500: the PRIME grader.
# =========================================================================================

def _prime_last_boxed(text: str) -> str | None:
    """[PR] evaluate_*.py::_last_boxed_only_string: the content of the last \\boxed (else the
    last \\fbox), from the first "{" after it to the brace that closes it, stripped; None when
    there is no \\boxed/\\fbox or the braces never close. Whatever follows "\\boxed" counts up
    to that first "{" ("\\boxed 5 ... {x}" gives "x")."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth, opened = 0, None
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
            if opened is None:
                opened = i
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[opened + 1:i].strip()
    return None


def _prime_match_answer(response: str, first_marker: str) -> str:
    """[PR] evaluate_*.py::match_answer. Cut after the last of each marker in turn (found in
    the lowercased response, sliced from the original), then take the last box in what is
    left if it is non-empty. With no marker and no box the whole response is the answer (its
    is_matched flag is ignored by the scripts). AIME's and AMC's first marker is
    "The answer is: " with a capital T, searched in lowercased text: it never matches; MATH's
    is "the answer is: ". (The scripts' `if response.endswith("\\n"): response[:-2]` follows
    a strip() and never fires.)"""
    for marker in (first_marker, "answer:\n", "answer: "):
        at = response.lower().rfind(marker)
        if at != -1:
            response = response[at + len(marker):].strip()
    boxed = _prime_last_boxed(response)
    return boxed if boxed else response


def _prime_extract(benchmark: str, response: str) -> str:
    if benchmark == "math500":
        return _prime_match_answer(response, "the answer is: ")
    answer = _prime_match_answer(response, "The answer is: ")
    # [PR] evaluate_aime.py / evaluate_amc.py::run: .strip("The final answer is ").strip(". I
    # hope it is correct."). str.strip takes a set of characters, not a phrase: every leading
    # and trailing T h e f i n a l s w r and space goes, then . I h o p e i t s c r n and
    # space. Numbers survive; "\\pi" becomes "\\" and "\\sin x" loses nothing but "e", "n"...
    return answer.strip("The final answer is ").strip(". I hope it is correct.")


# ----- [PR] eval/utils/grader.py::math_equal ---------------------------------------------

def _prime_normalize(answer, pi: float):
    """grader.py::normalize: "$5..." loses its first character; "25%" / "25\\%" lose the
    percent sign; then handle_base and handle_pi."""
    if isinstance(answer, str) and re.match(r"\$\d+(\.\d+)?", answer):
        return answer[1:]
    if isinstance(answer, str) and (re.match(r"^\d+(\.\d+)?%$", answer)
                                    or re.match(r"^\d+(\.\d+)?\\%$", answer)):
        return answer.replace("\\%", "").replace("%", "")
    answer = _prime_handle_base(answer)
    return _prime_handle_pi(answer, pi)


def _prime_handle_base(answer):
    """grader.py::handle_base: any "_" in a string answer means "a number in some base":
    the text before the first "_" is read with float() and returned as an int ("1010_2" ->
    1010). Anything else before the "_" ("x_1", "\\frac{1}{2}_3") raises ValueError, which the
    scripts' try/except turns into "wrong": so does any gold with an underscore."""
    if isinstance(answer, str) and "_" in answer:
        return int(float(answer.split("_")[0]))
    return answer


def _prime_handle_pi(answer, pi: float):
    """grader.py::handle_pi: each "\\pi" becomes "*<pi>" after a digit and "1*<pi>"
    otherwise (pi as repr'd by an f-string: 3.141592653589793 or 3.14), then the whole text
    is evaluated as Python, keeping the (rewritten) text when that fails. The official code
    calls eval() on the model's text; we evaluate number arithmetic only (_python_arithmetic)."""
    if not (isinstance(answer, str) and "\\pi" in answer):
        return answer
    at = answer.find("\\pi")
    while at != -1:
        glue = "*" if at > 0 and answer[at - 1].isdigit() else "1*"
        answer = answer[:at] + f"{glue}{pi}" + answer[at + 3:]
        at = answer.find("\\pi", at + 1)
    try:
        return _python_arithmetic(answer)
    except Exception:
        return answer


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow, ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
           ast.BitOr: operator.or_, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
           ast.MatMult: operator.matmul}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Invert: operator.invert,
          ast.Not: operator.not_}
_HUGE = 10_000  # an int exponent or shift above this is refused (eval would compute it, or hang)


def _python_arithmetic(text: str):
    """What Python's eval() gives for `text` when it is number arithmetic: int/float/complex
    literals, + - * / // % ** ^ & | << >> @, unary + - ~ not, and tuples/lists/sets of those,
    with Python's own semantics (2^3 is 1, 3.14^2 a TypeError). Raises for anything else
    (names, calls, attributes, comparisons...), where the official eval() would have looked
    names up in grader.py's module (abs(...), N(...) and so on): there the text is kept as it
    is, here too. eval() drops leading spaces and tabs; so do we."""
    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, complex):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if (isinstance(node.op, (ast.Pow, ast.LShift)) and isinstance(left, int) and abs(left) > 1
                    and isinstance(right, int) and right > _HUGE):
                raise ValueError("integer too large to build")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Set):
            return {value(e) for e in node.elts}
        raise ValueError(f"not number arithmetic: {type(node).__name__}")

    return value(ast.parse(text.lstrip(" \t"), mode="eval"))


def _prime_is_digit(answer) -> tuple[bool, float | None]:
    """grader.py::is_digit: float() of the text without thousands commas ("{,}" in LaTeX,
    else ","): "1,000" is 1000.0, and so is "1,0,0,0". Also "1e3", "inf", "nan"."""
    text = str(answer)
    try:
        if "{,}" in text:
            return True, float(text.replace("{,}", ""))
        return True, float(text.replace(",", ""))
    except ValueError:
        return False, None


_INTERVAL_FORMS = ((r"^Interval\((.*)\)$", "[{}]"), (r"^Interval\.Ropen\((.*)\)$", "[{})"),
                   (r"^Interval\.Lopen\((.*)\)$", "({}]"), (r"^Interval\.open\((.*)\)$", "({})"))


def _prime_format_intervals(prediction: str) -> str:
    """grader.py::format_intervals: sympy's printed intervals back to bracket notation."""
    for pattern, form in _INTERVAL_FORMS:
        found = re.match(pattern, prediction)
        if found:
            return form.format(found.group(1))
    return prediction


def _number_matches(p, r, include_percentage, equal) -> bool:
    """Both graders' number rule: the prediction `p` against the gold `r` or, a percentage written
    either way, r / 100 or r * 100, each compared by `equal`; a comparison that raises is no match."""
    for candidate in ([r / 100, r, r * 100] if include_percentage else [r]):
        try:
            if equal(candidate, p):
                return True
        except Exception:
            continue
    return False


def _prime_math_equal(prediction, reference, include_percentage: bool = True,
                      tolerance: float = 1e-4, pi: float = math.pi) -> bool:
    """grader.py::math_equal, rule by rule. May raise (handle_base's float(), an index into an
    empty reference): the caller's try/except makes that "wrong", as the scripts' did.
    Nested calls (tuple and list elements) take the defaults, math.pi included, as there."""
    prediction = _prime_normalize(prediction, pi)
    reference = _prime_normalize(reference, pi)
    if isinstance(prediction, str) and len(prediction) > 1000:
        prediction = prediction[:1000]

    # 0. The same text, ignoring case and surrounding space, or all spaces.
    if isinstance(prediction, str) and isinstance(reference, str):
        if prediction.strip().lower() == reference.strip().lower():
            return True
        if prediction.replace(" ", "") == reference.replace(" ", ""):
            return True

    # 1. Two numbers: equal within a relative 1e-4 to the gold, the gold / 100 or the gold * 100
    #    (a percentage written either way): 25 is right for 0.25, and 1000100 for 1000000.
    try:
        if _prime_is_digit(prediction)[0] and _prime_is_digit(reference)[0]:
            p, r = _prime_is_digit(prediction)[1], _prime_is_digit(reference)[1]
            return _number_matches(p, r, include_percentage, lambda x, y: math.isclose(x, y, rel_tol=tolerance))
    except Exception:
        pass

    if not prediction and prediction not in [0, False]:
        return False

    # 2. Brackets: unless the two open differently ("[" against "(", or "(" against "["), the
    #    outer brackets are dropped, and every (){} is removed from both: "(3,4)" is right for
    #    "(3,4]" and for "3,4", "[3,4]" for "3,4]". Interval types are not compared.
    reference, prediction = str(reference).strip(), str(prediction).strip()
    prediction = _prime_format_intervals(prediction)
    pred_text, ref_text = prediction, reference
    if ((prediction.startswith("[") and prediction.endswith("]") and not reference.startswith("("))
            or (prediction.startswith("(") and prediction.endswith(")") and not reference.startswith("["))):
        pred_text, ref_text = pred_text.strip("[]()"), ref_text.strip("[]()")
    for bracket in "{}()":
        ref_text, pred_text = ref_text.replace(bracket, ""), pred_text.replace(bracket, "")
    if pred_text == ref_text:
        return True

    # 3. Same brackets on both: element by element (all elements compared, as the list
    #    comprehension inside all() did; an element's exception propagates).
    if (prediction and reference and prediction[0] in "([" and prediction[-1] in ")]"
            and prediction[0] == reference[0] and prediction[-1] == reference[-1]):
        pred_parts, ref_parts = prediction[1:-1].split(","), reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts):
            if all([_prime_math_equal(p, r, include_percentage, tolerance)
                    for p, r in zip(pred_parts, ref_parts)]):
                return True

    # 4. Comma lists of the same length: element by element, and that is the verdict. Lists of
    #    different lengths fall through to sympy (see 6).
    if "," in prediction and "," in reference:
        pred_parts = [part.strip() for part in prediction.split(",")]
        ref_parts = [part.strip() for part in reference.split(",")]
        if len(pred_parts) == len(ref_parts):
            return all([_prime_math_equal(p, r, include_percentage, tolerance)
                        for p, r in zip(pred_parts, ref_parts)])

    # 5. sympy's "Point(a, b)" against "(a, b)".
    if prediction.startswith("Point") and reference[0] == "(" and reference[-1] == ")":
        pred_parts = prediction[prediction.find("(") + 1:-1].split(",")
        ref_parts = reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts):
            if all([_prime_math_equal(p, r, include_percentage, tolerance)
                    for p, r in zip(pred_parts, ref_parts)]):
                return True

    # (grader.py's two matrix rules test `"\begin{pmatrix}" in reference` in a plain string,
    # where "\b" is a backspace character: no real gold contains it, so they never run and are
    # not reproduced.)

    # 6. sympy.
    return _prime_symbolic_equal(prediction, reference, tolerance)


def _prime_symbolic_equal(a: str, b: str, tolerance: float) -> bool:
    """grader.py::symbolic_equal: parse each side with parse_expr, else sympy's parse_latex,
    else keep the text; equal when simplify(a - b) == 0, else when N(a) and N(b) are within
    the relative tolerance. parse_expr comes first: "2^{10}" is not Python and goes to
    parse_latex (1024), but "2^10" is Python's XOR, 8. parse_latex reads a prefix, so for two
    LaTeX lists that parse_expr rejects only the first elements are compared:
    "\\frac{1}{2},3" is right for "\\frac{1}{2},-3,5" (comma lists of equal length never get
    here, rule 4). Each step ran under a 1 s alarm there; not here."""
    from sympy import N, simplify

    def parse(text):
        for parser in (_parse_expr, _sympy_parse_latex):
            try:
                return parser(text)
            except Exception:
                pass
        return text

    a, b = parse(a), parse(b)
    try:
        if simplify(a - b) == 0:
            return True
    except Exception:
        pass
    try:
        if math.isclose(N(a), N(b), rel_tol=tolerance):
            return True
    except Exception:
        pass
    return False


def _prime_grade(prediction: str, gold: str) -> bool:
    """[PR] evaluate_*.py::run's verdict: math_equal(pred, gold, timeout=True), once with
    math.pi and once with 3.14 when either side holds "\\pi" (right if either is); any
    exception is "wrong", including one on the first try."""
    try:
        if "\\pi" in prediction or "\\pi" in gold:
            return any([_prime_math_equal(prediction, gold, pi=value) for value in (math.pi, 3.14)])
        return _prime_math_equal(prediction, gold)
    except Exception:
        return False


# =========================================================================================
# 3. Minerva Math, OlympiadBench: the Qwen2.5-Math harness.
# =========================================================================================
# Flow ([PR] eval/Math/Qwen25-Math/evaluation): math_eval.py::main strips the response and
# cuts it at its stop words; parser.py::run_execute -> extract_answer (its own strip_string
# at the end) -> strip_string again; the gold from parser.py::parse_ground_truth, which
# evaluate.py::evaluate calls a second time on the saved sample; then grader.py::math_equal
# (via math_equal_process, so timeout=False: no inner limit) in a one-worker pebble pool
# that gives each comparison 3 s.

_QWEN_DATA_NAME = {"minerva": "minerva_math", "olympiadbench": "olympiadbench"}
_QWEN_STOP_WORDS = ("</s>", "<|im_end|>", "<|endoftext|>")
# Data names whose answers keep their unit words (parser.py::STRIP_EXCEPTIONS).
_QWEN_STRIP_EXCEPTIONS = ("carp_en", "minerva_math")

# parser.py::unit_texts, in order (order matters: each is removed in turn), then each with an
# "s" appended. They are used as regular expressions, so "a ." is "a", a space and any character.
_QWEN_UNITS_BASE = (
    "east|degree|mph|kmph|ft|m sqaure| m east|sq m|deg|mile|q .|monkey|prime|ratio|profit of rs|"
    "rd|o|gm|p . m|lb|tile|per|dm|lt|gain|ab|way|west|a .|b .|c .|d .|e .|f .|g .|h .|t|a|h|"
    "no change|men|soldier|pie|bc|excess|st|inches|noon|percent|by|gal|kmh|c|acre|rise|a . m|th|"
    "π r 2|sq|mark|l|toy|coin|sq . m|gallon|° f|profit|minw|yr|women|feet|am|pm|hr|cu cm|square|"
    "v â € ™|are|rupee|rounds|cubic|cc|mtr|s|ohm|number|kmph|day|hour|minute|min|second|man|woman|"
    "sec|cube|mt|sq inch|mp|∏ cm ³|hectare|more|sec|unit|cu . m|cm 2|rs .|rs|kg|g|month|km|m|cm|"
    "mm|apple|liter|loss|yard|pure|year|increase|decrease|d|less|Surface|litre|pi sq m|s .|metre|"
    "meter|inch").split("|")
_QWEN_UNITS = tuple(_QWEN_UNITS_BASE) + tuple(unit + "s" for unit in _QWEN_UNITS_BASE)
_QWEN_UNIT_PATTERNS = tuple(re.compile(r"(^|\W)" + unit + r"($|\W)") for unit in _QWEN_UNITS)

# word2number's w2n.word_to_num, which strip_string calls on every answer (parser.py::
# convert_word_number): "five" -> "5", "two hundred" -> "200". Reimplemented (the package is not
# a dependency here) with its quirks: digits-only text goes through int() ("012" -> 12), other
# words are ignored ("one apple" -> 1), "point" starts decimals, a lone "point" is 0.
_W2N_VALUES = {**{w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())},
    **{w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())},
    "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000}
_W2N_DIGITS = "zero one two three four five six seven eight nine".split()


def _w2n_group(words: list[str]) -> int:
    """w2n.number_formation: up to four words read as a*b+c+d, a*b+c, a*b (with a hundred)
    or a+b; a longer group counts its first word only; an empty one raises IndexError."""
    n = [_W2N_VALUES[w] for w in words]
    if len(n) == 4:
        return n[0] * n[1] + n[2] + n[3]
    if len(n) == 3:
        return n[0] * n[1] + n[2]
    if len(n) == 2:
        return n[0] * n[1] if 100 in n else n[0] + n[1]
    return n[0]


def _word_to_num(text: str):
    """w2n.word_to_num (word2number 1.1); raises ValueError/IndexError where it raises."""
    text = text.replace("-", " ").lower()
    if text.isdigit():
        return int(text)
    words = [w for w in text.strip().split() if w in _W2N_VALUES or w == "point"]
    if not words:
        raise ValueError("no number words")
    if any(words.count(w) > 1 for w in ("thousand", "million", "billion", "point")):
        raise ValueError("redundant number word")
    decimals = []
    if "point" in words:
        at = words.index("point")
        words, decimals = words[:at], words[at + 1:]
    billion, million, thousand = (words.index(w) if w in words else -1
                                  for w in ("billion", "million", "thousand"))
    if (thousand > -1 and (thousand < million or thousand < billion)) or (-1 < million < billion):
        raise ValueError("malformed number")
    total = 0
    if len(words) == 1:
        total += _W2N_VALUES[words[0]]
    elif words:
        if billion > -1:
            total += _w2n_group(words[:billion]) * 1000000000
        if million > -1:
            total += _w2n_group(words[billion + 1:million] if billion > -1 else words[:million]) * 1000000
        if thousand > -1:
            if million > -1:
                multiplier = _w2n_group(words[million + 1:thousand])
            elif billion > -1:
                multiplier = _w2n_group(words[billion + 1:thousand])
            else:
                multiplier = _w2n_group(words[:thousand])
            total += multiplier * 1000
        if thousand > -1 and thousand != len(words) - 1:
            total += _w2n_group(words[thousand + 1:])
        elif million > -1 and million != len(words) - 1:
            total += _w2n_group(words[million + 1:])
        elif billion > -1 and billion != len(words) - 1:
            total += _w2n_group(words[billion + 1:])
        elif thousand == million == billion == -1:
            total += _w2n_group(words)
    if decimals:
        if all(w in _W2N_DIGITS for w in decimals):
            total += float("0." + "".join(str(_W2N_VALUES[w]) for w in decimals))
    return total


def _qwen_fix_fracs(text: str) -> str:
    """parser.py::_fix_fracs: "\\frac12" -> "\\frac{1}{2}", "\\frac1{72}" -> "\\frac{1}{72}";
    a "\\frac" followed by fewer than two characters leaves the whole text unchanged."""
    pieces = text.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if piece[:1] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return text
        a, b = piece[0], piece[1]
        out += ("{" + a + "}{" + b + "}" if b != "{" else "{" + a + "}" + b) + piece[2:]
    return out


def _qwen_fix_a_slash_b(text: str) -> str:
    """parser.py::_fix_a_slash_b: "3/4" -> "\\frac{3}{4}" when both sides are integers
    written plainly (int() round-trips) or hold "sqrt"."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    a, b = parts
    try:
        if "sqrt" not in a:
            a = int(a)
        if "sqrt" not in b:
            b = int(b)
    except ValueError:
        return text
    if text != f"{a}/{b}":
        return text
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _strip_string(text, skip_unit: bool = False) -> str:
    """parser.py::strip_string, step by step (the order matters)."""
    s = str(text).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    # A trailing unit in \text{...}: from the first "\text{" to the end, when the text ends in
    # "}" and something is left ("5\text{ cm}" -> "5"; "\text{(A)}" stays).
    cut = re.sub(r"\\text{.*?}$", "", s).strip()
    if cut != "" and cut != s:
        s = cut
    if not skip_unit:
        # Unit words standing alone, twice over the list; a removal that would leave nothing
        # is skipped. Single letters are on the list ("a", "s", "m", ...): "a+b" -> "+b".
        for _ in range(2):
            for pattern in _QWEN_UNIT_PATTERNS:
                cut = pattern.sub(r"\1\2", s)
                if cut != "":
                    s = cut
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    try:
        s = str(_word_to_num(s))
    except Exception:
        pass
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for prefix in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(prefix, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    # (strip_string's "drop the brackets of {abc}" test asks isalnum() of text that starts
    # with a bracket, which is never true; its quote removal discards its result. Neither
    # changes anything, so neither is here.)
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")   # "and" inside words too: "band" -> "b"
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)          # "2.0x" -> "2x", "3.00" -> "3"
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:        # "k=5" -> "5"
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)         # parser.py::_fix_sqrt
    s = s.replace(" ", "")
    return _qwen_fix_a_slash_b(_qwen_fix_fracs(s))


def _qwen_extract_answer(text: str, data_name: str) -> str:
    """parser.py::extract_answer for Minerva/OlympiadBench (use_last_number=True): Minerva's
    "final answer is $...$. I hope", else the text after the last "boxed" (brace-matched to
    its close or to the end; without a brace, up to the next "$"), else after the last "he
    answer is" / "final answer is" / first "答案是", else the last number. Then newlines and
    the spaces after them go, a leading ":" and a trailing "." and "/" go, and strip_string
    (keeping unit words for Minerva)."""
    text = text.replace("\u043a\u0438", "")
    if "final answer is $" in text and "$. I hope" in text:
        answer = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        rest = text.split("boxed")[-1]
        if not rest:
            return ""
        if rest[0] == "{":
            depth, chars = 1, []
            for ch in rest[1:]:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        break
                chars.append(ch)
            answer = "".join(chars)
        else:
            answer = rest.split("$")[0].strip()
    elif "he answer is" in text:
        answer = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        answer = text.split("final answer is")[-1].strip()
    elif "答案是" in text:
        answer = text.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:
        numbers = re.findall(r"-?\d*\.?\d+", text.replace(",", ""))
        answer = numbers[-1] if numbers else ""
    answer = re.sub(r"\n\s*", "", answer)
    if answer[:1] == ":":
        answer = answer[1:]
    if answer[-1:] == ".":
        answer = answer[:-1]
    if answer[-1:] == "/":
        answer = answer[:-1]
    return _strip_string(answer, skip_unit=data_name in _QWEN_STRIP_EXCEPTIONS)


def _qwen_extract(benchmark: str, response: str) -> str | None:
    """math_eval.py::main and parser.py::run_execute: the response stripped and cut at its
    stop words (vLLM's text never holds the special ones; "</s>" could be literal), None when
    nothing is left or it is "error", else extract_answer and strip_string once more."""
    data_name = _QWEN_DATA_NAME[benchmark]
    text = response.rstrip().strip()
    for stop in _QWEN_STOP_WORDS:
        if stop in text:
            text = text.split(stop)[0].strip()
    if not text or text == "error":
        return None
    answer = _qwen_extract_answer(text, data_name)
    return _strip_string(answer, skip_unit=data_name in _QWEN_STRIP_EXCEPTIONS)


def qwen_first_gold(benchmark: str, record: dict) -> str:
    """parser.py::parse_ground_truth on a released row: Minerva: extract_answer of the
    solution (its last "boxed", strip_string without unit removal), then \\neq/\\leq/\\geq ->
    \\ne/\\le/\\ge; OlympiadBench: final_answer[0] with "$" stripped from its ends, then
    strip_string with unit removal."""
    if benchmark == "minerva":
        gold = _qwen_extract_answer(record["solution"], "minerva_math")
        return gold.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    return _strip_string(record["final_answer"][0].strip("$"))


def _choice_answer_clean(text: str) -> str:
    """grader.py::choice_answer_clean: the last standalone capital A-E (of the uppercased text),
    else the text itself, without trailing "." and "/"."""
    text = text.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", text.upper())
    answer = letters[-1] if letters else text.strip().strip(".")
    return answer.rstrip(".").rstrip("/")


def _choice_answer_clean_parser(text: str) -> str:
    """parser.py::choice_answer_clean (math_eval.py applies it to the whole response when the
    gold is one letter A-E and the prediction is not): after the last "choice is"/"answer is"
    (only the first paragraph when one occurs twice), the first standalone A-E if there was a
    trigger, else the last."""
    text = text.strip("\n")
    if any(text.count(trigger) > 1 for trigger in ("choice is", "answer is")):
        text = text.split("\n\n")[0]
    pieces = re.split("choice is|answer is", text)
    triggered = len(pieces) > 1
    if triggered:
        text = pieces[-1]
    text = text.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", text.upper()) or [text.strip().strip(".")]
    answer = letters[0] if triggered else letters[-1]
    return answer.rstrip(".").rstrip("/")


def _qwen_parse_digits(text):
    """grader.py::parse_digits: float() without commas; "12%" / "12\\%" as 0.12; else None."""
    text = re.sub(",", "", str(text))
    try:
        return float(text)
    except ValueError:
        if text.endswith("%"):
            text = text[:-1]
            if text.endswith("\\"):
                text = text[:-1]
            try:
                return float(text) / 100
            except ValueError:
                pass
    return None


def _qwen_str_to_pmatrix(text: str) -> str:
    """grader.py::str_to_pmatrix: each "{..,..}" of the gold as a pmatrix (commas -> "\\")."""
    found = re.findall(r"\{.*,.*\}", text.strip())
    return ", ".join(r"\begin{pmatrix}" + m.strip("{}").replace(",", "\\") + r"\end{pmatrix}"
                     for m in found)


_PMATRIX = ("\\begin{pmatrix}", "\\begin{bmatrix}")
_PMATRIX_END = ("\\end{pmatrix}", "\\end{bmatrix}")


def _qwen_math_equal(prediction, reference, include_percentage: bool = True,
                     is_close: bool = True) -> bool:
    """grader.py::math_equal with timeout=False (as math_equal_process calls it)."""
    if prediction is None or reference is None:
        return False
    if prediction.strip().lower() == reference.strip().lower():
        return True
    if reference in ("A", "B", "C", "D", "E") and _choice_answer_clean(prediction) == reference:
        return True

    # Numbers: as the PRIME grader (relative 1e-4; gold, gold/100, gold*100), with "12%" read
    # as 0.12 on either side.
    try:
        p, r = _qwen_parse_digits(prediction), _qwen_parse_digits(reference)
        if p is not None and r is not None:
            return _number_matches(p, r, include_percentage,
                                   (lambda x, y: math.isclose(x, y, rel_tol=1e-4)) if is_close else operator.eq)
    except Exception:
        pass

    if not prediction and prediction not in [0, False]:
        return False

    reference, prediction = str(reference).strip(), str(prediction).strip()
    if "pmatrix" in prediction and "pmatrix" not in reference:
        reference = _qwen_str_to_pmatrix(reference)

    # Brackets as in the PRIME grader's rule 2, compared case-insensitively.
    pred_text, ref_text = prediction, reference
    if ((prediction.startswith("[") and prediction.endswith("]") and not reference.startswith("("))
            or (prediction.startswith("(") and prediction.endswith(")") and not reference.startswith("["))):
        pred_text, ref_text = pred_text.strip("[]()"), ref_text.strip("[]()")
    for bracket in "{}()":
        ref_text, pred_text = ref_text.replace(bracket, ""), pred_text.replace(bracket, "")
    if pred_text.lower() == ref_text.lower():
        return True

    # Both open with ( or [ and close with ) or ] somewhere later (any mix): element by element.
    bracketed = r"(\(|\[).+(\)|\])"
    if re.match(bracketed, prediction) is not None and re.match(bracketed, reference) is not None:
        pred_parts, ref_parts = prediction[1:-1].split(","), reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts):
            if all([_qwen_math_equal(p, r, include_percentage, is_close)
                    for p, r in zip(pred_parts, ref_parts)]):
                return True

    # Two matrices: row by row ("\\\\"), cell by cell ("&").
    if (prediction.startswith(_PMATRIX) and prediction.endswith(_PMATRIX_END)
            and reference.startswith(_PMATRIX) and reference.endswith(_PMATRIX_END)):
        def rows(matrix):
            body = matrix[len("\\begin{pmatrix}"):-len("\\end{pmatrix}")]
            return [row.strip() for row in body.split("\\\\") if row.strip()]
        pred_rows, ref_rows = rows(prediction), rows(reference)
        matched = len(pred_rows) == len(ref_rows)
        if matched:
            for pred_row, ref_row in zip(pred_rows, ref_rows):
                pred_cells, ref_cells = pred_row.split("&"), ref_row.split("&")
                if len(pred_cells) != len(ref_cells) or not all(
                        [_qwen_math_equal(p, r, include_percentage, is_close)
                         for p, r in zip(pred_cells, ref_cells)]):
                    matched = False
                    break
        if matched:
            return True

    # Equations: "a = b" against "c = d" as a - (b) against c - (d) or its negation; a short
    # left side ("x", "k_1"...) against a bare value compares the right side.
    if prediction.count("=") == 1 and reference.count("=") == 1:
        left, right = prediction.split("=")
        pred_zero = f"{left.strip()} - ({right.strip()})"
        left, right = reference.split("=")
        ref_zero = f"{left.strip()} - ({right.strip()})"
        if _qwen_symbolic_equal(pred_zero, ref_zero) or _qwen_symbolic_equal(f"-({pred_zero})", ref_zero):
            return True
    elif (prediction.count("=") == 1 and len(prediction.split("=")[0].strip()) <= 2
          and "=" not in reference):
        if _qwen_math_equal(prediction.split("=")[1], reference, include_percentage, is_close):
            return True
    elif (reference.count("=") == 1 and len(reference.split("=")[0].strip()) <= 2
          and "=" not in prediction):
        if _qwen_math_equal(prediction, reference.split("=")[1], include_percentage, is_close):
            return True

    return _qwen_symbolic_equal(prediction, reference)


def _qwen_symbolic_equal(a: str, b: str) -> bool:
    """grader.py::symbolic_equal: parse with sympy's parse_latex, else parse_expr, else
    latex2sympy, each tried on the text with "\\\\" read as "\\" and then as it is; keep the
    text when all fail. Equal when the printed forms or the objects are equal, when
    a.equals(b) or simplify(a - b) == 0, when two equations' |lhs - rhs| agree, when their
    numeric values are within a relative 1e-4, or two matrices agree to 3 decimals.
    parse_latex comes first and reads a prefix: "1,7" and "1,-1,7,-7" both parse as 1, so they
    are equal."""
    from sympy import N, simplify

    def parse(text):
        for parser in (_sympy_parse_latex, _parse_expr, _latex2sympy):
            for attempt in (text.replace("\\\\", "\\"), text):
                try:
                    return parser(attempt)
                except Exception:
                    pass
        return text

    a, b = parse(a), parse(b)
    try:
        if str(a) == str(b) or a == b:
            return True
    except Exception:
        pass
    try:
        if a.equals(b) or simplify(a - b) == 0:
            return True
    except Exception:
        pass
    try:
        if abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)):
            return True
    except Exception:
        pass
    try:
        if math.isclose(float(N(b)), float(N(a)), rel_tol=1e-4):
            return True
    except Exception:
        pass
    try:
        if a.shape == b.shape:
            if a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))):
                return True
    except Exception:
        pass
    return False


def _qwen_grade(prediction: str | None, gold: str, response: str) -> bool:
    """math_eval.py::main's multiple-choice fix-up, then math_equal_process. A gold that is
    one letter A-E makes a non-letter prediction the letter found in the whole response; a
    gold made only of letters A-E (also the empty gold) keeps only those letters of it."""
    if prediction is None:
        return False
    if gold in ("A", "B", "C", "D", "E") and prediction not in ("A", "B", "C", "D", "E"):
        text = response.rstrip().strip()
        for stop in _QWEN_STOP_WORDS:
            if stop in text:
                text = text.split(stop)[0].strip()
        prediction = _choice_answer_clean_parser(text)
    elif all(c in "ABCDE" for c in gold) and not all(c in "ABCDE" for c in prediction):
        prediction = "".join(c for c in prediction if c in "ABCDE")
    return _qwen_math_equal(prediction, gold)


# =========================================================================================
# 4. The public functions.
# =========================================================================================

def _check_math(benchmark: str) -> None:
    if benchmark not in MATH_BENCHMARKS:
        raise ValueError(f"{benchmark!r} is not one of the math benchmarks {MATH_BENCHMARKS}")


def paper_gold(benchmark: str, record: dict) -> str:
    """The gold answer the official script compared against, from a row of its data file.

    aime: str(answer).lstrip("0") (the AI-MO file stores strings; "025" would be "25" and a
        gold "0" the empty string); amc: str(answer) of AI-MO's floats, "142.0" (the numeric
        rule still matches "142"); math500: expected_answer of [PR]'s
        eval/data/math500/math_test_cleaned.json as is; minerva: the solution's last "boxed"
        through extract_answer (see qwen_first_gold); olympiadbench: final_answer[0] without
        "$", strip_string'ed twice (parse_ground_truth runs again in evaluate.py::evaluate on
        the saved sample, and for OlympiadBench that strips the already stripped gold again;
        Minerva's is kept)."""
    _check_math(benchmark)
    if benchmark == "aime":
        return str(record["answer"]).lstrip("0")
    if benchmark == "amc":
        return str(record["answer"])
    if benchmark == "math500":
        return record["expected_answer"]
    gold = qwen_first_gold(benchmark, record)
    return gold if benchmark == "minerva" else _strip_string(gold)


def paper_extract(benchmark: str, response: str) -> str | None:
    """The answer the official script took from `response` (after its stop strings; see
    paper_eval.truncate_at_stop). PRIME grader: always a string (the whole response when nothing
    is found). Qwen harness: None for an empty response."""
    _check_math(benchmark)
    if benchmark in PRIME_GRADER:
        return _prime_extract(benchmark, response)
    return _qwen_extract(benchmark, response)


def paper_math_equal(benchmark: str, prediction: str | None, gold: str) -> bool:
    """The official verdict on an extracted answer against paper_gold's gold. Pure: no time
    limit here (paper_eval.grade_math runs the whole comparison under a hard kill). For the
    Qwen harness the multiple-choice fix-up that needs the whole response is left to
    paper_math_correct."""
    _check_math(benchmark)
    if prediction is None:
        return False
    if benchmark in PRIME_GRADER:
        return _prime_grade(prediction, gold)
    return _qwen_grade(prediction, gold, prediction)


def paper_math_correct(benchmark: str, response: str, gold: str) -> bool:
    """paper_extract, then the official verdict against `gold` (from paper_gold)."""
    _check_math(benchmark)
    prediction = paper_extract(benchmark, response)
    if benchmark in PRIME_GRADER:
        return _prime_grade(prediction, gold)
    return _qwen_grade(prediction, gold, response)


def serve() -> None:
    """The worker loop behind paper_eval.grade_math (support/workers.py): one [benchmark, response,
    gold] per request -> "1" or "0" (an exception is "0": the official scripts scored one as
    wrong), once sympy and its LaTeX parser are loaded, so that a request's time is its
    comparison's alone."""
    def answer(request):
        try:
            return "1" if paper_math_correct(*request) else "0"
        except Exception:
            return "0"

    def warm_up():
        _parse_expr("1")
        _sympy_parse_latex("1")

    workers.serve(answer, warm_up)
