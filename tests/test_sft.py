"""The SFT stage on chat data (train.py --stage=sft --model_path=BASE --sft_files=...): chat rows
in both conventions, the assistant-only loss mask checked by hand against the template, the loss
falling, exact resume, the export loading in transformers and starting a PRIME run, and clear
errors for malformed rows. A tiny random base model with the toy's ChatML tokenizer."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import data
import model as M
from support import sft
from tests.test_train import run_train
from tests.tiny import save_toy_checkpoint, toy_network
from toy import task as toy

CHATS = [  # (question, answer): answers the tiny model can learn to repeat
    ("What is 2+3?", "2+3 = 5"), ("What is 4*4?", "4*4 = 16"), ("Say hi.", "hi"), ("What is 9-2?", "9-2 = 7"),
    ("Name a vowel.", "a"), ("What is 1+1?", "1+1 = 2"), ("Count to 3.", "1 2 3"), ("What is 6/3?", "6/3 = 2"),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return toy.build_toy_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random base model (a Hugging Face folder with the toy tokenizer)."""
    folder = tmp_path_factory.mktemp("base")
    tokenizer = toy.build_toy_tokenizer(str(folder / "tokenizer"))
    return save_toy_checkpoint(folder / "base", toy_network(tokenizer, 256, heads=4, kv_heads=2, std=0.02), tokenizer)


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    """The same chats in both conventions: JSONL `messages` (role/content) and parquet
    `conversations` (from/value) with a `system` column."""
    folder = tmp_path_factory.mktemp("chats")
    jsonl = folder / "chats.jsonl"
    with open(jsonl, "w") as f:
        for q, a in CHATS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    parquet = str(folder / "chats.parquet")
    pq.write_table(pa.Table.from_pylist([{"system": "Be brief.", "conversations": [
        {"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in CHATS]), parquet)
    return str(jsonl), parquet


def test_both_conventions_give_the_same_chat(tok):
    messages = sft.chat_messages({"messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "yo"}]}, "f: row 0")
    sharegpt = sft.chat_messages({"system": "Be brief.", "conversations": [{"from": "human", "value": "hi"},
                                                                            {"from": "gpt", "value": "yo"}]}, "f: row 0")
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert sharegpt == [{"role": "system", "content": "Be brief."}, *messages]


def test_only_the_assistants_tokens_carry_loss_checked_by_hand(tok):
    """ChatML renders [system, user, assistant, user, assistant] as
    <|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\nQ1<|im_end|>\\n<|im_start|>assistant\\nA1<|im_end|>\\n
    <|im_start|>user\\nQ2<|im_end|>\\n<|im_start|>assistant\\nA2<|im_end|>\\n; the character tokenizer
    makes one token per character. Trained: A1<|im_end|> and A2<|im_end|>, nothing else; the
    trailing newline is cut."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2"}]
    ids, loss = sft.tokenize_chat(tok, messages, set(data.stop_token_ids(tok)))
    pieces = ["<|im_start|>", "s", "y", "s", "t", "e", "m", "\n", "S", "<|im_end|>", "\n",
              "<|im_start|>", "u", "s", "e", "r", "\n", "Q", "1", "<|im_end|>", "\n",
              "<|im_start|>", "a", "s", "s", "i", "s", "t", "a", "n", "t", "\n", "A", "1", "<|im_end|>", "\n",
              "<|im_start|>", "u", "s", "e", "r", "\n", "Q", "2", "<|im_end|>", "\n",
              "<|im_start|>", "a", "s", "s", "i", "s", "t", "a", "n", "t", "\n", "A", "2", "<|im_end|>"]
    assert [tok.decode([i]) for i in ids] == pieces
    trained = [p for p, k in zip(pieces, loss) if k]
    assert trained == ["A", "1", "<|im_end|>", "A", "2", "<|im_end|>"]
    first = pieces.index("A")
    assert loss[first - 1] == 0 and loss[first:first + 3] == [1, 1, 1] and loss[first + 3] == 0


@pytest.mark.parametrize("row, field, why", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages",
     "unknown role 'wizard'"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]}, "conversations",
     "empty content"),
    ({"conversations": [{"from": "gpt", "value": "yo"}]}, "conversations", "open with a system or user turn"),
    ({"text": "hi"}, None, "no chat column"),
])
def test_a_malformed_row_names_file_row_and_field(tmp_path, tok, row, field, why):
    path = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError) as error:
        sft.load_sft_data([str(path)], tok, 256)
    message = str(error.value)
    assert f"{path}: row 1" in message and why in message and (field is None or f"field {field!r}" in message)


def sft_args(base, files, out, extra=()):
    return ["--stage=sft", f"--model_path={base}", f"--sft_files={','.join(files)}", f"--out_dir={out}",
            "--sft_batch=8", "--sft_lr=1e-2", "--sft_warmup=0.1", "--micro_batch_tokens=96", "--sft_save_every=3",
            *extra]


def test_sft_learns_resumes_exactly_and_exports_a_model_prime_can_start_from(base, chat_files, tmp_path):
    out = tmp_path / "run"
    first = run_train(sft_args(base, chat_files, out, ["--sft_epochs=5"]), tmp_path)
    assert first.returncode == 0, first.describe()
    assert "SFT data: 16 chats (0 longer than 256 tokens dropped)" in first.stdout, first.describe()
    with open(out / "sft_metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, 11)) and [r["epoch"] for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert all(r["tokens_per_second"] > 0 and r["lr"] > 0 for r in rows)
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], [r["loss"] for r in rows]

    # The export: a Hugging Face folder with the tokenizer; transformers computes our logits.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    export = out / "sft"
    ours, theirs = M.load_model(str(export)), AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32)
    x = torch.tensor([data.tokenize_prompt(AutoTokenizer.from_pretrained(str(export)),
                                           [{"role": "user", "content": "What is 2+3?"}])])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).logits, atol=1e-4, rtol=1e-4)

    # A kill after step 9's checkpoint (step 10's never completed): the re-run redoes step 10
    # exactly and exports the same weights.
    weights = (export / "model.safetensors").read_bytes()
    assert sorted(os.listdir(out / "sft_checkpoints")) == ["step_000009", "step_000010"]
    os.remove(out / "sft_checkpoints" / "step_000010" / "COMPLETE")
    second = run_train(sft_args(base, chat_files, out, ["--sft_epochs=5"]), tmp_path)
    assert second.returncode == 0, second.describe()
    assert "resuming from" in second.stdout and "(step 9 done)" in second.stdout, second.describe()
    with open(out / "sft_metrics.jsonl") as f:
        again = [json.loads(line) for line in f]
    assert [r["step"] for r in again] == list(range(1, 11))
    for a, b in zip(rows, again):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    assert (export / "model.safetensors").read_bytes() == weights

    # The SFT model starts a PRIME run (the toy task, its tokenizer is the base's).
    prime = run_train([f"--model_path={export}", f"--out_dir={tmp_path / 'prime'}", "--steps=1",
                       "--prompts_per_step=4", "--prm_mini_batch=8", "--policy_mini_batch=8", "--max_response_tokens=16",
                       "--eval_problems=8", "--toy_train_problems=100", "--filter_low=0", "--filter_high=1"], tmp_path)
    assert prime.returncode == 0, prime.describe()


def test_sft_counts_over_long_chats_and_rejects_bad_input(base, chat_files, tok, tmp_path):
    # the parquet chats carry a system turn: a limit between the two files' lengths drops them all
    plain, with_system = ([len(ids) for ids, _ in sft.load_sft_data([f], tok, 10 ** 6)[0]] for f in chat_files)
    limit = max(plain)
    assert limit < min(with_system)
    out = tmp_path / "run"
    run = run_train(sft_args(base, chat_files, out, ["--sft_epochs=1", f"--sft_max_tokens={limit}"]), tmp_path)
    assert run.returncode == 0 and f"SFT data: 8 chats (8 longer than {limit} tokens dropped)" in run.stdout, \
        run.describe()
    missing = run_train(sft_args(base, [str(tmp_path / "nope.jsonl")], out), tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    alone = run_train(["--stage=sft", f"--sft_files={chat_files[0]}", f"--out_dir={out}"], tmp_path)
    assert alone.returncode != 0 and "give both" in alone.stderr, alone.describe()
