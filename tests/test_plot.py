"""toy/plot.py on synthetic runs (grouping, curves, the table's numbers, the PNGs) and toy/ablate.py's
plan (which train.py runs, in which order, with which overrides; finished runs skipped) and its
runner (parallel subprocesses, failures reported), without training anything."""

import json
import os
import statistics
import sys

import pytest

from toy import ablate, plot
from toy import task as toy

# ----------------------------------------------------------------------------------------------
# synthetic runs: <root>/<config>/seed<k>/{metrics.jsonl, summary.json}
# ----------------------------------------------------------------------------------------------


def write_run(folder, rewards, prm=True, held_out=None, lengths=None, seconds=None):
    """seconds: the step's (sampling, PRM, policy) times, the same at every step."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for step, reward in enumerate(rewards, start=1):
            row = {"step": step, "outcome_accuracy": reward, "prm_accuracy": 0.5 + step / 100 if prm else None,
                   "response_length_mean": (lengths or [30.0] * len(rewards))[step - 1]}
            if seconds:
                row.update(zip(plot.STEP_SECONDS, seconds))
            f.write(json.dumps(row) + "\n")
    if held_out is not None:
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump({"eval_accuracy_start": 0.4, "eval_accuracy_end": held_out, "steps": len(rewards)}, f)


def ramp(start, slope, n=30, noise=0.0):
    return [start + slope * s + noise * (-1) ** s for s in range(n)]


@pytest.fixture
def root(tmp_path):
    """prime rises twice as fast as rloo; rloo has no PRM metrics; a helper run in _source."""
    for k, offset in enumerate([-0.01, 0.0, 0.01]):  # prime: 1.5 s per step, rloo 1.0 s (seed 2: 1.3 s)
        write_run(tmp_path / "prime" / f"seed{k}", ramp(0.30 + offset, 0.01), held_out=0.50 + offset,
                  seconds=(0.5, 0.5, 0.5))
        write_run(tmp_path / "rloo" / f"seed{k}", ramp(0.30 + offset, 0.005), prm=False, held_out=0.46 + offset,
                  seconds=(0.6, 0.0, 0.4 if k < 2 else 0.7))
    write_run(tmp_path / "_source", ramp(0.9, 0.0))
    return tmp_path


# ----------------------------------------------------------------------------------------------
# plot.py
# ----------------------------------------------------------------------------------------------

def test_runs_are_grouped_by_config_with_seeds_as_members_and_helpers_skipped(root, tmp_path_factory):
    runs = plot.load_runs([str(root)])
    assert list(runs) == ["prime", "rloo"]  # ablate.py's order; _source skipped
    assert [r["member"] for r in runs["prime"]] == ["seed0", "seed1", "seed2"]
    assert runs["rloo"][1]["summary"]["eval_accuracy_end"] == 0.46
    # a plain run folder (no seed<k>) is its own label; files can be given directly
    single = tmp_path_factory.mktemp("other") / "my_run"
    write_run(single, [0.1, 0.2])
    runs = plot.load_runs([str(root / "rloo" / "seed0" / "metrics.jsonl"), str(single)])
    assert list(runs) == ["rloo", "my_run"] and runs["my_run"][0]["summary"] is None


def test_seed_curve_is_the_mean_with_the_min_max_spread_and_skips_nulls(root):
    runs = plot.load_runs([str(root)])
    steps, mean, low, high = plot.seed_curve(runs["prime"], "outcome_accuracy")
    assert steps == list(range(1, 31))
    assert mean[0] == pytest.approx(0.30) and low[0] == pytest.approx(0.29) and high[0] == pytest.approx(0.31)
    assert mean[-1] == pytest.approx(0.30 + 0.29)
    assert plot.seed_curve(runs["rloo"], "prm_accuracy") == ([], [], [], [])  # all null: no curve


def test_smooth_uses_full_trailing_windows():
    assert plot.smooth([1, 2, 3, 4], window=2) == [1.5, 2.5, 3.5]
    assert plot.smooth([1, 2, 3], window=10) == [2.0]  # shorter than the window: one mean of all
    assert plot.smooth([]) == []


def test_table_numbers(root):
    runs = plot.load_runs([str(root)])
    # final training reward: each seed's mean of its last 10 steps, then mean and std over seeds
    finals = [statistics.fmean(ramp(0.30 + o, 0.01)[-10:]) for o in (-0.01, 0.0, 0.01)]
    mean, std = plot.final_reward(runs["prime"])
    assert mean == pytest.approx(statistics.fmean(finals)) and std == pytest.approx(statistics.stdev(finals))
    # rloo's final (its steps 21-30): 0.30 + 0.005 * 24.5 = 0.4225. prime's 10-step mean ending at
    # step s is 0.30 + 0.01 * (s - 5.5): it first reaches 0.4225 at s = 17.75 -> step 18
    target = plot.smooth(plot.seed_curve(runs["rloo"], "outcome_accuracy")[1])[-1]
    assert target == pytest.approx(0.4225)
    assert plot.steps_to_reach(runs["prime"], target) == 18
    assert plot.steps_to_reach(runs["rloo"], target) == 30  # the baseline reaches its own final last
    assert plot.steps_to_reach(runs["rloo"], 0.9) is None
    m, s, n = plot.held_out(runs["prime"])
    assert (m, n) == (pytest.approx(0.50), 3) and s == pytest.approx(0.01)

    # each seed's own curve: prime's seeds are offset by -0.01, 0, +0.01 (one step of its slope
    # each), rloo's by a step's worth of two; the slower seed never gets there
    r = plot.reach(runs, "prime")
    assert r["step"] == 18 and r["per_seed"] == [19, 18, 17] and r["ratio"] == pytest.approx(18 / 30)
    assert plot.reach(runs, "rloo")["per_seed"] == [None, 30, 28]
    # time: prime 1.5 s per step, rloo 1.1 s on average over its seeds
    assert plot.step_seconds(runs["prime"]) == (list(range(1, 31)), [pytest.approx(1.5)] * 30)
    assert plot.seconds_to(runs["rloo"], 30) == pytest.approx(33.0)
    assert r["seconds"] == pytest.approx(27.0) and r["seconds_ratio"] == pytest.approx(27.0 / 33.0)

    text = plot.table(runs)
    lines = text.splitlines()
    assert lines[0].startswith("| config | seeds |") and "(0.422)" in lines[0] and len(lines) == 4
    assert lines[2] == ("| prime | 3 | 0.545 ± 0.010 | 18 of 30 [19 / 18 / 17] | 0.60 | 1.50 | 27 (0.82) | "
                        "0.500 ± 0.010 (n=3) |")
    assert lines[3] == ("| rloo | 3 | 0.423 ± 0.010 | 30 of 30 [- / 30 / 28] | 1.00 | 1.10 | 33 (1.00) | "
                        "0.460 ± 0.010 (n=3) |")


def test_table_without_a_baseline_or_summaries(tmp_path):
    write_run(tmp_path / "a" / "seed0", [0.1, 0.3])
    runs = plot.load_runs([str(tmp_path)])
    text = plot.table(runs)
    assert "(n/a)" in text.splitlines()[0]
    assert text.splitlines()[2] == "| a | 1 | 0.200 ± 0.000 | n/a | n/a | n/a | n/a | n/a |"


def test_plot_writes_the_pngs(root, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "docs"
    plot.main([str(root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| prime | 3 |" in printed
    for name in plot.PLOTS:
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert f"wrote {out / name}" in printed


def test_plot_without_matplotlib_prints_the_table_then_says_what_to_install(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as done:
        plot.main([str(root), "--out", str(tmp_path / "docs")])
    assert "requirements-plot.txt" in str(done.value.code)
    assert "| prime | 3 |" in capsys.readouterr().out
    assert not (tmp_path / "docs").exists()


def test_plot_with_nothing_to_plot_says_so(tmp_path):
    with pytest.raises(SystemExit) as done:
        plot.main([str(tmp_path)])
    assert "no metrics.jsonl" in str(done.value.code)
    with pytest.raises(SystemExit) as done:
        plot.main([str(tmp_path / "missing")])
    assert "no such file or folder" in str(done.value.code)


# ----------------------------------------------------------------------------------------------
# ablate.py
# ----------------------------------------------------------------------------------------------

def test_ablate_plans_one_sft_then_the_offline_prm_then_every_run(tmp_path):
    root = str(tmp_path / "abl")
    sft, source, runs = ablate.plan(["prime", "rloo", "offline_prm"], 2, root, steps=5, extra=["--beta=0.1"])
    sft_model = os.path.join(root, "sft", "sft")
    assert [j.name for j in sft] == ["sft"] and sft[0].args == ["--stage=sft", f"--out_dir={root}/sft", "--beta=0.1"]
    [source] = source
    assert "--policy_lr=0" in source.args and f"--model_path={sft_model}" in source.args
    assert source.out_dir == os.path.join(root, "_offline_prm_source")  # "_": plot.py skips it
    assert [j.name for j in runs] == ["prime seed0", "prime seed1", "rloo seed0", "rloo seed1",
                                      "offline_prm seed0", "offline_prm seed1"]
    for job in runs:
        assert f"--model_path={sft_model}" in job.args and "--steps=5" in job.args and "--beta=0.1" in job.args
        assert job.done_file == os.path.join(job.out_dir, "summary.json")
    assert runs[1].args[:3] == [f"--model_path={sft_model}", f"--out_dir={root}/prime/seed1", "--seed=1"]
    assert runs[2].args[-1] == "--process_rewards=false"
    assert runs[4].args[-2:] == ["--prm_update=frozen", f"--prm_path={root}/_offline_prm_source/prm"]
    # without offline_prm there is no offline PRM to train
    assert ablate.plan(["prime"], 1, root)[1] == []


def test_ablate_skips_finished_runs(tmp_path):
    root = str(tmp_path)
    write_run(tmp_path / "prime" / "seed0", [0.1], held_out=0.2)  # writes summary.json
    os.makedirs(tmp_path / "sft" / "sft")
    open(tmp_path / "sft" / "sft" / "config.json", "w").close()
    sft, _, runs = ablate.plan(["prime", "rloo"], 2, root)
    assert sft == [] and [j.name for j in runs] == ["prime seed1", "rloo seed0", "rloo seed1"]


@pytest.mark.parametrize("configs,extra,message", [
    (["prime", "ppo"], [], "unknown configuration(s) ['ppo']"),
    (["prime"], ["--seed=3"], "--seed is set by ablate.py"),
    (["prime"], ["--out_dir=x"], "--out_dir is set by ablate.py"),
    (["prime"], ["beta=1"], "overrides are --key=value"),
])
def test_ablate_rejects_bad_plans(tmp_path, configs, extra, message):
    with pytest.raises(ValueError) as error:
        ablate.plan(configs, 3, str(tmp_path), extra=extra)
    assert message in str(error.value)


def test_ablate_setting_comes_before_the_users_overrides(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(ablate, "run_jobs", lambda jobs, parallel: ran.extend(jobs) or [])
    ablate.main(["--configs=rloo", "--seeds=1", f"--root={tmp_path}", "--toy_products=2"])
    sft, run = ran
    assert ablate.DEFAULT_SETTING == "products" and "--toy_task=products" in ablate.SETTINGS["products"]
    assert sft.args == ["--stage=sft", f"--out_dir={tmp_path}/sft", *ablate.SETTINGS["products"], "--toy_products=2"]
    assert run.args[3:] == [*ablate.SETTINGS["products"], "--toy_products=2", "--process_rewards=false"]
    ran.clear()
    ablate.main(["--configs=prime", "--seeds=1", f"--root={tmp_path}", "--setting=expression"])
    assert ran[0].args == ["--stage=sft", f"--out_dir={tmp_path}/sft"]  # train.py's default toy
    capsys.readouterr()


def test_ablate_runner_runs_in_parallel_and_reports_failures(tmp_path, capsys):
    script = tmp_path / "fake_train.py"
    script.write_text("import os, sys, time\ntime.sleep(0.5)\nprint('threads', os.environ['OMP_NUM_THREADS'])\n"
                      "sys.exit(1 if '--fail' in sys.argv else 0)\n")
    jobs = [ablate.Job(f"job{i}", str(tmp_path / f"job{i}"), ["--fail"] if i == 2 else [], "") for i in range(4)]
    failed = ablate.run_jobs(jobs, parallel=2, cores=4, script=str(script))
    assert failed == ["job2"]
    printed = capsys.readouterr().out
    assert printed.count("done  job") == 3 and "FAILED (exit 1)  job2" in printed
    for i in range(4):
        assert (tmp_path / f"job{i}" / "train.log").read_text().strip() == "threads 2"  # 4 cores / 2 runs


# ----------------------------------------------------------------------------------------------
# plot.py --token_rewards: the PRM's token credit
# ----------------------------------------------------------------------------------------------

def test_token_credit_is_beta_times_the_log_ratio_of_each_response_token(tmp_path):
    import torch

    import data
    from tests.tiny import toy_network
    tokenizer = toy.build_toy_tokenizer(str(tmp_path / "tok"))
    prm, ref = toy_network(tokenizer, 160, seed=0), toy_network(tokenizer, 160, seed=1)
    prompts = [data.tokenize_prompt(tokenizer, [{"role": "user", "content": q}]) for q in ("5+4*6", "1+2*3+4*5")]
    responses = [tokenizer("5+24\n\\boxed{29}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
                 tokenizer("3*3", add_special_tokens=False)["input_ids"]]
    credit = plot.token_credit(prm, ref, prompts, responses, beta=0.05)
    assert [len(c) for c in credit] == [len(r) for r in responses]
    for prompt, response, rewards in zip(prompts, responses, credit):
        # the trainer's way: the packed score mode of model.py, position len(prompt) - 1 + t predicts response[t]
        ids = torch.tensor(prompt + response)
        cu = torch.tensor([0, len(ids)], dtype=torch.int32)
        scored = torch.arange(len(prompt) - 1, len(ids) - 1)
        with torch.no_grad():
            logp = [net(ids, cu, scored=scored, targets=torch.tensor(response))[0] for net in (prm, ref)]
        assert torch.allclose(torch.tensor(rewards), 0.05 * (logp[0] - logp[1]), atol=1e-5)
    assert plot.token_credit(ref, ref, prompts, responses, beta=0.05) == [[0.0] * len(r) for r in responses]


def toy_run_folder(tmp_path):
    """A finished products-toy train.py run as plot.py reads it: config.json (12 held-out
    problems), random tiny sft/prm/policy models with the toy tokenizer, summary.json."""
    import train
    from support import cli
    from tests.tiny import save_toy_checkpoint, toy_network
    run = tmp_path / "run"
    settings = train.settings(["--toy_task=products", "--toy_products=2", "--eval_problems=12",
                               "--max_response_tokens=40", f"--out_dir={run}"])
    os.makedirs(run)
    (run / "config.json").write_text(json.dumps(cli.flat(settings)))
    tokenizer = toy.build_toy_tokenizer(str(tmp_path / "tok"))
    for name, seed in (("sft", 0), ("prm", 1), ("policy", 2)):
        save_toy_checkpoint(run / name, toy_network(tokenizer, 160, seed=seed), tokenizer)
    (run / "summary.json").write_text(json.dumps({"model_path": str(run / "sft")}))
    return run


def test_token_rewards_picture_from_a_run_folder(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = toy_run_folder(tmp_path)
    plot.main(["--token_rewards", str(run), "--out", str(tmp_path / "docs")])
    with open(tmp_path / "docs" / "token_credit.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out

    os.remove(run / "summary.json")  # not a finished run
    with pytest.raises(SystemExit, match="summary.json"):
        plot.main(["--token_rewards", str(run)])


# ----------------------------------------------------------------------------------------------
# plot.py --advantages: how far the dense reward moves the advantage
# ----------------------------------------------------------------------------------------------

def test_advantage_agreement_measures_what_the_process_rewards_change():
    import torch

    import train
    from tests.tiny import toy_config
    K, T = 4, 6
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])                     # [8]: two groups
    lengths = torch.tensor([6, 4, 5, 6, 3, 6, 2, 6])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()                          # [8, 6]
    cfg = toy_config(samples_per_prompt=K)
    # No process reward: PRIME's advantages are RLOO's, one value per response (also taken a
    # one-group step at a time).
    for step_cfg in (cfg, toy_config(samples_per_prompt=K, prompts_per_step=1)):
        for stats in plot.advantage_agreement(torch.zeros_like(mask), outcome, mask, step_cfg).values():
            assert stats["r"] == pytest.approx(1.0) and stats["same_sign"] == 1.0 and stats["within"] < 1e-6
            assert stats["wrong_pushed_up"] == 0.0
    # A reward at the first token of every wrong response and a penalty at the last token of every
    # right one: the advantages now vary inside responses, and more so without the normaliser's
    # division when the rewards are larger than 1 in return.
    process = torch.zeros_like(mask)
    process[outcome == 0, 0] = 3.0
    process[outcome == 1, (lengths - 1)[outcome == 1]] = -3.0
    stats = plot.advantage_agreement(process * mask, outcome, mask, cfg)
    assert set(stats) == set(train.PROCESS_NORMS)
    for norm in train.PROCESS_NORMS:
        assert stats[norm]["r"] < 1.0 and stats[norm]["within"] > 0.0
    assert stats["none"]["r"] < stats["batch_norm"]["r"]
    assert stats["none"]["wrong_pushed_up"] > 0.0


def test_advantages_report_from_a_run_folder(tmp_path, capsys, monkeypatch):
    import verify
    run = toy_run_folder(tmp_path)
    # Random networks answer nothing right: every group would be dropped by the filter.
    with pytest.raises(SystemExit, match="no batch to compare"):
        plot.main(["--advantages", str(run)])
    # Half of each group right (the scores only; the responses stay the networks' own).
    monkeypatch.setattr(verify, "score_responses",
                        lambda tokenizer, rows, responses: (None, [float(i % 2) for i in range(len(rows))]))
    plot.main(["--advantages", str(run)])
    out = capsys.readouterr().out
    assert "12 of 12 groups of 4 kept (48 responses" in out and "in batches of 64 groups" in out
    assert "process_norm=batch_norm (the run): r = " in out and "process_norm=none: r = " in out
