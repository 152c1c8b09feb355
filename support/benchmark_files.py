"""support/benchmark_files.py: benchmark files as their authors release them, for eval.py.

Benchmarks come as local JSON Lines (or JSON) or parquet files with various column names and
layouts. `load_benchmark` maps each to one form, {"id", "question", "ability", "ground_truth"};
eval.py then builds the prompt (data.benchmark_messages) and scores with verify.py. Files of the
paper's seven benchmarks are recognised by their columns and read as released (docs/notes.md §8);
any other file by its column names.
"""

import base64
import io
import json
import logging
import os
import pickle
import re
import zlib
from datetime import datetime

import data

logger = logging.getLogger(__name__)

# A file of no known layout is read by column names: the first present name in each list wins
# (e.g. MATH-500 has both `answer` and `solution`: `answer` is taken).

QUESTION_COLUMNS = ("problem", "question", "prompt")
# `expected_answer`: PRIME's MATH-500 file (eval/data/math500/math_test_cleaned.json), the gold its
# evaluation graded against (in 86 of its 500 rows a string other than the solution's last \boxed{}).
ANSWER_COLUMNS = ("answer", "expected_answer", "final_answer", "ground_truth", "reward_model.ground_truth",
                  "solution")
TESTS_COLUMNS = ("tests", "input_output", "test_cases")
ID_COLUMNS = ("id", "idx", "problem_id", "unique_id")

# AIME 2024. AI-MO's aimo-validation-aime has 90 problems: AIME 2022, 2023 and 2024, contests I
# and II, 15 each. The paper's AIME 2024 score counts only the 30 of 2024: the official
# eval/Math/aime/evaluate_aime.py groups rows by `url.split("/")[-2]` and reports the
# "2024_AIME_I_Problems" + "2024_AIME_II_Problems" groups. The url is the AoPS wiki page, e.g.
# https://artofproblemsolving.com/wiki/index.php/2024_AIME_II_Problems/Problem_8.
AIME_URL = re.compile(r"/(\d{4})_AIME_(?:I|II)_Problems/")

# LeetCode as in [PR]'s eval data (eval/data/leetcode/leetcode-test.json, JSON Lines despite the
# name): `task_id`, the statement and code stub in `prompt` and `prompt_sft`, and the problem's own
# test code in `test` (asserts on `my_solution = Solution()`). The official eval asks with
# `prompt_sft` plus the code suffix (evaluate_leetcode.make_conv_hf) and passes a program when it
# runs, followed by `test`, without an error: verify.py's "leetcode" judge.
LEETCODE_COLUMNS = ("task_id", "prompt_sft", "test")

# LiveCodeBench code_generation_lite rows as released (lcb_runner/benchmarks/code_generation.py):
# `question_content`, `starter_code`, `public_test_cases` (a JSON list of {input, output, testtype}),
# `private_test_cases` (the same list, JSON, or base64 of zlib-compressed pickled JSON), `metadata`
# (JSON; `func_name` for functional problems), `contest_date`, `question_id`. The tests are the
# public then the private ones, as lcb_runner's get_evaluation_sample lists them; verify.py's
# "livecodebench" judge applies lcb_runner's comparison rules. The paper scored release_v4
# generations on problems of 2023-05-01..2024-05-31 ([PR] eval/run.sh: compute_scores
# --start_date 2023-05-01 --end_date 2024-05-31, compared as datetimes at midnight).
LCB_COLUMNS = ("question_content", "public_test_cases", "private_test_cases", "metadata")
LCB_WINDOW = (datetime(2023, 5, 1), datetime(2024, 5, 31))


def _get(record, column):
    """record[column], where "a.b" reads a nested field (reward_model.ground_truth)."""
    value = record
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _as_text(value):
    """A ground truth as a string: numbers without a spurious ".0" (AMC answers are floats),
    tests dicts/lists as JSON, strings as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value if isinstance(value, str) else str(value)


def load_benchmark(path):
    """Read a benchmark file into a list of {"id", "question", "ability", "ground_truth"} dicts.

    PRIME's LeetCode file and LiveCodeBench code_generation_lite rows are recognised by their
    columns and read as released (see LEETCODE_COLUMNS and LCB_COLUMNS above); their ground
    truth is tests JSON naming the official judge. Otherwise columns are found by name: the
    question from problem/question/prompt (a string); for code the tests from
    tests/input_output/test_cases (ability "code" whenever such a column exists; ground_truth is
    then the tests JSON); for math the answer from answer/final_answer/ground_truth/
    reward_model.ground_truth/solution; the id from id/idx/problem_id/unique_id, else the row
    number. Given AI-MO's aimo-validation-aime (AIME 2022-2024), only the 30 problems of 2024
    are kept, as in the paper; given LiveCodeBench rows of several periods, only those of the
    paper's window. A missing file, an unknown column layout, an empty file or an empty or
    malformed field is a clear error naming the file, the row and the field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark file {path!r} does not exist")
    records, orientation = read_rows(path)
    if not records:
        raise ValueError(f"{path}: the file holds no problems")
    logger.info("%s: %d rows, JSON in the %r orientation", path, len(records), orientation)
    if any("prompt_sft" in r and "test" in r for r in records):
        return _leetcode_problems(path, records)
    if any("public_test_cases" in r for r in records):
        return _livecodebench_problems(path, records)

    columns = sorted({key for r in records for key in r})

    def present(names):  # the first of `names` that some row fills
        return next((c for c in names if any(_get(r, c) is not None for r in records)), None)

    question_col, tests_col = present(QUESTION_COLUMNS), present(TESTS_COLUMNS)
    answer_col = tests_col or present(ANSWER_COLUMNS)
    if question_col is None or answer_col is None:
        raise ValueError(f"{path}: unknown column layout; found columns {columns}. Accepted: question "
                         f"from {list(QUESTION_COLUMNS)}, and math answers from {list(ANSWER_COLUMNS)} "
                         f"or code tests from {list(TESTS_COLUMNS)}")
    id_col = present(ID_COLUMNS)
    ability = "code" if tests_col else "math"

    problems = []
    for i, record in enumerate(records):
        question, truth = _get(record, question_col), _get(record, answer_col)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}: row {i}, field {question_col!r}: expected a non-empty string, "
                             f"got {question!r:.100}")
        if truth is None or (isinstance(truth, str) and not truth.strip()):
            raise ValueError(f"{path}: row {i}, field {answer_col!r}: missing")
        if answer_col == "final_answer" and isinstance(truth, list) and truth:
            truth = truth[0].strip().strip("$")  # OlympiadBench: ["$3$"], read as the Qwen2.5-Math harness does
        problem_id = _get(record, id_col) if id_col else None
        problems.append({"id": str(i if problem_id is None else problem_id), "question": question,
                         "ability": ability, "ground_truth": _as_text(truth)})

    # The AIME 2024 selection: only for a file whose every row is an AoPS AIME page, spanning
    # several years, 2024 among them (a file of 2024 or 2025 problems alone is kept whole).
    years = [AIME_URL.search(str(r.get("url", ""))) for r in records]
    if all(years) and len({m.group(1) for m in years}) > 1 and any(m.group(1) == "2024" for m in years):
        problems = [p for p, m in zip(problems, years) if m.group(1) == "2024"]
        logger.info("%s: AIME file with several years: kept the %d problems of 2024 of %d",
                    path, len(problems), len(records))
    return problems


def read_rows(path):
    """(rows as released, orientation): a file of rows (JSON Lines, a JSON array of objects,
    parquet) is read as it is ("records"); a file holding one JSON object whose every value is an object keyed by
    row ({"problem": {"0": ..., "1": ...}, "expected_answer": {...}, ...}), the layout pandas'
    DataFrame.to_json writes by default and PRIME's MATH-500 file has ("columns"), is turned into
    rows, in the order of its first column's keys."""
    records = data.read_records(path)
    if len(records) != 1 or not records[0] or not all(isinstance(v, dict) for v in records[0].values()):
        return records, "records"
    columns = records[0]
    first, index = next(iter(columns)), list(next(iter(columns.values())))
    for name, column in columns.items():
        if column.keys() != set(index):
            raise ValueError(f"{path}: a JSON object of columns (pandas' 'columns' orientation), but column "
                             f"{name!r} has {len(column)} rows where column {first!r} has {len(index)} "
                             f"(row keys differ: {sorted(column.keys() ^ set(index))[:5]})")
    return [{name: column[key] for name, column in columns.items()} for key in index], "columns"


def _required_text(record, field, where):
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}, field {field!r}: expected a non-empty string, got {value!r:.100}")
    return value


def _leetcode_problems(path, records):
    """PRIME's LeetCode rows -> problems judged by verify.py's "leetcode" judge."""
    problems = []
    for i, record in enumerate(records):
        where = f"{path}: row {i}"
        task_id, question, test_code = (_required_text(record, field, where) for field in LEETCODE_COLUMNS)
        problems.append({"id": task_id, "question": question, "ability": "code",
                         "ground_truth": json.dumps({"judge": "leetcode", "test_code": test_code})})
    return problems


class _StringUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a plain JSON string. A pickle that names any class or function
    (which could run code while loading) is refused rather than trusted."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only a string is expected)")


def _lcb_tests(value, where):
    """A LiveCodeBench test-case field -> [{"input": str, "output": str, "testtype": ...}]:
    JSON, or (private tests, as released) base64 of zlib-compressed pickled JSON."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    try:
        tests = json.loads(value)
    except json.JSONDecodeError:
        try:
            text = _StringUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value, validate=True)))).load()
            tests = json.loads(text)
        except (ValueError, TypeError, EOFError, zlib.error, pickle.UnpicklingError) as error:
            raise ValueError(f"{where}: neither JSON nor base64 of zlib-compressed pickled JSON "
                             f"({type(error).__name__}: {error})") from None
    if not isinstance(tests, list) or not all(
            isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
            for t in tests):
        raise ValueError(f"{where}: expected a list of {{'input': str, 'output': str, 'testtype': str}}")
    return tests


def _lcb_question(content, starter_code):
    """The question as [PR]'s LiveCodeBench run asked it (lcb_runner prompts/code_generation.py,
    get_generic_question_template_answer; benchmark_messages then adds the code suffix, as
    [PR]'s format_prompt_generation did)."""
    prompt = f"### Question:\n{content}\n\n"
    if starter_code:
        prompt += ("### Format: You will use the following starter code to write the solution to the "
                   "problem and enclose your code within delimiters.\n")
        prompt += f"```python\n{starter_code}\n```\n\n"
    else:
        prompt += ("### Format: Read the inputs from stdin solve the problem and write the answer to "
                   "stdout (do not directly test on the sample inputs). Enclose your code within "
                   "delimiters as follows.\n")
        prompt += "```python\n# YOUR CODE HERE\n```\n\n"
    return prompt + "### Answer: (use the provided format with backticks)\n\n"


def _livecodebench_problems(path, records):
    """LiveCodeBench code_generation_lite rows -> problems judged by verify.py's
    "livecodebench" judge, cut to the paper's window when the file reaches into it."""
    problems, dates = [], []
    for i, record in enumerate(records):
        where = f"{path}: row {i}"
        content = _required_text(record, "question_content", where)
        starter_code = record.get("starter_code") or ""
        if not isinstance(starter_code, str):
            raise ValueError(f"{where}, field 'starter_code': expected a string, got {starter_code!r:.100}")
        tests = (_lcb_tests(record.get("public_test_cases"), f"{where}, field 'public_test_cases'")
                 + _lcb_tests(record.get("private_test_cases"), f"{where}, field 'private_test_cases'"))
        if not tests:
            raise ValueError(f"{where}, fields 'public_test_cases'/'private_test_cases': no test cases")
        metadata = record.get("metadata") or "{}"
        try:
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}, field 'metadata': not valid JSON ({error})") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}, field 'metadata': expected a JSON object, got {metadata!r:.100}")
        fn_name = metadata.get("func_name")
        if any(t.get("testtype") == "functional" for t in tests) and not isinstance(fn_name, str):
            raise ValueError(f"{where}, field 'metadata': functional tests need a 'func_name'")
        try:
            dates.append(datetime.fromisoformat(_required_text(record, "contest_date", where)))
        except ValueError as error:
            raise ValueError(f"{where}, field 'contest_date': {error}") from None
        ground_truth = {"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests],
                        "judge": "livecodebench"}
        if fn_name:
            ground_truth["fn_name"] = fn_name
        problem_id = record.get("question_id")
        problems.append({"id": str(i if problem_id is None else problem_id),
                         "question": _lcb_question(content, starter_code), "ability": "code",
                         "ground_truth": json.dumps(ground_truth)})
    start, end = LCB_WINDOW
    in_window = [p for p, date in zip(problems, dates) if start <= date <= end]
    if in_window and len(in_window) < len(problems):
        logger.info("%s: LiveCodeBench rows of several periods: kept the %d of %d in the paper's "
                    "window %s..%s", path, len(in_window), len(problems), start.date(), end.date())
        return in_window
    return problems
