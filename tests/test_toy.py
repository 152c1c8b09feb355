"""toy/task.py: the toy tokenizer and model config, the problems, the teachers, the held-out split,
the habit counters."""
import dataclasses
import random
import re

import pytest
import torch
from transformers import AutoTokenizer

import data
import model
import verify
from support import sft
from toy import task as toy


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return toy.build_toy_tokenizer(str(tmp_path_factory.mktemp("toy_tokenizer")))


# --- the toy tokenizer, chat template and config -------------------------------------------------


def test_toy_tokenizer_round_trip(tok):
    assert len(tok) == 96 + 3
    for ch in toy.TOY_CHARS:
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
    toy.toy_model_config(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\n7+4*6-9<|im_end|>\n<|im_start|>assistant\n7+24-9\n\\boxed{22}<|im_end|>"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text


def test_toy_model_config_builds_the_network(tok):
    config = toy.toy_model_config(tok, hidden_size=64, num_layers=2, intermediate_size=96, tie_word_embeddings=True)
    assert config.vocab_size == 128 and config.vocab_size % 64 == 0 and config.vocab_size > len(tok)
    assert (config.eos_token_id, config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert config.tie_word_embeddings and config.num_key_value_heads == 2
    net = model.Qwen2ForCausalLM(config)
    model.init_weights(net)
    ids = torch.tensor([data.tokenize_prompt(tok, [{"role": "user", "content": "1+2"}])])
    assert net(ids).shape == (1, ids.shape[1], 128)
    assert toy.toy_model_config(tok).hidden_size == 128


# --- the toy task --------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,max_operand,ops", [(1, 9, "+-*"), (3, 9, "+-*"), (5, 30, "+-*"), (4, 99, "+-")])
def test_toy_answers_and_solutions_are_correct(steps, max_operand, ops):
    for split in ("train", "test"):
        for row in toy.toy_rows(split, 40, seed=1, steps=steps, max_operand=max_operand, ops=ops):
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
    careful = toy.toy_rows("train", 400, seed=2)
    mixed = toy.toy_rows("train", 400, seed=2, careless_share=0.6)
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
        toy.toy_rows("train", 5, careless_share=1.5)


def test_toy_first_step_names_the_teacher_of_the_first_line():
    careful, _ = toy.toy_solution([5, 4, 6, 3], ["+", "*", "-"])  # 5+24-3 / 29-3 / boxed 26
    careless, _ = toy.toy_solution([5, 4, 6, 3], ["+", "*", "-"], careless=True)  # 9*6-3 / ...
    assert toy.toy_first_step("5+4*6-3", careful) == "careful"
    assert toy.toy_first_step("5+4*6-3", careless) == "careless"
    assert toy.toy_first_step("5+4*6-3", "5+4*6-3\n\\boxed{26}") == "neither"
    assert toy.toy_first_step("5+4*6-3", "") == "neither"
    # "*" first, or no "*" at all: both teachers start alike, whatever the response says
    assert toy.toy_first_step("6*4+5", "24+5") == "either"
    assert toy.toy_first_step("3-5+2", "nonsense") == "either"


def test_toy_splits_never_overlap_and_are_deterministic():
    train = [r["prompt"][0]["content"] for r in toy.toy_rows("train", 3000, seed=0, steps=2, max_operand=9)]
    test = [r["prompt"][0]["content"] for r in toy.toy_rows("test", 1000, seed=0, steps=2, max_operand=9)]
    other_seed = [r["prompt"][0]["content"] for r in toy.toy_rows("train", 3000, seed=7, steps=2, max_operand=9)]
    assert len(set(train)) == 3000 and len(set(test)) == 1000  # distinct within a split
    assert not set(train) & set(test) and not set(other_seed) & set(test)
    assert all(toy.toy_split_of(q) == "train" for q in train) and all(toy.toy_split_of(q) == "test" for q in test)

    again = toy.toy_rows("test", 1000, seed=0, steps=2, max_operand=9)
    assert [r["prompt"][0]["content"] for r in again] == test
    assert [r["extra_info"]["index"] for r in again] == list(range(1000))
    assert other_seed != train
    assert [r["prompt"][0]["content"] for r in toy.toy_rows("test", 10, seed=0, steps=2, max_operand=9)] == test[:10]


def test_toy_rows_errors():
    with pytest.raises(ValueError, match="distinct"):  # 1+1, 1+2, 2+1, 2+2: too few problems
        toy.toy_rows("train", 10, steps=1, max_operand=2, ops="+")
    with pytest.raises(ValueError, match="split"):
        toy.toy_rows("val", 10)
    with pytest.raises(ValueError, match="ops"):
        toy.toy_rows("train", 10, ops="/")


@pytest.mark.parametrize("products,max_operand", [(1, 6), (3, 6), (4, 9)])
def test_toy_products_answers_and_careful_solutions(products, max_operand):
    for split in ("train", "test"):
        for row in toy.toy_rows(split, 40, seed=1, task="products", products=products, max_operand=max_operand):
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
            assert [k for _, k in toy.toy_decisions(question, row["extra_info"]["solution"])] == ["careful"] * products


def test_toy_products_teacher_slips_at_each_decision_on_its_own():
    careful = toy.toy_rows("train", 3000, seed=2, task="products", products=3)
    mixed = toy.toy_rows("train", 3000, seed=2, task="products", products=3, careless_share=0.4)
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
        assert [k == "slip" for _, k in toy.toy_decisions(question, solution)] == f
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
    assert toy.toy_decisions(question, "5+24-3*2\n29-3*2\n29-6\n\\boxed{23}") == [(0, "careful"), (2, "careful")]
    assert toy.toy_decisions(question, "9*6-3*2\n54-3*2\n51*2\n\\boxed{102}") == [(0, "slip"), (2, "slip")]
    assert toy.toy_decisions(question, "5+25-3*2\n30-3*2\n30-6\n\\boxed{24}") == [(0, "neither"), (2, "careful")]
    assert toy.toy_decisions(question, "5+24-3*2\nhmm\n29-6") == [(0, "careful")]  # stops at a non-expression
    assert toy.toy_decisions(question, "") == [(0, "neither")]
    assert toy.toy_decisions("6*4+5", "24+5\n\\boxed{29}") == []  # a product first: no decision
    with pytest.raises(ValueError, match="task"):
        toy.toy_rows("train", 5, task="chains")


def test_toy_rows_to_problems_and_sft_chats(tok):
    rows = toy.toy_rows("test", 50, seed=3)
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
    for row, p, chat in zip(rows, problems, toy.toy_chats(rows)):
        ids, loss = sft.tokenize_chat(tok, chat, stop_ids)
        n = len(p.prompt_ids)
        assert ids[:n] == p.prompt_ids and loss == [0] * n + [1] * (len(ids) - n)
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[n:-1]) == row["extra_info"]["solution"]
    with pytest.raises(ValueError, match="row 0.*solution"):
        toy.toy_chats([{"prompt": rows[0]["prompt"], "extra_info": {}}])


def test_toy_answers_pass_the_verifier():
    import verify
    for row in toy.toy_rows("train", 30, seed=5, steps=3, max_operand=9):
        truth = row["reward_model"]["ground_truth"]
        assert verify.math_correct(row["extra_info"]["solution"], truth)
        assert not verify.math_correct(f"\\boxed{{{int(truth) + 1}}}", truth)


# --- the held-out split and the habit counters ------------------------------------------------


def held_out(tok, n):
    return toy.held_out_problems(toy.ToyConfig(), tok, toy.PRESET["max_prompt_tokens"], n)


def test_toy_openings_count_first_lines_and_their_scores(tok):
    problems = held_out(tok, 40)
    rows = toy.toy_rows("test", 40, seed=0)
    records, expected = [], {}
    for problem, row in zip(problems, rows):
        question = row["prompt"][0]["content"]
        numbers, ops = [int(n) for n in re.findall(r"\d+", question)], re.findall(r"[+\-*]", question)
        for careless in (False, True):
            response, answer = toy.toy_solution(numbers, ops, careless=careless)
            score = int(answer == int(row["reward_model"]["ground_truth"]))
            records.append({"id": problem.id, "response": response, "score": score})
            kind = toy.toy_first_step(question, response)
            n, right = expected.get(kind, (0, 0))
            expected[kind] = (n + 1, right + score)
    openings = toy.openings(records, rows)
    assert {k: (o["responses"], o["right"]) for k, o in openings.items()} == expected
    assert set(openings) == {"either", "careful", "careless"}  # 40 problems hold both kinds
    assert openings["careful"]["responses"] == openings["careless"]["responses"]
    assert openings["careful"]["right"] == openings["careful"]["responses"]  # the careful teacher is right


def test_toy_decision_counts_count_every_decision(tok):
    config = toy.ToyConfig(toy_task="products", toy_products=3)
    rows = toy.test_rows(config, 30)
    problems = toy.held_out_problems(config, tok, 64, 30)
    records = []
    for problem, row in zip(problems, rows):
        question = row["prompt"][0]["content"]
        numbers = [int(n) for n in re.findall(r"\d+", question)]
        ops = re.findall(r"[+\-*]", question)
        for slips in ([], [False, True], [True, True, True]):  # 3, 2 and 0 careful decisions
            response, answer = toy.toy_solution(numbers, ops, slips=slips)
            records.append({"id": problem.id, "response": response,
                            "score": int(answer == int(row["reward_model"]["ground_truth"]))})
        records.append({"id": problem.id, "response": "nonsense", "score": 0})  # meets its first decision
    habits = toy.decision_counts(records, rows)
    assert habits["careful"] == {"decisions": 30 * (3 + 2)} and habits["slip"] == {"decisions": 30 * (1 + 3)}
    assert habits["neither"] == {"decisions": 30}
    assert habits["all careful"] == {"responses": 30, "right": 30}


# --- the toy for other trainers, and its exported model in transformers --------------------------


def test_dataset_and_reward_for_other_trainers_are_train_pys(tok):
    from toy.for_trainers import dataset, reward
    cfg = toy.ToyConfig()
    rows = toy.toy_rows("train", 20, seed=3, **cfg.row_args())
    ds = dataset("train", 20, seed=3)
    assert ds.column_names == ["prompt", "ground_truth", "id"] and len(ds) == 20
    problems = toy.train_problems(dataclasses.replace(cfg, toy_train_problems=20), tok, 3, 64)
    for row, problem in zip(ds, problems):  # the chat a trainer renders is train.py's prompt
        assert data.tokenize_prompt(tok, row["prompt"]) == problem.prompt_ids
        assert row["ground_truth"] == problem.ground_truth
    # the reward of decoded responses is train.py's (verify.score_responses on token ids)
    responses = [tok(row["extra_info"]["solution"] + ("" if k % 3 else "\n\\boxed{0}"),
                     add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for k, row in enumerate(rows)]
    texts, ours = verify.score_responses(tok, problems, responses)
    assert reward(texts, ds["ground_truth"]) == ours and 0 < sum(ours) < len(ours)
    assert reward([[{"role": "assistant", "content": t}] for t in texts], ds["ground_truth"]) == ours


def test_an_exported_toy_model_generates_in_transformers_as_in_our_sampler(tok, tmp_path):
    """The export's generation_config.json: both end-of-turn ids end a response in transformers
    too, and the embedding's padding ids (99 tokens in 128 rows) are never drawn. The padding rows
    of the head are made to dominate, so that a sampler that does not suppress them picks them."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    import rollout
    from support.checkpoint import export
    from tests.tiny import toy_network
    net = toy_network(tok, 128, seed=4)
    with torch.no_grad():
        net.lm_head.weight[len(tok):] = 3 * net.lm_head.weight[:len(tok)].abs().max()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        export(net, tok, str(tmp_path / "export"), bf16=False)
    finally:
        dist.destroy_process_group()
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32).eval()
    prompts = [data.tokenize_prompt(tok, [{"role": "user", "content": q}]) for q in ("1+2*3", "4*4-2", "6-1+5")]
    ours = rollout.generate(net, prompts, 24, data.stop_token_ids(tok), temperature=0, vocab_size=len(tok))
    for prompt, response in zip(prompts, ours):
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
        assert out.tolist() == response  # the same tokens, stopped at the same end-of-turn id
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = theirs.generate(torch.tensor([prompts[0]] * 16), max_new_tokens=24, do_sample=True)
    assert int(sampled.max()) < len(tok)
    # without the generation config's suppression, transformers draws the padding ids
    theirs.generation_config.suppress_tokens = None
    with torch.no_grad():
        unsuppressed = theirs.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False)
    assert int(unsuppressed[0, len(prompts[0]):].max()) >= len(tok)
