"""data.py: the paper's prompts, the chat template, Eurus-2-RL-Data from parquet, the prompt stream."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
from toy import task as toy


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return toy.build_toy_tokenizer(str(tmp_path_factory.mktemp("toy_tokenizer")))


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


# --- the chat template ---------------------------------------------------------------------------


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
