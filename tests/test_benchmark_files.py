"""support/benchmark_files.py (data.load_benchmark): every benchmark file as released."""
import base64
import collections
import itertools
import json
import logging
import pickle
import zlib

import pytest

import data
import verify
from tests.test_data import write_parquet


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_load_benchmark_column_names(tmp_path):
    aime_style = write_jsonl(tmp_path / "aime.jsonl", [
        {"id": 5, "question": "Q1", "answer": "033", "url": "u"},
        {"id": 6, "question": "Q2", "answer": "7", "url": "u"}])
    assert data.load_benchmark(aime_style) == [
        {"id": "5", "question": "Q1", "ability": "math", "ground_truth": "033"},
        {"id": "6", "question": "Q2", "ability": "math", "ground_truth": "7"}]

    math500_style = write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "P", "solution": "long \\boxed{2}", "answer": "2", "unique_id": "test/algebra/1.json"}])
    assert data.load_benchmark(math500_style) == [
        {"id": "test/algebra/1.json", "question": "P", "ability": "math", "ground_truth": "2"}]

    amc_style = write_jsonl(tmp_path / "amc.json", [{"problem": "A", "answer": 142.0},
                                                    {"problem": "B", "answer": 2.5}])
    assert [(p["id"], p["ground_truth"]) for p in data.load_benchmark(amc_style)] == [("0", "142"), ("1", "2.5")]

    array_file = tmp_path / "array.json"
    array_file.write_text(json.dumps([{"question": "Q", "solution": "\\boxed{1}"}]))
    assert data.load_benchmark(str(array_file))[0]["ground_truth"] == "\\boxed{1}"

    eurus_style = write_parquet(tmp_path / "val.parquet", [
        {"prompt": "P0", "reward_model": {"style": "rule", "ground_truth": "9"}, "idx": 3}])
    assert data.load_benchmark(eurus_style) == [{"id": "3", "question": "P0", "ability": "math", "ground_truth": "9"}]

    tests = {"inputs": ["1\n"], "outputs": ["2\n"]}
    code_file = write_parquet(tmp_path / "code.parquet", [
        {"question": "C", "input_output": json.dumps(tests), "problem_id": "lc-1", "solution": "print(2)"}])
    [code] = data.load_benchmark(code_file)
    assert (code["ability"], code["id"], json.loads(code["ground_truth"])) == ("code", "lc-1", tests)
    code_dict = write_jsonl(tmp_path / "code.jsonl", [{"problem": "C", "tests": tests}])
    assert json.loads(data.load_benchmark(code_dict)[0]["ground_truth"]) == tests


def test_load_benchmark_aime_2024_selection(tmp_path):
    base = "https://artofproblemsolving.com/wiki/index.php/{}_AIME_{}_Problems/Problem_{}"
    problems = itertools.product((2022, 2023, 2024), ("I", "II"), range(1, 16))
    records = [{"id": i, "question": f"{year} {contest} {k}", "answer": str(k), "url": base.format(year, contest, k)}
               for i, (year, contest, k) in enumerate(problems)]
    assert len(records) == 90
    kept = data.load_benchmark(write_jsonl(tmp_path / "aimo-validation-aime.jsonl", records))
    assert len(kept) == 30 and all(p["question"].startswith("2024 ") for p in kept)
    assert [p["id"] for p in kept] == [str(i) for i in range(60, 90)]
    only_2024 = data.load_benchmark(write_jsonl(tmp_path / "aime24.jsonl", records[60:]))
    assert len(only_2024) == 30  # already the right set: kept whole
    not_aime = data.load_benchmark(write_jsonl(tmp_path / "mixed.jsonl", records[:1] + [
        {"id": 1, "question": "q", "answer": "1", "url": "https://example.com/2024"}]))
    assert len(not_aime) == 2  # not every row is an AIME page: no selection


def test_load_benchmark_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        data.load_benchmark(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no problems"):
        data.load_benchmark(str(empty))
    layout = write_jsonl(tmp_path / "layout.jsonl", [{"text": "q", "label": "1"}])
    accepted = r"unknown column layout; found columns \['label', 'text'\].*'problem'.*'answer'.*'tests'"
    with pytest.raises(ValueError, match=accepted):
        data.load_benchmark(layout)
    no_answer = write_jsonl(tmp_path / "no_answer.jsonl", [{"question": "q"}])
    with pytest.raises(ValueError, match="unknown column layout"):
        data.load_benchmark(no_answer)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "1"}\n{"question": \n')
    with pytest.raises(ValueError, match="line 2"):
        data.load_benchmark(str(broken))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"question": "q", "answer": "1"},
                                                   {"question": " ", "answer": "2"}])
    with pytest.raises(ValueError, match=r"blank\.jsonl: row 1, field 'question'"):
        data.load_benchmark(blank)
    gap = write_jsonl(tmp_path / "gap.jsonl", [{"question": "q", "answer": "1"}, {"question": "r"}])
    with pytest.raises(ValueError, match=r"row 1, field 'answer': missing"):
        data.load_benchmark(gap)
    csv = tmp_path / "bench.csv"
    csv.write_text("question,answer\nq,1\n")
    with pytest.raises(ValueError, match="unknown file type"):
        data.load_benchmark(str(csv))


def prime_math500_file(path, rows):
    """A file in the shape of PRIME's eval/data/math500/math_test_cleaned.json: one line, one JSON
    object of columns keyed by row number (pandas' default to_json, the "columns" orientation)."""
    columns = ("problem", "level", "type", "solution", "expected_answer", "id")
    path.write_text(json.dumps({c: {str(i): row[c] for i, row in enumerate(rows)} for c in columns}))
    return str(path)


def test_load_benchmark_reads_prime_math500_columns_file(tmp_path, caplog):
    # 500 rows, as released; the gold is `expected_answer`, which may be written otherwise than
    # the solution's box (as in 86 of PRIME's 500)
    rows = [{"problem": f"What is {i}+{i}?", "level": "Level 1", "type": "Algebra",
             "solution": f"So $\\boxed{{{2 * i}}}$.", "expected_answer": str(2 * i), "id": f"test/algebra/{i}.json"}
            for i in range(500)]
    rows[7].update(solution="Hence $x \\in \\boxed{[2,5)}$.", expected_answer="[2, 5)")
    rows[9].update(solution="It is $\\boxed{\\text{(C)}}$.", expected_answer="\\text{(C)}")
    path = prime_math500_file(tmp_path / "math_test_cleaned.json", rows)
    with caplog.at_level(logging.INFO, logger="support.benchmark_files"):
        problems = data.load_benchmark(path)
    assert "500 rows, JSON in the 'columns' orientation" in caplog.text
    assert len(problems) == 500
    assert problems[3] == {"id": "test/algebra/3.json", "question": "What is 3+3?", "ability": "math",
                           "ground_truth": "6"}
    assert [problems[i]["ground_truth"] for i in (7, 9)] == ["[2, 5)", "\\text{(C)}"]
    samples = [{"ability": "math", "response": r, "ground_truth": problems[7]["ground_truth"]}
               for r in ("\\boxed{[2,5)}", "\\boxed{[2,5]}")]
    assert verify.score_batch(samples, workers=1) == [1.0, 0.0]

    ragged = json.loads(open(path).read())
    del ragged["expected_answer"]["499"]
    (tmp_path / "ragged.json").write_text(json.dumps(ragged))
    with pytest.raises(ValueError, match="column 'expected_answer' has 499 rows where column 'problem' has 500"):
        data.load_benchmark(str(tmp_path / "ragged.json"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="support.benchmark_files"):
        data.load_benchmark(write_jsonl(tmp_path / "rows.jsonl", rows[:2]))
    assert "2 rows, JSON in the 'records' orientation" in caplog.text


def test_load_benchmark_reads_olympiadbench_final_answer(tmp_path):
    path = tmp_path / "olympiadbench.jsonl"
    path.write_text(json.dumps({"id": 7, "question": "Find x.", "final_answer": ["$3$"],
                                "solution": ["We get $x=3$."]}) + "\n")
    [problem] = data.load_benchmark(path)
    assert problem["ground_truth"] == "3" and problem["ability"] == "math"


# --- LeetCode and LiveCodeBench files as released ------------------------------------------------
# Our own small problems, written in the released formats (PRIME's eval/data/leetcode/leetcode-test.json;
# livecodebench/code_generation_lite), loaded by data.load_benchmark and scored by verify.score_batch.

def leetcode_row(slug, stub, test):
    statement = f"Solve {slug}.\n\nConstraints:\n\n1 <= n <= 100\n"
    return {"task_id": f"weekly-contest-1-{slug}", "url": f"https://leetcode.com/problems/{slug}",
            "title": slug, "meta": {"questionId": "1", "difficulty": "Easy"},
            "prompt": f'"""\n{statement}"""\n{stub}',
            "prompt_sft": f"{statement}\n\nPlease complete the code below to solve above prblem:\n```python\n{stub}\n```",
            "test": test, "start_time": 1700000000}


LEETCODE_ROWS = [
    leetcode_row("count-even-digits", "class Solution:\n    def countEven(self, n: int) -> int:\n        ",
                 "\nmy_solution = Solution()\n\ntest_input = { \"n\": 2468 }\nassert my_solution.countEven(**test_input) == 4\n"
                 "\ntest_input = { \"n\": 135 }\nassert my_solution.countEven(**test_input) == 0\n"),
    leetcode_row("reverse-list", "class Solution:\n    def reverseList(self, head: Optional[ListNode]) -> Optional[ListNode]:\n        ",
                 "\nmy_solution = Solution()\n\n_f1 = lambda lst: ListNode(lst[0], _f1(lst[1:])) if lst else None\n"
                 "_f2 = lambda node: [node.val] + _f2(node.next) if node else []\n\n"
                 "test_input = { \"head\": _f1([3,1,2]) }\nassert _f2(my_solution.reverseList(**test_input)) == [2,1,3]\n"),
]

LISTNODE = "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val = val\n        self.next = next\n"


def test_load_benchmark_reads_leetcode_as_released(tmp_path):
    path = tmp_path / "leetcode-test.json"  # JSON Lines, as released
    path.write_text("".join(json.dumps(r) + "\n" for r in LEETCODE_ROWS))
    problems = data.load_benchmark(path)
    assert [p["id"] for p in problems] == ["weekly-contest-1-count-even-digits", "weekly-contest-1-reverse-list"]
    assert problems[0]["question"] == LEETCODE_ROWS[0]["prompt_sft"] and problems[0]["ability"] == "code"
    assert json.loads(problems[0]["ground_truth"]) == {"judge": "leetcode", "test_code": LEETCODE_ROWS[0]["test"]}

    count_even = "class Solution:\n    def countEven(self, n):\n        return sum(int(d) % 2 == 0 for d in str(n))\n"
    reverse = (LISTNODE + "class Solution:\n    def reverseList(self, head):\n        prev = None\n"
               "        while head:\n            head.next, prev, head = prev, head, head.next\n        return prev\n")
    responses = [
        (0, f"Count them.\n```python\n{count_even}```"),                              # right
        (0, f"```python\n{count_even.replace('== 0', '== 1')}```"),                    # wrong
        (0, "```python\ndef countEven(self, n):\n    return sum(int(d) % 2 == 0 for d in str(n))\n```"),  # wrapped in a Solution, as the official eval does
        (0, f"```python\n{count_even}import sys\nsys.exit(0)\n```"),                  # exits before the asserts run
        (1, f"```python\n{reverse}```\nUsage:\n```python\nprint(reverse)\n```"),       # the block with a def is taken
        (1, f"```python\n{reverse.replace(LISTNODE, '')}```"),                         # ListNode is the program's to define
    ]
    samples = [{"id": i, "ability": "code", "response": text, "ground_truth": problems[k]["ground_truth"]}
               for i, (k, text) in enumerate(responses)]
    assert verify.score_batch(samples, workers=2) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert verify.code_correct(responses[0][1], problems[0]["ground_truth"]) is True


def lcb_private(tests):
    """As released: base64 of zlib-compressed pickled JSON."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def lcb_row(question_id, date, public, private, func_name=None, starter=""):
    kind = "functional" if func_name else "stdin"
    return {"question_title": f"Problem {question_id}", "question_content": f"Statement of {question_id}.",
            "platform": "atcoder" if not func_name else "leetcode", "question_id": question_id,
            "contest_id": "c1", "contest_date": date, "starter_code": starter, "difficulty": "easy",
            "public_test_cases": json.dumps([{"input": i, "output": o, "testtype": kind} for i, o in public]),
            "private_test_cases": lcb_private([{"input": i, "output": o, "testtype": kind} for i, o in private]),
            "metadata": json.dumps({"func_name": func_name} if func_name else {})}


LCB_ROWS = [
    lcb_row("abc1_a", "2023-08-05T00:00:00", [("3\n1 2 3\n", "6\n")], [("2\n5 5\n", "10\n"), ("1\n7\n", "7\n")]),
    lcb_row("3001", "2024-01-13T00:00:00", [("[1, 2, 3]\n2", "[3, 4, 5]")], [("[]\n9", "[]")],
            func_name="addAll", starter="class Solution:\n    def addAll(self, nums: List[int], k: int) -> List[int]:\n        "),
    lcb_row("abc9_b", "2024-09-01T00:00:00", [("1\n", "1\n")], []),  # after the paper's window
]


def test_load_benchmark_reads_livecodebench_as_released(tmp_path):
    path = write_jsonl(tmp_path / "livecodebench.jsonl", LCB_ROWS)
    problems = data.load_benchmark(path)
    assert [p["id"] for p in problems] == ["abc1_a", "3001"]  # 2023-05-01..2024-05-31 only
    stdin, functional = problems
    assert json.loads(stdin["ground_truth"]) == {"inputs": ["3\n1 2 3\n", "2\n5 5\n", "1\n7\n"],
                                                 "outputs": ["6\n", "10\n", "7\n"], "judge": "livecodebench"}
    assert json.loads(functional["ground_truth"])["fn_name"] == "addAll"
    assert stdin["question"] == ("### Question:\nStatement of abc1_a.\n\n### Format: Read the inputs from stdin solve "
                                 "the problem and write the answer to stdout (do not directly test on the sample "
                                 "inputs). Enclose your code within delimiters as follows.\n```python\n# YOUR CODE "
                                 "HERE\n```\n\n### Answer: (use the provided format with backticks)\n\n")
    assert "```python\nclass Solution:\n    def addAll" in functional["question"]
    later_only = write_jsonl(tmp_path / "lcb_late.jsonl", LCB_ROWS[2:])
    assert len(data.load_benchmark(later_only)) == 1  # nothing in the window: the file is kept whole

    sum_all = "input()\nprint(sum(map(int, input().split())))\n"
    add_all = "class Solution:\n    def addAll(self, nums, k):\n        return tuple(x + k for x in nums)\n"
    responses = [
        (stdin, f"```python\n{sum_all}```"),                                        # right
        (stdin, f"```python\n{sum_all.replace('sum', 'max')}```"),                  # right on 1 test of 3
        (stdin, "```python\ninput()\nprint(float(sum(map(int, input().split()))))\n```"),  # "6.0" == "6" as decimals
        (functional, f"```python\n{add_all}```"),                                   # a tuple counts as a list
        (functional, f"```python\n{add_all.replace('x + k', 'x + k + 0.5')}```"),  # passes only on []
    ]
    samples = [{"id": i, "ability": "code", "response": text, "ground_truth": p["ground_truth"]}
               for i, (p, text) in enumerate(responses)]
    assert verify.score_batch(samples, workers=2) == [1.0, pytest.approx(1 / 3), 1.0, 1.0, 0.5]
    # eval.py's verdict: every test, public and private
    assert [verify.code_correct(text, p["ground_truth"]) for p, text in responses[:2]] == [True, False]


@pytest.mark.parametrize("file_name, rows, message", [
    ("leetcode-test.json", [{**LEETCODE_ROWS[0], "test": ""}], r"row 0, field 'test': expected a non-empty string"),
    ("leetcode-test.json", [LEETCODE_ROWS[0], {k: v for k, v in LEETCODE_ROWS[1].items() if k != "task_id"}],
     r"row 1, field 'task_id'"),
    ("lcb.jsonl", [{**LCB_ROWS[0], "private_test_cases": "not base64!"}],
     r"row 0, field 'private_test_cases': neither JSON nor base64"),
    ("lcb.jsonl", [{**LCB_ROWS[0], "private_test_cases": base64.b64encode(zlib.compress(
        pickle.dumps(collections.OrderedDict()))).decode()}], r"row 0, field 'private_test_cases'.*refusing to load"),
    ("lcb.jsonl", [{**LCB_ROWS[0], "public_test_cases": json.dumps([{"input": "1"}])}],
     r"row 0, field 'public_test_cases': expected a list of"),
    ("lcb.jsonl", [{**LCB_ROWS[1], "metadata": "{}"}], r"row 0, field 'metadata': functional tests need a 'func_name'"),
    ("lcb.jsonl", [{**LCB_ROWS[0], "contest_date": "last spring"}], r"row 0, field 'contest_date'"),
    ("lcb.jsonl", [{**LCB_ROWS[0], "public_test_cases": "[]", "private_test_cases": "[]"}], r"row 0.*no test cases"),
])
def test_load_benchmark_malformed_leetcode_and_livecodebench_rows(tmp_path, file_name, rows, message):
    path = write_jsonl(tmp_path / file_name, rows)
    with pytest.raises(ValueError, match=message):
        data.load_benchmark(path)
