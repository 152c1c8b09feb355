"""support/paper_eval.py and support/paper_graders.py: the official Table 2 protocol and graders,
pinned on concrete cases.

The expected verdicts marked "official" were obtained by running the official graders
themselves ([PR] eval/utils/grader.py with the scripts' match_answer, and the Qwen2.5-Math
harness in eval/Math/Qwen25-Math/evaluation) under sympy 1.12 and antlr4 4.11, as [PR]'s
requirements pin them; they are facts about that code, not outputs of ours. Where our own
grader decides otherwise, tests/test_eval.py shows it through eval.grade, in both directions.
"""
import json
import math
import os

import pytest

import data
from support import paper_eval as P
from support import paper_graders as G

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


# ----- the prompt -----------------------------------------------------------------------

def test_system_prompt_is_the_training_prompt_with_backslash_n():
    # eval/system_prompt.md: 414 characters on one line, literal backslash-n, no real newline
    assert len(P.EVAL_SYSTEM_PROMPT) == 414
    assert "\n" not in P.EVAL_SYSTEM_PROMPT
    assert P.EVAL_SYSTEM_PROMPT.startswith("\\nWhen tackling")
    assert P.EVAL_SYSTEM_PROMPT.endswith("[NEXT ACTION NAME]\\n")
    assert P.EVAL_SYSTEM_PROMPT.replace("\\n", "\n") == data.SYSTEM_PROMPT[:-1]  # one trailing newline, not two


def test_user_turns():
    assert P.paper_user_turn("aime", " Find $x$. ", {}) == " Find $x$. " + data.MATH_SUFFIX
    assert P.paper_user_turn("math500", "Find $y$.\n", {}) == "Find $y$.\n" + data.MATH_SUFFIX
    # the Qwen harness strips the question and flags yes/no questions by their gold
    assert (P.paper_user_turn("olympiadbench", " Is it? ", {"final_answer": ["Yes"]})
            == "Is it?  (Yes or No)" + data.MATH_SUFFIX)          # appended before the strip
    assert (P.paper_user_turn("minerva", " Find $z$.\n", {"solution": "so \\boxed{3}"})
            == "Find $z$." + data.MATH_SUFFIX)
    assert P.paper_user_turn("leetcode", "Q", {}) == "Q" + data.CODE_SUFFIX


def test_livecodebench_prompt_is_chatml_whatever_the_model(tmp_path):
    from toy import task as toy
    tokenizer = toy.build_toy_tokenizer(str(tmp_path / "tok"))
    text = P.render_prompt(tokenizer, "livecodebench", "Q")
    assert text == (f"<|im_start|>system\n{P.EVAL_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
                    "<|im_start|>assistant\n")
    # the other six: the model's own template (the toy tokenizer's is ChatML too, so the same text)
    assert P.render_prompt(tokenizer, "aime", "Q") == text


# ----- the protocol table ---------------------------------------------------------------

def test_protocol_table():
    assert tuple(P.PROTOCOLS) == P.BENCHMARKS
    greedy = [b for b in P.BENCHMARKS if b != "livecodebench"]
    assert all(P.PROTOCOLS[b].temperature == 0.0 and P.PROTOCOLS[b].n_samples == 1 for b in greedy)
    lcb = P.PROTOCOLS["livecodebench"]
    assert (lcb.temperature, lcb.top_p, lcb.n_samples, lcb.max_new_tokens, lcb.max_model_len) == (0.2, 0.95, 10, 4096, 4096)
    assert lcb.stop == ("###",) and lcb.chat_template == P.QWEN_MATH_INSTRUCT_TEMPLATE
    assert P.PROTOCOLS["aime"].stop == ("\n###\nProblem: ", "<|eot_id|>") == P.PROTOCOLS["math500"].stop
    assert P.PROTOCOLS["amc"].stop == ()
    assert P.PROTOCOLS["minerva"].stop == ("</s>", "<|im_end|>", "<|endoftext|>")
    assert [P.PROTOCOLS[b].max_new_tokens for b in P.BENCHMARKS] == [4096, 4096, 8192, 4096, 4096, 8192, 4096]
    assert all(p.max_model_len == 4096 for p in P.PROTOCOLS.values())
    assert (P.PROTOCOLS["leetcode"].code_time_limit, lcb.code_time_limit) == (10.0, 6.0)
    assert {b: P.PROTOCOLS[b].math_time_limit for b in P.MATH_BENCHMARKS} == \
        {"aime": 1.0, "amc": 1.0, "math500": 1.0, "minerva": 3.0, "olympiadbench": 3.0}
    # Table 2 (Eurus-2-7B-SFT, Eurus-2-7B-PRIME): the averages the paper prints, 28.8 and 43.9
    sft, prime = ([getattr(p, k) for p in P.PROTOCOLS.values()] for k in ("sft", "prime"))
    assert round(sum(sft) / 7, 1) == 28.8 and round(sum(prime) / 7, 2) == 43.76  # printed 43.9 (notes §8)


@pytest.mark.parametrize("name, bench", [
    ("aimo-validation-aime", "aime"), ("AIME_2024", "aime"), ("aime24", "aime"), ("aime25", None),
    ("aimo-validation-amc", "amc"), ("amc23", None), ("MATH-500", "math500"), ("math_500", "math500"),
    ("Math 500", "math500"), ("math_test_cleaned", "math500"), ("math", None), ("minerva_math", "minerva"),
    ("OlympiadBench", "olympiadbench"), ("leetcode-test", "leetcode"), ("LiveCodeBench_v2", "livecodebench"),
    ("lcb", "livecodebench"), ("my_quiz", None), ("toy", None),
])
def test_protocol_for_matches_names_case_and_separator_blind(name, bench):
    assert P.protocol_for(name) == bench


# ----- benchmark files ------------------------------------------------------------------

@pytest.mark.parametrize("file, bench, ids, ours, official", [
    # AI-MO's AIME file: the 2024 rows only; the gold without leading zeros
    ("aimo-validation-aime.jsonl", "aime", ["1", "2"], ["009", "025"], ["9", "25"]),
    ("aimo-validation-amc.jsonl", "amc", ["0", "1"], ["14", "8"], ["14.0", "8.0"]),   # str() of a float
    # [PR]'s MATH-500 file, one JSON object of columns: expected_answer for both graders
    ("math_test_cleaned.json", "math500", ["test/algebra/101.json", "test/prealgebra/7.json"],
     ["[-2,7]", "0.25"], ["[-2,7]", "0.25"]),
    # Minerva: ours reads the solution's box, the official gold is that box's content, stripped
    ("minerva_math/test.jsonl", "minerva", ["0", "1"], None, ["0.5", "42"]),
    ("olympiadbench/test.jsonl", "olympiadbench", ["1606", "1607"], ["No", "7,-7"], ["No", "7,-7"]),
])
def test_benchmark_rows_as_released(file, bench, ids, ours, official):
    rows = P.benchmark_rows(bench, os.path.join(FIXTURES, file))
    assert [r.id for r in rows] == ids
    if ours is not None:
        assert [r.ground_truth for r in rows] == ours
    assert [r.paper_gold for r in rows] == official
    assert all(r.ability == "math" and r.user_turn.endswith(data.MATH_SUFFIX) for r in rows)


def test_benchmark_rows_code_and_qwen_questions():
    [yes_no, _] = P.benchmark_rows("olympiadbench", os.path.join(FIXTURES, "olympiadbench", "test.jsonl"))
    assert yes_no.user_turn == "Is 91 a prime number? (Yes or No)" + data.MATH_SUFFIX
    assert yes_no.question == "Is 91 a prime number?"  # our prompt: the question as it is
    lcb = P.benchmark_rows("livecodebench", os.path.join(FIXTURES, "livecodebench.jsonl"))
    assert [r.id for r in lcb] == ["abc300_a", "3001"]  # the v2 window only
    assert all(r.user_turn == r.question + data.CODE_SUFFIX and r.paper_gold == r.ground_truth for r in lcb)
    assert lcb[0].question.startswith("### Question:\nProblem abc300_a")
    [add, _] = P.benchmark_rows("leetcode", os.path.join(FIXTURES, "leetcode-test.json"))
    assert add.user_turn.startswith("Return the sum of two integers")
    assert json.loads(add.paper_gold)["judge"] == "leetcode"


def test_benchmark_rows_errors(tmp_path):
    hf = tmp_path / "MATH-500.jsonl"  # HuggingFaceH4's file has no expected_answer: its answer, with a warning
    hf.write_text(json.dumps({"problem": "1+1?", "answer": "2", "solution": "\\boxed{2}"}) + "\n")
    [row] = P.benchmark_rows("math500", str(hf))
    assert row.paper_gold == row.ground_truth == "2"
    broken = tmp_path / "math_test_cleaned.json"
    broken.write_text(json.dumps({"problem": {"0": "1+1?"}, "expected_answer": {"0": ""}}))
    with pytest.raises(ValueError, match="row 0, field 'expected_answer'"):
        P.benchmark_rows("math500", str(broken))
    olympiad = tmp_path / "olympiadbench.jsonl"
    olympiad.write_text(json.dumps({"question": "Q?", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match="problem 0: the official gold needs field 'final_answer'"):
        P.benchmark_rows("olympiadbench", str(olympiad))
    with pytest.raises(ValueError, match="unknown benchmark"):
        P.benchmark_rows("gsm8k", str(hf))


# ----- stop strings ---------------------------------------------------------------------

def test_truncate_at_stop():
    stops = P.PROTOCOLS["aime"].stop
    assert P.truncate_at_stop("x = 3.\n###\nProblem: next", stops) == "x = 3."
    assert P.truncate_at_stop("no stop here", stops) == "no stop here"
    assert P.truncate_at_stop("### Step 1\nwork", ("###",)) == ""          # LiveCodeBench cuts headings
    # the stop string completed first wins, even if another one started earlier
    assert P.truncate_at_stop("xabc", ("abc", "b")) == "xa"
    assert P.truncate_at_stop("xab", ("ab", "xab")) == "x"                  # same end: list order
    assert P.truncate_at_stop("abc", ("", "c")) == "ab"                     # an empty stop is ignored


# ----- golds ----------------------------------------------------------------------------

def test_golds():
    assert G.paper_gold("aime", {"answer": "025"}) == "25"
    assert G.paper_gold("aime", {"answer": "0"}) == ""                      # lstrip('0') of "0"
    assert G.paper_gold("amc", {"answer": 142.0}) == "142.0"
    assert G.paper_gold("math500", {"expected_answer": "\\frac{1}{2}", "solution": "\\boxed{0.5}"}) == "\\frac{1}{2}"
    # Minerva: the solution's last box, units kept, \leq -> \le
    assert G.paper_gold("minerva", {"solution": "s=\\boxed{1.6} \\mathrm{~cm}"}) == "1.6"
    assert G.paper_gold("minerva", {"solution": "so \\boxed{x \\leq 4.5e33}"}) == "x\\le4.5e33"
    # OlympiadBench: final_answer[0] without $, strip_string twice, unit words removed
    assert G.paper_gold("olympiadbench", {"final_answer": ["$3$"]}) == "3"
    assert G.paper_gold("olympiadbench", {"final_answer": ["$a+b$"]}) == "+b"   # "a" is a unit word
    assert G.paper_gold("olympiadbench", {"final_answer": ["$y=2x+1$"]}) == "2x+1"
    with pytest.raises(ValueError):
        G.paper_gold("leetcode", {})


# ----- extraction -----------------------------------------------------------------------

def test_prime_extraction():
    # AIME/AMC's first marker has a capital T and is searched in lowercased text: never found;
    # the whole text is then character-stripped. MATH-500's lowercase marker works.
    assert G.paper_extract("aime", "The answer is: 12") == ": 12"
    assert G.paper_extract("math500", "The answer is: 12") == "12"
    assert G.paper_extract("aime", "so \\boxed{\\pi}") == "\\"                # .strip of character sets
    assert G.paper_extract("math500", "so \\boxed{\\pi}") == "\\pi"
    assert G.paper_extract("amc", "so \\boxed{8}. Final answer: 7") == "7"       # a box before the marker is lost
    assert G.paper_extract("amc", "Final answer: 7, i.e. \\boxed{8}") == "8"
    assert G.paper_extract("math500", "a \\boxed{1} then \\fbox{2} and \\boxed{ 3 }") == "3"
    assert G.paper_extract("math500", "no answer at all") == "no answer at all"
    assert G.paper_extract("math500", "unclosed \\boxed{3") == "unclosed \\boxed{3"


def test_qwen_extraction():
    assert G.paper_extract("olympiadbench", "") is None
    assert G.paper_extract("olympiadbench", "no box, the value 17 then 42") == "42"
    assert G.paper_extract("minerva", "The final answer is $1.6$. I hope it is correct.") == "1.6"
    assert G.paper_extract("olympiadbench", "\\boxed{5 m}") == "5"               # unit word removed
    assert G.paper_extract("minerva", "\\boxed{5 m}") == "5m"                    # Minerva keeps units
    assert G.paper_extract("olympiadbench", "\\boxed{five}") == "5"              # word2number
    assert G.paper_extract("olympiadbench", "\\boxed{band}") == "b"              # "and" removed anywhere
    assert G.paper_extract("olympiadbench", "\\boxed{\\dfrac{1}{2}}<|im_end|>junk") == "\\frac{1}{2}"


# ----- equivalence: the official rules ------------------------------------------------------

@pytest.mark.parametrize("bench,prediction,gold,official", [
    ("math500", "25", "0.25", True),                         # gold * 100
    ("amc", "1.42", "142.0", True),                          # gold / 100
    ("math500", "1000100", "1000000", True),                 # relative 1e-4
    ("math500", "1000200", "1000000", False),
    ("math500", "(3,4)", "(3,4]", True),                     # interval brackets ignored
    ("math500", "3,4", "(3,4)", True),
    ("math500", "[3,4]", "(3,4)", False),                    # opening brackets differ
    ("math500", "1,7", "1,-1,7,-7", False),                  # parse_expr: two tuples
    ("math500", "\\frac{1}{2},3", "\\frac{1}{2},-3,5", True),  # parse_latex: first items only
    ("math500", "2^{10}", "1024", True),
    ("math500", "2^10", "1024", False),                      # parse_expr: ^ is XOR
    ("math500", "x_1", "x_1", False),                        # handle_base raises: always wrong
    ("math500", "1010_2", "1010_2", True),
    ("math500", "1.5708", "\\frac{\\pi}{2}", True),          # \pi -> 3.14159..., then N() within 1e-4
    ("math500", "\\frac{1}{2}", "0.5", True),
    ("math500", "\\dfrac{1}{2}", "\\frac12", True),
    ("math500", "C", "\\text{(C)}", False),
    ("olympiadbench", "1,7", "1,-1,7,-7", True),             # parse_latex first: 1 == 1
    ("olympiadbench", "1", "1,-1,7,-7", True),
    ("olympiadbench", "(3,4)", "(3,4]", True),
    ("olympiadbench", "b+", "+b", True),                     # "b+a" vs "a+b" after unit removal
    ("minerva", "0.25", "25", True),
    ("minerva", "5m", "5", False),
    ("minerva", "4.5\\times10^{33}", "4.5e33", False),        # parse_latex reads "4.5e33" as 4.5*e*33
    ("olympiadbench", "2x+1-0", "2x+1", True),
    # a differential fraction makes sympy's converter call its own parse_latex again
    ("minerva", "\\frac{dx}{dt}=kx-a.0", "\\frac{dx}{dt}=kx-a", True),
])
def test_official_verdicts(bench, prediction, gold, official):
    assert G.paper_math_equal(bench, prediction, gold) is official


def test_pi_answers():
    # AIME/AMC strip "\pi" to "\": never right; MATH-500 compares it (math.pi, then 3.14)
    assert not G.paper_math_correct("aime", "\\boxed{\\pi}", "\\pi")
    assert G.paper_math_correct("math500", "\\boxed{\\pi}", "\\pi")
    assert G.paper_math_correct("math500", "\\boxed{3.14}", "\\pi")          # the 3.14 pass
    assert not G.paper_math_correct("math500", "\\boxed{3.2}", "\\pi")


def test_python_eval_is_arithmetic_only():
    assert G._prime_handle_pi("2\\pi", math.pi) == 2 * math.pi
    assert G._prime_handle_pi("(\\pi, 2)", 3.14) == (3.14, 2)
    assert G._prime_handle_pi("\\pi^2", 3.14) == "1*3.14^2"                   # float ^ int: TypeError, kept
    hostile = "().__class__.__base__.__subclasses__() and \\pi"
    assert G._prime_handle_pi(hostile, 3.14) == hostile.replace("\\pi", "1*3.14")
    assert G._prime_handle_pi("10**10**10 + \\pi", 3.14) == "10**10**10 + 1*3.14"
    with pytest.raises(ValueError):
        G._parse_expr("().__class__")


def test_sympy_latex_parser_runs_under_antlr_4_13():
    assert str(G._sympy_parse_latex("\\frac{1}{2}")) == "1/2"
    assert str(G._sympy_parse_latex("1,7")) == "1"                          # a prefix is enough
    assert str(G._sympy_parse_latex("\\frac{d}{dx} x^2")) == "Derivative(x**2, x)"
    with pytest.raises(Exception):
        G._sympy_parse_latex("(3,4]")
    with pytest.raises(Exception):
        G._sympy_parse_latex("1,7", strict=True)


def test_word_to_num():
    assert G._word_to_num("twenty-one") == 21
    assert G._word_to_num("two hundred thousand five") == 200005
    assert G._word_to_num("one point five") == 1.5
    assert G._word_to_num("point") == 0
    assert G._word_to_num("012") == 12
    with pytest.raises(ValueError):
        G._word_to_num("x")


def test_unknown_benchmark():
    with pytest.raises(ValueError):
        G.paper_extract("gsm8k", "1")
    with pytest.raises(ValueError):
        G.paper_math_equal("livecodebench", "1", "1")


# ----- math verdicts under a hard time limit ----------------------------------------------

def test_grade_math_kills_a_comparison_at_its_time_limit(monkeypatch):
    assert P.KILL_AFTER == {"aime": 10.0, "amc": 10.0, "math500": 10.0, "minerva": 3.0, "olympiadbench": 3.0}
    assert P.grade_math("math500", "so \\boxed{2^{10}}", "1024")    # parse_latex, then simplify: right
    monkeypatch.setitem(P.KILL_AFTER, "math500", 1e-4)               # no comparison finishes in 0.1 ms
    assert not P.grade_math("math500", "so \\boxed{2^{10}}", "1024")
    monkeypatch.undo()
    assert P.grade_math("math500", "so \\boxed{2^{10}}", "1024")    # a new worker took the killed one's place
    with pytest.raises(ValueError, match="not one of the math benchmarks"):
        P.grade_math("leetcode", "x", "y")
