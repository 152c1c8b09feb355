"""train.py end to end on the CPU (gloo): two ranks run PRIME iterations of a tiny config, resume
continues where a run stopped (ignoring a checkpoint whose save was cut off), the filter/refill
loop survives ranks that fill their quota in different rounds (and stops cleanly when nothing can
fill a step), a malformed data row is reported by file/row/field, and the eurus preset prints the
paper's recipe. train.py runs as a subprocess (`python train.py` or torchrun), as users run it;
PromptStream and micro_batches are also checked in-process.

Everything is tiny (a 1-layer, 32-wide model, 16-token responses, 4 prompts per step) so the whole
file takes well under a few minutes on a 2-core machine. One toy SFT checkpoint is trained once per
module and passed to every run with --model_path.
"""

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import data
import model as M
import train
from support import batches
from toy import task as toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds per subprocess: a hang fails the test instead of blocking CI

# The tiny shape every run shares (the SFT checkpoint's max_position_embeddings is
# max_prompt_tokens + max_response_tokens, so PRIME runs must not ask for longer responses).
TINY = ["--toy_hidden=32", "--toy_layers=1", "--sft_problems=64", "--sft_epochs=1", "--sft_batch=16",
        "--toy_train_problems=200", "--eval_problems=16", "--prompts_per_step=4", "--prm_mini_batch=8",
        "--policy_mini_batch=8", "--max_response_tokens=16", "--micro_batch_tokens=512"]
KEEP_ALL = ["--filter_low=0", "--filter_high=1"]  # an untrained model scores ~0: keep every group

# The keys of every metrics.jsonl line (support/metrics.py).
METRIC_KEYS = ["step", "outcome_accuracy", "kept_share", "prm_loss", "prm_accuracy", "process_reward_mean",
               "process_reward_std", "advantage_abs_mean", "policy_loss", "clip_frac", "approx_kl", "entropy",
               "response_length_mean", "response_length_max", "truncation_rate", "seconds_collect",
               "seconds_old_logprobs", "seconds_prm", "seconds_policy", "tokens_per_second"]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def parse(argv):
    """train.Config from a command line, as train.py resolves it."""
    return train.settings(argv)[0]


class Run:
    def __init__(self, cmd, returncode, stdout, stderr):
        self.cmd, self.returncode, self.stdout, self.stderr = cmd, returncode, stdout, stderr

    @property
    def output(self):
        return self.stdout + "\n" + self.stderr

    def describe(self, chars=6000):
        text = f"$ {' '.join(self.cmd)}\nexit code {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        return text if len(text) <= chars else "...\n" + text[-chars:]


def run_train(args, tmp_path, ranks=1, timeout=TIMEOUT, script="train.py"):
    """Run `script` (train.py unless told) with `args` from the repo root, one process or `ranks`
    torchrun ranks (gloo); return a Run with the captured output. A run past `timeout` is killed
    (its whole process group: torchrun's workers too) and the test fails with what it printed."""
    if ranks == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               script, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf_datasets_cache"), CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{script} did not finish within {timeout}s (hang?)\n"
                    + Run(cmd, None, stdout, stderr).describe())
    return Run(cmd, process.returncode, stdout, stderr)


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_names(out_dir):
    root = os.path.join(out_dir, "checkpoints")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def eurus_row(question, truth, ability="math"):
    """A row of the Eurus-2-RL-Data schema (bare user turn, as the toy rows)."""
    return {"data_source": "numina_olympiads", "prompt": [{"role": "user", "content": question}],
            "ability": ability, "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "train", "index": 0}}


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """One toy SFT checkpoint (train.py --stage=sft), shared by every PRIME run of this module."""
    out = tmp_path_factory.mktemp("sft_run")
    run = run_train([*TINY, "--stage=sft", f"--out_dir={out}"], out)
    assert run.returncode == 0, run.describe()
    path = out / "sft"
    assert (path / "config.json").exists() and (path / "tokenizer_config.json").exists(), run.describe()
    assert not (out / "metrics.jsonl").exists(), "stage=sft must stop after SFT\n" + run.describe()
    return str(path)


# ----------------------------------------------------------------------------------------------
# 1. two ranks, two full PRIME iterations, end to end
# ----------------------------------------------------------------------------------------------

def test_two_ranks_two_iterations_end_to_end(sft_model, tmp_path):
    out = tmp_path / "run"
    # KEEP_ALL's filter keeps every group, so one sampling round fills each step: a run allowed
    # a single round must not report the step unfilled.
    run = run_train([*TINY, *KEEP_ALL, f"--model_path={sft_model}", f"--out_dir={out}", "--steps=2",
                     "--max_collect_rounds=1"], tmp_path, ranks=2)
    assert run.returncode == 0, run.describe()
    assert "batch: 4 prompts x 4 samples = 16 responses per step (8 per rank on 2 ranks)" in run.stdout, \
        run.describe()

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2], run.describe()
    for r in rows:
        missing = [k for k in METRIC_KEYS if k not in r]
        assert not missing, f"metrics.jsonl lacks {missing}: {r}"
        for k in METRIC_KEYS:
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]), f"{k} = {r[k]!r} in {r}"
        assert r["kept_share"] == 1.0, r  # [0, 1] keeps every group
        assert 0.0 <= r["outcome_accuracy"] <= 1.0 and 0.0 <= r["truncation_rate"] <= 1.0, r
        assert 1 <= r["response_length_mean"] <= r["response_length_max"] <= 16, r
    assert rows[0]["prm_loss"] == pytest.approx(math.log(2), abs=1e-3), \
        "at step 1 the PRM equals the reference: every implicit reward is 0, the CE loss is log 2"

    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["steps"] == 2, summary
    for key in ("eval_accuracy_start", "eval_accuracy_end"):
        assert isinstance(summary[key], float) and 0.0 <= summary[key] <= 1.0, summary
    assert summary["world_size"] == 2, summary

    # the exported policy: a Hugging Face folder with its tokenizer, the trained weights
    from transformers import AutoModelForCausalLM, AutoTokenizer
    policy_dir = str(out / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    ids = tokenizer("1+2*3=", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "1+2*3=" and tokenizer.eos_token == "<|im_end|>"
    ours = M.load_model(policy_dir).eval()
    theirs = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        logits_ours = ours(x)
        logits_theirs = theirs(x).logits
    assert logits_ours.shape == logits_theirs.shape == (1, len(ids), ours.config.vocab_size)
    torch.testing.assert_close(logits_ours, logits_theirs, atol=1e-4, rtol=1e-4)
    sft = M.load_model(sft_model)
    changed = [n for n, p in ours.state_dict().items() if not torch.equal(p, sft.state_dict()[n])]
    assert changed, "the exported policy equals the SFT model: the PRIME updates were not exported"

    # the exported PRM (an offline PRM for a later prm_update=frozen run), trained too
    assert summary["prm_path"] == str(out / "prm"), summary
    prm = M.load_model(str(out / "prm"))
    assert AutoTokenizer.from_pretrained(str(out / "prm")).eos_token == "<|im_end|>"
    changed = [n for n, p in prm.state_dict().items() if not torch.equal(p, sft.state_dict()[n])]
    assert changed, "the exported PRM equals the SFT model: the PRM updates were not exported"


# ----------------------------------------------------------------------------------------------
# 2. resume: continues at the next step, nothing repeated; an incomplete checkpoint is ignored
# ----------------------------------------------------------------------------------------------

DETERMINISTIC = ["outcome_accuracy", "kept_share", "prm_loss", "prm_accuracy", "process_reward_mean",
                 "policy_loss", "approx_kl", "response_length_mean", "truncation_rate"]


def test_resume_continues_and_ignores_an_incomplete_checkpoint(sft_model, tmp_path):
    out = tmp_path / "run"
    base = [*TINY, *KEEP_ALL, f"--model_path={sft_model}", f"--out_dir={out}", "--save_every=1"]

    first = run_train([*base, "--steps=2"], tmp_path, ranks=2)
    assert first.returncode == 0, first.describe()
    assert [r["step"] for r in read_metrics(out)] == [1, 2], first.describe()
    assert checkpoint_names(out) == ["step_000001", "step_000002"], first.describe()
    assert all((out / "checkpoints" / n / "COMPLETE").exists() for n in checkpoint_names(out))

    second = run_train([*base, "--steps=4"], tmp_path, ranks=2)
    assert second.returncode == 0, second.describe()
    assert "resuming from" in second.stdout and "step_000002" in second.stdout \
        and "(step 2 done)" in second.stdout, second.describe()
    assert "step 1/4" not in second.stdout and "step 2/4" not in second.stdout, \
        "a resumed run repeated finished steps\n" + second.describe()
    assert "step 3/4" in second.stdout and "step 4/4" in second.stdout, second.describe()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4], second.describe()
    with open(out / "summary.json") as f:
        assert json.load(f)["steps"] == 4
    assert checkpoint_names(out) == ["step_000003", "step_000004"], "keep_checkpoints=2"
    step4 = rows[3]

    # A kill in the middle of saving step 4 leaves its folder without COMPLETE: resume must fall
    # back to step 3, redo step 4 (exactly: data order, sampling seeds and states are restored)
    # and keep one line per step.
    os.remove(out / "checkpoints" / "step_000004" / "COMPLETE")
    third = run_train([*base, "--steps=5"], tmp_path, ranks=2)
    assert third.returncode == 0, third.describe()
    assert "step_000003" in third.stdout and "(step 3 done)" in third.stdout, third.describe()
    assert "step_000004 (step" not in third.stdout, third.describe()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5], \
        f"steps in metrics.jsonl: {[r['step'] for r in rows]}\n" + third.describe()
    for key in DETERMINISTIC:
        assert rows[3][key] == pytest.approx(step4[key], rel=1e-4, abs=1e-6), \
            f"step 4 redone from the step-3 checkpoint differs in {key}: {rows[3][key]} vs {step4[key]}"
    assert (out / "checkpoints" / "step_000005" / "COMPLETE").exists(), checkpoint_names(out)


def test_resume_survives_a_metrics_line_cut_off_by_a_kill(sft_model, tmp_path):
    out = tmp_path / "run"
    base = [*TINY, *KEEP_ALL, f"--model_path={sft_model}", f"--out_dir={out}", "--save_every=1"]
    first = run_train([*base, "--steps=1"], tmp_path)
    assert first.returncode == 0, first.describe()
    with open(out / "metrics.jsonl", "a") as f:  # killed while writing step 2's line
        f.write('{"step": 2, "outcome_accur')
    second = run_train([*base, "--steps=2"], tmp_path)
    assert second.returncode == 0, second.describe()
    assert [r["step"] for r in read_metrics(out)] == [1, 2], second.describe()


# ----------------------------------------------------------------------------------------------
# 3. filter/refill: ranks filling their quota in different rounds; a step that cannot be filled
# ----------------------------------------------------------------------------------------------

def constant_answer_checkpoint(path, answer="7", hidden=64):
    """A hand-set 1-layer model that answers every chat prompt with `answer` then <|im_end|>,
    whatever the question: a bigram model (attention and MLP outputs are zero, so the logits
    depend only on the current token) with "\\n" (the end of the generation prompt) -> `answer`
    -> EOS at logit 160 vs 0 for everything else, so sampling at temperature 1 is deterministic.
    Its gradients underflow to 0, so PRIME's updates do not change what it says."""
    tokenizer = toy.build_toy_tokenizer(path)
    config = toy.toy_model_config(tokenizer, hidden_size=hidden, num_layers=1, intermediate_size=hidden,
                                   max_position_embeddings=128)
    net = M.Qwen2ForCausalLM(config)
    newline, token = tokenizer.convert_tokens_to_ids(["Ċ", answer])  # byte-level BPE spells "\n" "Ċ"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.zero_()
        embed = torch.randn(config.vocab_size, hidden, generator=g)
        u = torch.linalg.qr(torch.randn(hidden, 2, generator=g))[0].T  # two orthonormal directions
        embed[newline], embed[token] = u[0] * hidden ** 0.5, u[1] * hidden ** 0.5
        net.model.embed_tokens.weight.copy_(embed)
        net.lm_head.weight[token] = 20.0 * u[0]
        net.lm_head.weight[tokenizer.eos_token_id] = 20.0 * u[1]
    M.save_model(net, path)
    tokenizer.save_pretrained(path)
    return str(path)


def simulate_collect(score_of, n, steps, world, quota, K, seed, filter_low, filter_high):
    """What collect() must do with known per-prompt scores (every one of a prompt's K samples
    scores score_of[i]): per step the kept share, the accuracy before filtering, and the rounds
    each rank needed. Uses data.PromptStream, so only the round/quota/buffer logic is restated."""
    streams = [data.PromptStream(n, seed, r, world) for r in range(world)]
    result = []
    for _ in range(steps):
        kept = [0] * world
        filled_in = [None] * world
        stats = dict(sampled=0, correct=0.0, groups=0, kept=0)
        rounds = 0
        while max(quota - k for k in kept) > 0:
            rounds += 1
            for r in range(world):
                if quota - kept[r] <= 0:
                    continue
                for i in streams[r].take(quota):
                    stats["groups"] += 1
                    stats["sampled"] += K
                    stats["correct"] += K * score_of[i]
                    if filter_low <= score_of[i] <= filter_high:
                        stats["kept"] += 1
                        if kept[r] < quota:
                            kept[r] += 1
                        else:
                            streams[r].buffer.append(i)
                if kept[r] >= quota:
                    filled_in[r] = rounds
        result.append(dict(kept_share=stats["kept"] / stats["groups"],
                           outcome_accuracy=stats["correct"] / stats["sampled"], filled_in=filled_in,
                           buffered=[len(s.buffer) for s in streams]))
    return result


def test_uneven_refill_across_ranks_does_not_hang(tmp_path):
    """Rank 0 fills its quota in the first round and then idles while rank 1 keeps sampling
    (with FSDP, sampling gathers weights collectively): the run must finish, with exactly the
    kept shares and accuracies that the quota/refill/buffer rules give."""
    ckpt = constant_answer_checkpoint(tmp_path / "says7")
    n, seed, world, quota, K = 40, 0, 2, 2, 4
    # Which prompts each rank is served first (PromptStream: seeded shuffle, rank r every 2nd).
    first0 = data.PromptStream(n, seed, 0, world).take(quota)
    first1 = data.PromptStream(n, seed, 1, world).take(6)
    wrong = set(first0) | {first1[0], first1[4], first1[5]}  # ground truth 8: the model is wrong
    wrong |= {i for i in range(n) if i % 3 == 0 and i not in first1[:6]}
    truths = ["8" if i in wrong else "7" for i in range(n)]
    score_of = [0.0 if t == "8" else 1.0 for t in truths]
    expected = simulate_collect(score_of, n, steps=2, world=world, quota=quota, K=K, seed=seed,
                                filter_low=0.0, filter_high=0.5)
    # the scenario really is uneven: rank 0 done in round 1, rank 1 in round 3, one prompt buffered
    assert expected[0]["filled_in"] == [1, 3] and expected[0]["buffered"] == [0, 1], expected

    files = write_parquet(tmp_path / "train.parquet", [eurus_row(f"Question {i}: what is it?", t)
                                                        for i, t in enumerate(truths)])
    out = tmp_path / "run"
    run = run_train([f"--train_files={files}", f"--model_path={ckpt}", f"--out_dir={out}", "--steps=2",
                     f"--seed={seed}", "--prompts_per_step=4", "--samples_per_prompt=4", "--prm_mini_batch=8",
                     "--policy_mini_batch=8", "--max_response_tokens=16", "--micro_batch_tokens=512",
                     "--filter_low=0", "--filter_high=0.5", "--max_collect_rounds=10"], tmp_path, ranks=2)
    assert run.returncode == 0, run.describe()
    assert "train data: 40 prompts" in run.stdout, run.describe()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2], run.describe()
    for row, want in zip(rows, expected):
        assert row["kept_share"] == pytest.approx(want["kept_share"]), (row, want)
        assert row["outcome_accuracy"] == pytest.approx(want["outcome_accuracy"]), (row, want)
        assert math.isfinite(row["prm_loss"]) and math.isfinite(row["policy_loss"]), row
        assert row["response_length_mean"] == 2.0, row  # "7" + <|im_end|>: the model did not drift


def test_a_step_that_cannot_be_filled_stops_with_a_message(sft_model, tmp_path):
    """An untrained toy model scores ~0, so no group reaches a mean outcome of 0.9: after
    max_collect_rounds the run must exit non-zero with a message that names the cause, on every rank."""
    out = tmp_path / "run"
    run = run_train([*TINY, f"--model_path={sft_model}", f"--out_dir={out}", "--steps=2",
                     "--filter_low=0.9", "--filter_high=1", "--max_collect_rounds=3"], tmp_path, ranks=2)
    assert run.returncode != 0, run.describe()
    assert "3 sampling rounds could not fill step 1" in run.output, run.describe()
    assert not (out / "metrics.jsonl").exists() or not read_metrics(out), run.describe()


# ----------------------------------------------------------------------------------------------
# 4. a malformed data row: an error naming the file, the row and the field
# ----------------------------------------------------------------------------------------------

def test_malformed_row_names_file_row_and_field(sft_model, tmp_path):
    good = [eurus_row(f"What is {i}+1?", str(i + 1)) for i in range(2)]
    bad = eurus_row("Write me a sonnet.", "roses", ability="poetry")
    path = write_parquet(tmp_path / "bad_rows.parquet", good + [bad] + good)
    run = run_train([f"--train_files={path}", f"--model_path={sft_model}", f"--out_dir={tmp_path / 'run'}",
                     "--steps=1", "--prompts_per_step=4", "--prm_mini_batch=8", "--policy_mini_batch=8"],
                    tmp_path)
    assert run.returncode != 0, run.describe()
    assert f"{path}: row 2, field 'ability'" in run.output and "poetry" in run.output, run.describe()


def test_prompt_that_is_not_a_chat_names_file_row_and_field(sft_model, tmp_path):
    row = eurus_row("q", "1")
    row["prompt"] = "What is 1+1? (a plain string, not a list of messages)"
    path = write_parquet(tmp_path / "string_prompt.parquet", [row])
    run = run_train([f"--train_files={path}", f"--model_path={sft_model}", f"--out_dir={tmp_path / 'run'}",
                     "--steps=1", "--prompts_per_step=4", "--prm_mini_batch=8", "--policy_mini_batch=8"],
                    tmp_path)
    assert run.returncode != 0, run.describe()
    assert f"{path}: row 0, field 'prompt'" in run.output, run.describe()


# ----------------------------------------------------------------------------------------------
# 5. the configuration: the eurus preset's recipe, overrides, errors
# ----------------------------------------------------------------------------------------------

# The recipe's numbers live in train.PRESETS; docs/notes.md §6 states them with their sources.
# Each row of that table must hold (among its numbers) the values of these fields.
NOTES_RECIPE_ROWS = {
    "beta": ["beta"], "prompt / response length": ["max_prompt_tokens", "max_response_tokens"],
    "sampling": ["temperature", "top_p", "samples_per_prompt"],
    "batch": ["prompts_per_step", "samples_per_prompt", "policy_mini_batch", "prm_mini_batch"],
    "policy optimiser": ["policy_lr", "policy_weight_decay", "policy_grad_clip"],
    "PRM optimiser": ["prm_lr", "prm_weight_decay", "prm_grad_clip"], "gamma (process / outcome)": ["gamma"],
    "PPO clip eps / epochs": ["clip_eps", "ppo_epochs"], "length of the run": ["steps"], "validation": ["eval_every"],
}
NOTES_SFT_ROWS = {"SFT model": ["sft_lr", "sft_warmup", "sft_batch", "sft_epochs", "seed"]}  # preset eurus2-7b-sft


def test_the_eurus_presets_are_the_recipes_of_the_notes(tmp_path):
    """--print_config of the two presets against docs/notes.md §6 (and §5's filter): one source of
    the numbers (PRESETS), the notes citing the paper and the official code for each."""
    import re
    configs = {}
    for preset in ("eurus2-7b-prime", "eurus2-7b-sft"):
        run = run_train(["--print_config", f"--preset={preset}"], tmp_path, timeout=120)
        assert run.returncode == 0, run.describe()
        try:
            configs[preset] = json.loads(run.stdout)
        except json.JSONDecodeError:
            pytest.fail("--print_config did not print (only) JSON on stdout\n" + run.describe())
    config = configs["eurus2-7b-prime"]
    assert set(config) == {f.name for section in train.SECTIONS for f in dataclasses.fields(section)}
    with open(os.path.join(ROOT, "docs/notes.md")) as f:
        notes = f.read()
    recipe = notes.split("## §6.")[1].split("## §7.")[0]
    table = {cells[1].strip(): cells[2] for cells in (line.split("|") for line in recipe.splitlines())
             if len(cells) > 3}
    for preset, rows in (("eurus2-7b-prime", NOTES_RECIPE_ROWS), ("eurus2-7b-sft", NOTES_SFT_ROWS)):
        for row, fields in rows.items():
            numbers = {float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", table[row])}
            missing = [f"{field}={configs[preset][field]}" for field in fields
                       if float(configs[preset][field]) not in numbers]
            assert not missing, f"docs/notes.md §6 row {row!r} lacks {preset}'s {missing}: {table[row]}"
    assert configs["eurus2-7b-sft"]["stage"] == "sft" and configs["eurus2-7b-sft"]["bf16"]
    assert f"[{config['filter_low']}, {config['filter_high']}]" in notes.split("## §5.")[1].split("## §6.")[0]
    assert config["bf16"] and config["activation_checkpointing"]
    # 4 optimizer steps each for the PRM and the policy per iteration (1024 responses / 256)
    responses = config["prompts_per_step"] * config["samples_per_prompt"]
    assert responses // config["prm_mini_batch"] == responses // config["policy_mini_batch"] == 4


def test_help_lists_every_field_with_each_presets_value(capsys):
    with pytest.raises(SystemExit) as done:
        parse(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for f in (f for section in train.SECTIONS for f in dataclasses.fields(section)):
        assert f"--{f.name}=" in out and f.metadata["help"] in out, f.name
    assert "--max_response_tokens=<int>  [toy 48, eurus2-7b-prime 3072, eurus2-7b-sft 3072]" in out
    assert "--sft_lr=<float>  [toy 0.001, eurus2-7b-prime 1e-05, eurus2-7b-sft 1e-05]" in out


def test_the_eurus_preset_needs_its_data_and_settings_are_checked():
    with pytest.raises(SystemExit, match="pass --train_files"):
        parse(["--preset=eurus2-7b-prime"])
    with pytest.raises(SystemExit, match="beta=0.0: must be positive.*top_p=2.0"):
        parse(["--beta=0", "--top_p=2"])


def test_overrides_apply_on_top_of_a_preset(capsys):
    with pytest.raises(SystemExit) as done:
        parse(["--preset=eurus2-7b-prime", "--steps=10", "--bf16=false", "--print_config"])
    assert done.value.code == 0
    config = json.loads(capsys.readouterr().out)
    assert config["steps"] == 10 and config["bf16"] is False and config["policy_lr"] == 5e-7
    cfg = parse(["--beta=0.1", "--out_dir=x"])
    assert cfg.preset == "toy" and cfg.beta == 0.1 and cfg.out_dir == "x" and cfg.steps == toy.PRESET["steps"]


def test_unknown_key_exits_non_zero_with_a_message(tmp_path):
    run = run_train(["--no_such_knob=3", "--print_config"], tmp_path, timeout=120)
    assert run.returncode != 0, run.describe()
    assert "unknown option --no_such_knob" in run.stderr, run.describe()
    assert "Traceback" not in run.stderr, "a config error should be a message, not a traceback\n" + run.describe()


def test_badly_typed_value_exits_non_zero_with_a_message(tmp_path):
    run = run_train(["--steps=many", "--print_config"], tmp_path, timeout=120)
    assert run.returncode != 0, run.describe()
    assert "--steps expects a int, got 'many'" in run.stderr, run.describe()


@pytest.mark.parametrize("argv,message", [
    (["--beta=big"], "--beta expects a float, got 'big'"),
    (["--bf16=maybe"], "--bf16 expects a bool, got 'maybe'"),
    (["--prompts_per_step=2.5"], "--prompts_per_step expects a int"),
    (["--preset=gpt5"], "unknown preset 'gpt5'"),
    (["steps=3"], "expected --key=value, got 'steps=3'"),
    (["--stage=rlhf"], "--stage must be one of prime, sft"),
    (["--prm_update=triple"], "--prm_update must be one of single, double, frozen, got 'triple'"),
    (["--prm_update=Single"], "--prm_update must be one of"),
    (["--reference=ref"], "--reference must be one of sft, policy, got 'ref'"),
    (["--process_rewards=off"], "--process_rewards expects a bool, got 'off'"),
    (["--accuracy_filter=yes"], "--accuracy_filter expects a bool, got 'yes'"),
    (["--process_norm=max"], "--process_norm must be one of batch_norm, none, got 'max'"),
])
def test_config_errors_in_process(argv, message):
    with pytest.raises(SystemExit) as done:
        parse(argv)
    code = done.value.code
    assert isinstance(code, str) and message in code, code  # a string code: exit status 1 + message


# ----------------------------------------------------------------------------------------------
# 6. in-process units: PromptStream, micro_batches
# ----------------------------------------------------------------------------------------------

def test_prompt_stream_serves_every_problem_once_per_epoch_across_ranks():
    n, world, seed = 11, 3, 5
    streams = [data.PromptStream(n, seed, r, world) for r in range(world)]
    sizes = [len(range(r, n, world)) for r in range(world)]  # 4, 4, 3
    rng = random.Random(0)
    epochs = []
    for _ in range(2):
        served = []
        for s, size in zip(streams, sizes):
            left = size
            while left:  # in uneven chunks
                k = min(left, rng.randint(1, 3))
                served += s.take(k)
                left -= k
        assert sorted(served) == list(range(n)), served
        epochs.append(served)
    assert epochs[0] != epochs[1], "each epoch should be reshuffled"
    # the same seed gives the same order (every rank must agree on the permutation)
    again = [data.PromptStream(n, seed, r, world).take(sizes[r]) for r in range(world)]
    assert sum(again, []) == epochs[0]


def test_prompt_stream_crosses_epochs_serves_the_buffer_first_and_resumes():
    s = data.PromptStream(5, seed=1, rank=0, world=1)
    epoch0 = s.take(5)
    assert sorted(epoch0) == list(range(5))
    s2 = data.PromptStream(5, seed=1, rank=0, world=1)
    crossing = s2.take(7)  # a take across the epoch boundary
    assert crossing[:5] == epoch0 and len(set(crossing[5:])) == 2 and s2.epoch == 1 and s2.cursor == 2

    s.buffer = [3, 1, 4]
    first = s.take(2)
    assert first == [3, 1] and s.buffer == [4]
    state = json.loads(json.dumps(s.state()))  # what the checkpoint stores
    restored = data.PromptStream(5, seed=1, rank=0, world=1)
    restored.load(state)
    assert restored.take(8) == s.take(8)
    assert restored.state() == s.state()


def test_micro_batches_respect_the_token_budget_and_split_to_the_ranks_count(monkeypatch):
    rollouts = batches.Rollouts(prompts=[[1] * 3] * 5, responses=[[2] * 2, [2] * 5, [2] * 1, [2] * 20, [2] * 2],
                              outcome=torch.zeros(5), truncated=[False] * 5)
    # lengths (prompt + response): 5, 8, 4, 23, 5
    monkeypatch.setattr(batches, "all_max", lambda value, device: value)  # one rank
    assert batches.micro_batches(range(5), rollouts.lengths, 13, "cpu") == [[0, 1], [2], [3], [4]]
    assert batches.micro_batches([4, 2, 0], rollouts.lengths, 100, "cpu") == [[4, 2, 0]]
    # another rank needs 4 micro-batches: this one splits its largest until it runs as many
    # forwards (the collectives match), every one non-empty, in order
    monkeypatch.setattr(batches, "all_max", lambda value, device: 4)
    assert batches.micro_batches([0, 1, 2, 3], rollouts.lengths, 100, "cpu") == [[0], [1], [2], [3]]
    assert batches.micro_batches([3, 0, 1, 2, 4], rollouts.lengths, 100, "cpu") == [[3], [0], [1], [2, 4]]
    with pytest.raises(RuntimeError, match="as many rows"):
        batches.micro_batches([0, 2], rollouts.lengths, 100, "cpu")


# ----------------------------------------------------------------------------------------------
# 7. the ablation switches end to end: what is loaded, checkpointed, resumed, exported, logged
#    (their math is checked in-process in test_ablations.py)
# ----------------------------------------------------------------------------------------------

PRM_KEYS = ["prm_loss", "prm_accuracy", "process_reward_mean", "process_reward_std"]


def checkpoint_models(path):
    """The top-level names in a DCP checkpoint: policy, policy_optim, prm, prm_optim."""
    from torch.distributed.checkpoint import FileSystemReader
    return {key.split(".")[0] for key in FileSystemReader(str(path)).read_metadata().state_dict_metadata}


def test_outcome_only_rloo_resumes_without_a_prm_and_keeps_every_group(sft_model, tmp_path):
    """process_rewards=false: no PRM anywhere (checkpoint, export, metrics are null), resume works.
    accuracy_filter=false with bounds [0.9, 1] that no group of this model reaches (see
    test_a_step_that_cannot_be_filled_stops_with_a_message): every group is kept."""
    out = tmp_path / "run"
    base = [*TINY, f"--model_path={sft_model}", f"--out_dir={out}", "--save_every=1", "--process_rewards=false",
            "--accuracy_filter=false", "--filter_low=0.9", "--filter_high=1"]
    first = run_train([*base, "--steps=1"], tmp_path)
    assert first.returncode == 0, first.describe()
    assert "no PRM (outcome-only RLOO)" in first.stdout, first.describe()
    assert checkpoint_models(out / "checkpoints" / "step_000001") == {"policy", "policy_optim"}

    second = run_train([*base, "--steps=2"], tmp_path)
    assert second.returncode == 0, second.describe()
    assert "(step 1 done)" in second.stdout and "step 1/2" not in second.stdout, second.describe()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2], second.describe()
    for r in rows:
        assert all(r[k] is None for k in PRM_KEYS), r
        for k in set(METRIC_KEYS) - set(PRM_KEYS):
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]), f"{k} = {r[k]!r} in {r}"
        assert r["kept_share"] == 1.0, r
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["steps"] == 2 and summary["prm_path"] is None, summary
    assert (out / "policy" / "config.json").exists() and not (out / "prm").exists()


def test_frozen_offline_prm_scores_is_not_checkpointed_and_never_changes(sft_model, tmp_path):
    """prm_update=frozen with --prm_path: the PRM scores (non-zero rewards: it differs from the
    reference), is not in the checkpoint (resume then is the outcome-only case above: policy
    only), and is exported bit-identical to the PRM it was given."""
    offline = M.load_model(sft_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in offline.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    M.save_model(offline, str(tmp_path / "offline_prm"))
    out = tmp_path / "run"
    run = run_train([*TINY, *KEEP_ALL, f"--model_path={sft_model}", f"--out_dir={out}", "--steps=2",
                     "--prm_update=frozen", f"--prm_path={tmp_path / 'offline_prm'}"], tmp_path)
    assert run.returncode == 0, run.describe()
    assert "PRM frozen (scores only)" in run.stdout, run.describe()
    assert checkpoint_models(out / "checkpoints" / "step_000002") == {"policy", "policy_optim"}
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2], run.describe()
    for r in rows:
        assert r["process_reward_std"] > 0 and math.isfinite(r["prm_loss"]), r
    exported = M.load_model(str(out / "prm")).state_dict()
    assert all(torch.equal(p, exported[n]) for n, p in offline.state_dict().items()), "the frozen PRM changed"


def test_double_forward_with_the_policy_as_reference_on_two_ranks(sft_model, tmp_path):
    """The two switches whose forwards are new under FSDP: double's second PRM forward (with the
    ranks' dummy micro-batches) and the sharded policy standing in for the reference."""
    out = tmp_path / "run"
    run = run_train([*TINY, *KEEP_ALL, f"--model_path={sft_model}", f"--out_dir={out}", "--steps=1",
                     "--prm_update=double", "--reference=policy"], tmp_path, ranks=2)
    assert run.returncode == 0, run.describe()
    assert "in order, then a second forward re-scores them all" in run.stdout, run.describe()
    assert checkpoint_models(out / "checkpoints" / "step_000001") == {"policy", "policy_optim", "prm", "prm_optim"}
    [row] = read_metrics(out)
    for k in METRIC_KEYS:
        assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), f"{k} = {row[k]!r} in {row}"
    # step 1: PRM == policy == SFT, but double-forward scores with the PRM after its updates
    assert row["prm_loss"] == pytest.approx(math.log(2), abs=1e-3) and row["process_reward_std"] > 0, row
