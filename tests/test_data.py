"""data.py: the toy tokenizer and chat template, the toy task, the parquet path, benchmark files."""
import base64
import collections
import itertools
import json
import pickle
import random
import re
import zlib

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

import data
import model
import verify


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """`datasets` converts each parquet file into a cache; keep the tests' out of ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return data.build_toy_tokenizer(str(tmp_path_factory.mktemp("toy_tokenizer")))


# --- the paper's prompts -----------------------------------------------------------------------


def test_system_prompt_and_benchmark_messages():
    p = data.SYSTEM_PROMPT
    assert p.startswith("\nWhen tackling complex reasoning tasks, you have access to the following actions.")
    assert p.endswith("\n\nNext action: [NEXT ACTION NAME]\n\n")
    actions = ["[ASSESS]", "[ADVANCE]", "[VERIFY]", "[SIMPLIFY]", "[SYNTHESIZE]", "[PIVOT]", "[OUTPUT]"]
    assert [p.index(a) for a in actions] == sorted(p.index(a) for a in actions)
    assert "\n\n".join(actions) in p  # one blank line between actions, as in the official text

    math_chat = data.benchmark_messages("What is 1+1?", "math")
    assert math_chat == [{"role": "system", "content": p},
                         {"role": "user",
                          "content": "What is 1+1?\n\nPresent the answer in LaTex format: \\boxed{Your answer}"}]
    code_chat = data.benchmark_messages("Print 1.", "code")
    assert code_chat[1]["content"] == ("Print 1.\n\nWrite Python code to solve the problem. Present the code in "
                                       "\n```python\nYour code\n```\nat the end.")
    with pytest.raises(ValueError, match="ability"):
        data.benchmark_messages("x", "physics")


# --- the toy tokenizer, chat template and config -------------------------------------------------


def test_toy_tokenizer_round_trip(tok):
    assert len(tok) == 96 + 3
    for ch in data.TOY_CHARS:
        ids = tok(ch, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids) == ch
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert len(set(special.values())) == 3 and all(i >= 96 for i in special.values())
    assert tok.pad_token_id == special["<|endoftext|>"] and tok.eos_token_id == special["<|im_end|>"]

    text = "  a  b\n\\boxed{-12}<|im_start|>x , y<|im_end|>."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) - len("<|im_start|>") - len("<|im_end|>") + 2  # each special is one id
    assert tok.decode(ids) == text  # no spaces inserted or cleaned up

    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 40))]
        assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_tokenizer_survives_a_checkpoint_folder(tok, tmp_path):
    """Saved beside a Qwen2 config.json (as in every checkpoint), AutoTokenizer must load the
    same tokenizer: transformers picks the class from the config's model_type."""
    data.toy_model_config(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\n7+4*6-9<|im_end|>\n<|im_start|>assistant\n7+24-9\n\\boxed{22}<|im_end|>"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text


def test_chat_template(tok):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "1+2"}]
    text = data.render_prompt(tok, messages)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"
    ids = data.tokenize_prompt(tok, messages)
    assert ids == tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    generation_prompt = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert len(generation_prompt) == 1 + len("assistant\n")
    assert ids[-len(generation_prompt):] == generation_prompt
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def test_toy_model_config_builds_the_network(tok):
    config = data.toy_model_config(tok, hidden_size=64, num_layers=2, intermediate_size=96, tie_word_embeddings=True)
    assert config.vocab_size == 128 and config.vocab_size % 64 == 0 and config.vocab_size > len(tok)
    assert (config.eos_token_id, config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert config.tie_word_embeddings and config.num_key_value_heads == 2
    net = model.Qwen2ForCausalLM(config)
    model.init_weights(net)
    ids = torch.tensor([data.tokenize_prompt(tok, [{"role": "user", "content": "1+2"}])])
    assert net(ids).shape == (1, ids.shape[1], 128)
    assert data.toy_model_config(tok).hidden_size == 128


# --- the toy task --------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,max_operand,ops", [(1, 9, "+-*"), (3, 9, "+-*"), (5, 30, "+-*"), (4, 99, "+-")])
def test_toy_answers_and_solutions_are_correct(steps, max_operand, ops):
    for split in ("train", "test"):
        for row in data.toy_rows(split, 40, seed=1, steps=steps, max_operand=max_operand, ops=ops):
            question = row["prompt"][0]["content"]
            assert row["prompt"] == [{"role": "user", "content": question}]
            assert row["data_source"] == "toy_arithmetic" and row["ability"] == "math"
            assert row["reward_model"]["style"] == "rule"
            numbers = [int(x) for x in question.replace("*", " ").replace("+", " ").replace("-", " ").split()]
            assert len(numbers) == steps + 1 and all(1 <= x <= max_operand for x in numbers)
            assert set(question) - set("0123456789") <= set(ops)
            answer = eval(question)  # Python's own precedence, independent of data.py
            assert row["reward_model"]["ground_truth"] == str(answer)
            lines = row["extra_info"]["solution"].split("\n")
            assert len(lines) == steps and lines[-1] == f"\\boxed{{{answer}}}"
            def n_ops(expression):  # a leading "-" is a sign, not an operation
                return expression.count("+") + expression.count("*") + expression.lstrip("-").count("-")
            for previous, line in zip([question] + lines, lines[:-1]):
                assert eval(line) == answer  # every step keeps the value ...
                assert n_ops(line) == n_ops(previous) - 1  # ... and does one operation


def left_to_right(question):
    """The value of `question` read strictly left to right (computed here, not by data.py)."""
    tokens = question.replace("*", " * ").replace("+", " + ").replace("-", " - ").split()
    if tokens[0] == "-":  # cannot happen in a prompt, only as a later line's leading sign
        tokens = ["-" + tokens[1]] + tokens[2:]
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = eval(f"{value}{op}{number}")
    return value


def test_careless_teacher_changes_only_the_solutions():
    careful = data.toy_rows("train", 400, seed=2)
    mixed = data.toy_rows("train", 400, seed=2, careless_share=0.6)
    assert [r["prompt"] for r in mixed] == [r["prompt"] for r in careful]
    assert [r["reward_model"] for r in mixed] == [r["reward_model"] for r in careful]  # the true answers
    flags = [r["extra_info"]["careless"] for r in mixed]
    assert 0.5 < sum(flags) / len(flags) < 0.7
    assert not any(r["extra_info"]["careless"] for r in careful)
    wrong = 0
    for c, m in zip(careful, mixed):
        question = m["prompt"][0]["content"]
        if not m["extra_info"]["careless"]:
            assert m["extra_info"]["solution"] == c["extra_info"]["solution"]
            continue
        lines = m["extra_info"]["solution"].split("\n")
        ltr = left_to_right(question)
        assert lines[-1] == f"\\boxed{{{ltr}}}"
        for line in lines[:-1]:  # each line is the leftmost operation done, still equal left to right
            assert left_to_right(line) == ltr
        wrong += ltr != eval(question)
    assert 0.3 < wrong / sum(flags) < 0.5  # precedence matters on ~37% of 3-operation problems on 1..6
    with pytest.raises(ValueError, match="careless_share"):
        data.toy_rows("train", 5, careless_share=1.5)


def test_toy_first_step_names_the_teacher_of_the_first_line():
    careful, _ = data.toy_solution([5, 4, 6, 3], ["+", "*", "-"])  # 5+24-3 / 29-3 / boxed 26
    careless, _ = data.toy_solution([5, 4, 6, 3], ["+", "*", "-"], careless=True)  # 9*6-3 / ...
    assert data.toy_first_step("5+4*6-3", careful) == "careful"
    assert data.toy_first_step("5+4*6-3", careless) == "careless"
    assert data.toy_first_step("5+4*6-3", "5+4*6-3\n\\boxed{26}") == "neither"
    assert data.toy_first_step("5+4*6-3", "") == "neither"
    # "*" first, or no "*" at all: both teachers start alike, whatever the response says
    assert data.toy_first_step("6*4+5", "24+5") == "either"
    assert data.toy_first_step("3-5+2", "nonsense") == "either"


def test_toy_splits_never_overlap_and_are_deterministic():
    train = [r["prompt"][0]["content"] for r in data.toy_rows("train", 3000, seed=0, steps=2, max_operand=9)]
    test = [r["prompt"][0]["content"] for r in data.toy_rows("test", 1000, seed=0, steps=2, max_operand=9)]
    other_seed = [r["prompt"][0]["content"] for r in data.toy_rows("train", 3000, seed=7, steps=2, max_operand=9)]
    assert len(set(train)) == 3000 and len(set(test)) == 1000  # distinct within a split
    assert not set(train) & set(test) and not set(other_seed) & set(test)
    assert all(data.toy_split_of(q) == "train" for q in train) and all(data.toy_split_of(q) == "test" for q in test)

    again = data.toy_rows("test", 1000, seed=0, steps=2, max_operand=9)
    assert [r["prompt"][0]["content"] for r in again] == test
    assert [r["extra_info"]["index"] for r in again] == list(range(1000))
    assert other_seed != train
    assert [r["prompt"][0]["content"] for r in data.toy_rows("test", 10, seed=0, steps=2, max_operand=9)] == test[:10]


def test_toy_rows_errors():
    with pytest.raises(ValueError, match="distinct"):  # 1+1, 1+2, 2+1, 2+2: too few problems
        data.toy_rows("train", 10, steps=1, max_operand=2, ops="+")
    with pytest.raises(ValueError, match="split"):
        data.toy_rows("val", 10)
    with pytest.raises(ValueError, match="ops"):
        data.toy_rows("train", 10, ops="/")


@pytest.mark.parametrize("products,max_operand", [(1, 6), (3, 6), (4, 9)])
def test_toy_products_answers_and_careful_solutions(products, max_operand):
    for split in ("train", "test"):
        for row in data.toy_rows(split, 40, seed=1, task="products", products=products, max_operand=max_operand):
            question = row["prompt"][0]["content"]
            # a leading number, then "+b*c" per product, operands in 1..max_operand
            assert re.fullmatch(r"\d+(\+\d+\*\d+){%d}" % products, question)
            assert all(1 <= int(x) <= max_operand for x in re.findall(r"\d+", question))
            answer = eval(question)
            assert row["reward_model"]["ground_truth"] == str(answer)
            lines = row["extra_info"]["solution"].split("\n")
            assert len(lines) == 2 * products and lines[-1] == f"\\boxed{{{answer}}}"
            for line in lines[:-1]:
                assert eval(line) == answer
            assert not row["extra_info"]["careless"] and row["extra_info"]["careless_decisions"] == [False] * products
            assert [k for _, k in data.toy_decisions(question, row["extra_info"]["solution"])] == ["careful"] * products


def test_toy_products_teacher_slips_at_each_decision_on_its_own():
    careful = data.toy_rows("train", 3000, seed=2, task="products", products=3)
    mixed = data.toy_rows("train", 3000, seed=2, task="products", products=3, careless_share=0.4)
    assert [r["prompt"] for r in mixed] == [r["prompt"] for r in careful]
    assert [r["reward_model"] for r in mixed] == [r["reward_model"] for r in careful]
    flags = [r["extra_info"]["careless_decisions"] for r in mixed]
    # every decision slips with probability 0.4, independently of the others
    for k in range(3):
        assert 0.37 < sum(f[k] for f in flags) / len(flags) < 0.43
    for j, k in [(0, 1), (0, 2), (1, 2)]:
        assert 0.14 < sum(f[j] and f[k] for f in flags) / len(flags) < 0.18
    assert 0.19 < sum(not any(f) for f in flags) / len(flags) < 0.24  # 0.6 ** 3 = 0.216 all careful
    wrong = 0
    for row, f in zip(mixed, flags):
        question, solution = row["prompt"][0]["content"], row["extra_info"]["solution"]
        assert row["extra_info"]["careless"] == any(f)
        # the decisions the solution took are the teacher's draws, line by line
        assert [k == "slip" for _, k in data.toy_decisions(question, solution)] == f
        # a slip reads "x+b*c" as "(x+b)*c": replay that by hand, independently of toy_solution
        lines = solution.split("\n")
        previous = question
        for line in lines[:-1]:
            m = re.match(r"(-?\d+)([+-])(\d+)\*(\d+)(.*)", previous)
            slipped = m and line == f"{eval(m[1] + m[2] + m[3])}*{m[4]}{m[5]}"
            if not slipped:
                assert eval(line) == eval(previous)  # any other line keeps the value
            previous = line
        right = lines[-1] == f"\\boxed{{{row['reward_model']['ground_truth']}}}"
        assert right or any(f)
        wrong += not right
    # a slip leaves the value alone only when the product's right operand is 1 (or by chance)
    assert 0.8 < wrong / sum(any(f) for f in flags) < 0.95


def test_toy_decisions_judge_each_line_against_the_one_before():
    question = "5+4*6-3*2"  # careful: 5+24-3*2 / 29-3*2 / 29-6 / boxed 23
    assert data.toy_decisions(question, "5+24-3*2\n29-3*2\n29-6\n\\boxed{23}") == [(0, "careful"), (2, "careful")]
    assert data.toy_decisions(question, "9*6-3*2\n54-3*2\n51*2\n\\boxed{102}") == [(0, "slip"), (2, "slip")]
    assert data.toy_decisions(question, "5+25-3*2\n30-3*2\n30-6\n\\boxed{24}") == [(0, "neither"), (2, "careful")]
    assert data.toy_decisions(question, "5+24-3*2\nhmm\n29-6") == [(0, "careful")]  # stops at a non-expression
    assert data.toy_decisions(question, "") == [(0, "neither")]
    assert data.toy_decisions("6*4+5", "24+5\n\\boxed{29}") == []  # a product first: no decision
    with pytest.raises(ValueError, match="task"):
        data.toy_rows("train", 5, task="chains")


def test_toy_rows_to_problems_and_sft_chats(tok):
    rows = data.toy_rows("test", 50, seed=3)
    problems, dropped = data.rows_to_problems(rows, tok, source="toy-test")
    assert dropped == 0 and len(problems) == 50
    for row, p in zip(rows, problems):
        question = row["prompt"][0]["content"]
        assert p.prompt_text == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        assert tok.decode(p.prompt_ids) == p.prompt_text
        assert (p.ability, p.data_source) == ("math", "toy_arithmetic")
        assert p.ground_truth == row["reward_model"]["ground_truth"]
    assert problems[7].id == "toy-test:7"

    # SFT: the same prompt, then the solution and the end-of-turn token are the trained tokens
    stop_ids = set(data.stop_token_ids(tok))
    for row, p, chat in zip(rows, problems, data.toy_chats(rows)):
        ids, loss = data.tokenize_chat(tok, chat, stop_ids)
        n = len(p.prompt_ids)
        assert ids[:n] == p.prompt_ids and loss == [0] * n + [1] * (len(ids) - n)
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[n:-1]) == row["extra_info"]["solution"]
    with pytest.raises(ValueError, match="row 0.*solution"):
        data.toy_chats([{"prompt": rows[0]["prompt"], "extra_info": {}}])


def test_toy_answers_pass_the_verifier():
    import verify
    for row in data.toy_rows("train", 30, seed=5, steps=3, max_operand=9):
        truth = row["reward_model"]["ground_truth"]
        assert verify.math_correct(row["extra_info"]["solution"], truth)
        assert not verify.math_correct(f"\\boxed{{{int(truth) + 1}}}", truth)


# --- Eurus-2-RL-Data from parquet ----------------------------------------------------------------


def eurus_row(question, ability="math", truth="3", source="numina_olympiads"):
    return {"data_source": source,
            "prompt": [{"role": "system", "content": "Be careful."}, {"role": "user", "content": question}],
            "ability": ability, "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "dummy", "index": 0}}


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def test_load_rl_data(tok, tmp_path):
    tests = json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]})
    first = write_parquet(tmp_path / "a.parquet", [
        eurus_row("What is 1+2?" + data.MATH_SUFFIX),
        eurus_row("x" * 200),  # too long after the template
        eurus_row("Add one." + data.CODE_SUFFIX, ability="code", truth=tests, source="apps"),
    ])
    second = write_parquet(tmp_path / "b.parquet", [eurus_row("What is 2+2?", truth="4")])
    problems, dropped = data.load_rl_data([first, second], tok, max_prompt_tokens=150)
    assert dropped == 1
    assert [p.id for p in problems] == [f"{first}:0", f"{first}:2", f"{second}:0"]
    assert [p.ability for p in problems] == ["math", "code", "math"]
    assert [p.ground_truth for p in problems] == ["3", tests, "4"]
    assert problems[1].data_source == "apps"
    messages = eurus_row("What is 1+2?" + data.MATH_SUFFIX)["prompt"]
    assert problems[0].prompt_ids == data.tokenize_prompt(tok, messages)
    assert all(len(p.prompt_ids) <= 150 for p in problems)

    everything, none_dropped = data.load_rl_data(first, tok, max_prompt_tokens=1000)  # one path
    assert none_dropped == 0 and len(everything) == 3


def test_load_rl_data_missing_file_and_column(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.parquet"):
        data.load_rl_data(str(tmp_path / "nowhere.parquet"), tok, 100)
    row = eurus_row("q")
    del row["ability"]
    path = write_parquet(tmp_path / "no_ability.parquet", [row])
    with pytest.raises(ValueError, match=r"no_ability\.parquet.*missing column.*'ability'"):
        data.load_rl_data(path, tok, 100)


def _bad(field, value):
    row = eurus_row("q")
    if field == "ground_truth":
        row["reward_model"] = {"style": "rule", "ground_truth": value}
    else:
        row[field] = value
    return row


@pytest.mark.parametrize("bad_row,field", [
    (_bad("ability", "physics"), "ability"),
    (_bad("ground_truth", ""), "reward_model.ground_truth"),
    (_bad("ground_truth", None), "reward_model.ground_truth"),
    (_bad("prompt", [{"role": "user", "content": None}]), "prompt"),
    (_bad("prompt", [{"role": "narrator", "content": "q"}]), "prompt"),
    (_bad("data_source", None), "data_source"),
])
def test_load_rl_data_malformed_row(tok, tmp_path, bad_row, field):
    path = write_parquet(tmp_path / "bad.parquet", [eurus_row("a"), eurus_row("b"), bad_row])
    with pytest.raises(ValueError) as error:
        data.load_rl_data(path, tok, 100)
    message = str(error.value)
    assert path in message and "row 2" in message and f"field {field!r}" in message


def test_load_rl_data_prompt_not_a_chat(tok, tmp_path):
    row = eurus_row("q")
    row["prompt"] = "just a string"
    path = write_parquet(tmp_path / "string_prompt.parquet", [row])
    with pytest.raises(ValueError, match=r"string_prompt\.parquet: row 0, field 'prompt'"):
        data.load_rl_data(path, tok, 100)


# --- benchmark files -----------------------------------------------------------------------------


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
