"""toy/plot.py: curves and a table from train.py runs, grouped into configurations over seeds.

    python toy/plot.py runs/ablate --out docs/          # what toy/ablate.py wrote
    python toy/plot.py runs/a/metrics.jsonl runs/b      # any metrics.jsonl files or folders
    python toy/plot.py --token_rewards RUN --out docs/  # a run's PRM crediting tokens (a picture)
    python toy/plot.py --advantages RUN                 # how far its dense reward moves the advantage

Each metrics.jsonl is one run. Its label (the configuration) is the name of the folder above a
`seed<k>` folder (ablate.py's <root>/<config>/seed<k>/), else the name of its own folder; runs
with one label are its seeds. Folders whose name starts with "_" are skipped (ablate.py's helper
runs, e.g. the offline PRM's source).

Writes three PNGs to --out, each the mean over seeds per step with the min-max spread shaded:
training_reward.png (outcome accuracy of the sampled responses before filtering: the paper's
"training reward", Fig. 4), prm_accuracy.png (PRM pairwise accuracy, Fig. 6; configurations
without a PRM are absent) and response_length.png. Prints a markdown table: per configuration the
final training reward (mean of the last 10 steps), the first step at which the seed-mean reward,
smoothed over a 10-step window, reaches the `rloo` baseline's final reward (the paper: PRIME gets
there in 40% of RLOO's steps, §4.3), and the final held-out greedy accuracy from summary.json.

matplotlib is needed only for the PNGs: python -m pip install -r requirements-plot.txt
"""

import argparse
import json
import os
import re
import statistics
import sys

if not __package__:  # run as `python toy/plot.py`: it starts in toy/, train.py's modules are one folder up
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WINDOW = 10      # steps: the "final" reward is the mean of the last WINDOW; the smoothing window
BASELINE = "rloo"
PLOTS = {  # file -> (metrics.jsonl key, y-axis label)
    "training_reward.png": ("outcome_accuracy", "training reward (outcome accuracy, before filtering)"),
    "prm_accuracy.png": ("prm_accuracy", "PRM pairwise accuracy"),
    "response_length.png": ("response_length_mean", "mean response length (tokens)"),
}
ORDER = ["prime", "rloo", "offline_prm", "double_forward", "policy_ref", "no_filter", "no_norm"]  # toy/ablate.py's


# ----------------------------------------------------------------------------------------------
# reading runs
# ----------------------------------------------------------------------------------------------

def find_metrics(paths):
    """Every metrics.jsonl under `paths` (files or folders, searched recursively), skipping
    folders whose name starts with "_"; sorted."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        if not os.path.isdir(path):
            raise FileNotFoundError(f"plot.py: no such file or folder: {path}")
        for folder, subfolders, files in os.walk(path):
            subfolders[:] = [s for s in subfolders if not s.startswith("_")]
            if "metrics.jsonl" in files:
                found.append(os.path.join(folder, "metrics.jsonl"))
    return sorted(found)


def label_of(metrics_path):
    """(label, member): <config>/seed<k>/metrics.jsonl -> (config, seed<k>); else (folder, folder)."""
    folder = os.path.dirname(os.path.abspath(metrics_path))
    name = os.path.basename(folder)
    if re.fullmatch(r"seed\d+", name):
        return os.path.basename(os.path.dirname(folder)), name
    return name, name


def load_runs(paths):
    """{label: [run, ...]} with run = {"member", "rows" (metrics.jsonl, one dict per step),
    "summary" (summary.json or None)}; labels in ablate.py's order, then alphabetical."""
    runs = {}
    for path in find_metrics(paths):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        summary_path = os.path.join(os.path.dirname(path), "summary.json")
        summary = None
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                summary = json.load(f)
        label, member = label_of(path)
        runs.setdefault(label, []).append({"member": member, "rows": rows, "summary": summary})
    return dict(sorted(runs.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


# ----------------------------------------------------------------------------------------------
# aggregation (plain functions: tests/test_plot.py checks them on synthetic runs)
# ----------------------------------------------------------------------------------------------

def seed_curve(runs, key):
    """Per step over the seeds of one label: (steps, mean, low, high), lists of equal length.
    A step counts where at least one seed logged a number for `key` (null, e.g. the PRM metrics
    of outcome-only RLOO, and missing values are skipped); empty lists when none did."""
    values = {}
    for run in runs:
        for row in run["rows"]:
            if row.get(key) is not None:
                values.setdefault(row["step"], []).append(row[key])
    steps = sorted(values)
    return (steps, [statistics.fmean(values[s]) for s in steps], [min(values[s]) for s in steps],
            [max(values[s]) for s in steps])


def smooth(values, window=WINDOW):
    """Trailing means over full windows: smooth(v)[i] = mean(v[i : i + w]) with w = min(window,
    len(v)), i.e. len(v) - w + 1 values, the first one ending at step w (a full window only, so
    one lucky early step cannot count as reaching a target)."""
    w = min(window, len(values))
    return [statistics.fmean(values[i:i + w]) for i in range(len(values) - w + 1)] if w else []


def final_reward(runs, key="outcome_accuracy"):
    """(mean, std over seeds) of each seed's mean `key` over its last WINDOW steps."""
    finals = [statistics.fmean([r[key] for r in run["rows"][-WINDOW:]]) for run in runs if run["rows"]]
    return statistics.fmean(finals), (statistics.stdev(finals) if len(finals) > 1 else 0.0)


def steps_to_reach(runs, target, key="outcome_accuracy"):
    """The first step at which the seed-mean curve, smoothed over WINDOW steps (see smooth),
    reaches `target`; None if it never does."""
    steps, mean, _, _ = seed_curve(runs, key)
    w = min(WINDOW, len(steps))
    for i, value in enumerate(smooth(mean)):
        if value >= target:
            return steps[i + w - 1]
    return None


def held_out(runs):
    """(mean, std, n) of eval_accuracy_end over the seeds that have a summary.json with one;
    None when none has."""
    values = [run["summary"]["eval_accuracy_end"] for run in runs
              if run["summary"] and run["summary"].get("eval_accuracy_end") is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


STEP_SECONDS = ("seconds_collect", "seconds_prm", "seconds_policy")  # a step's phases in metrics.jsonl
# (and seconds_old_logprobs, which runs before late 2026 counted in seconds_prm)


def step_seconds(runs):
    """Per step over the seeds of one label: (steps, mean seconds of the step), the step's time
    being its phases' (sampling, old log-probs, PRM, policy) sum; empty lists for runs that logged
    no times."""
    values = {}
    for run in runs:
        for row in run["rows"]:
            if all(row.get(key) is not None for key in STEP_SECONDS):
                values.setdefault(row["step"], []).append(sum(row[key] for key in STEP_SECONDS)
                                                          + row.get("seconds_old_logprobs", 0.0))
    steps = sorted(values)
    return steps, [statistics.fmean(values[s]) for s in steps]


def seconds_to(runs, step):
    """Seconds of training (step_seconds, seed mean) until the end of `step`; None without times."""
    steps, seconds = step_seconds(runs)
    return sum(t for s, t in zip(steps, seconds) if s <= step) if steps else None


def reach(runs_by_label, label):
    """How fast `label` reaches the rloo baseline's final training reward (the paper's Fig. 4
    measure): {"target", "step" (the seed-mean curve's, steps_to_reach), "ratio" (step over
    rloo's own step), "per_seed" (each seed's own curve's step, None where it never gets there),
    "seconds" (training seconds until that step, seed mean), "seconds_ratio" (over rloo's)}.
    None without a baseline."""
    if BASELINE not in runs_by_label:
        return None
    baseline = runs_by_label[BASELINE]
    target = smooth(seed_curve(baseline, "outcome_accuracy")[1])[-1]
    runs = runs_by_label[label]
    step, own = steps_to_reach(runs, target), steps_to_reach(baseline, target)
    seconds = seconds_to(runs, step) if step is not None else None
    own_seconds = seconds_to(baseline, own)
    return {"target": target, "step": step, "ratio": step / own if step is not None else None,
            "per_seed": [steps_to_reach([run], target) for run in runs], "seconds": seconds,
            "seconds_ratio": seconds / own_seconds if seconds is not None and own_seconds else None}


def table(runs_by_label):
    """The markdown table (a string): per label the seeds, the final training reward, the steps
    to reach the rloo baseline's final training reward (the seed-mean curve's, and each seed's
    own), that step as a share of rloo's own, the seconds per step and the training time to
    reach it (and its share of rloo's), the final held-out accuracy."""
    target = reach(runs_by_label, BASELINE)["target"] if BASELINE in runs_by_label else None
    lines = [f"| config | seeds | final training reward (last {WINDOW} steps) | steps to reach {BASELINE}'s "
             f"final reward ({f'{target:.3f}' if target is not None else 'n/a'}) [each seed] | ratio to "
             f"{BASELINE}'s | seconds per step | seconds to reach it (ratio) | held-out accuracy at the end |",
             "|---|---|---|---|---|---|---|---|"]
    for label, runs in runs_by_label.items():
        mean, std = final_reward(runs)
        r = reach(runs_by_label, label)
        total = max(row["step"] for run in runs for row in run["rows"])
        if r is None:
            steps = ratio = time = "n/a"
        else:
            seeds = " / ".join(str(s) if s is not None else "-" for s in r["per_seed"])
            steps = (f"{r['step']} of {total}" if r["step"] is not None else f"not within {total}") + f" [{seeds}]"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            time = (f"{r['seconds']:.0f} ({r['seconds_ratio']:.2f})" if r["seconds_ratio"] is not None
                    else "-")
        _, seconds = step_seconds(runs)
        per_step = f"{statistics.fmean(seconds):.2f}" if seconds else "n/a"
        evals = held_out(runs)
        accuracy = f"{evals[0]:.3f} ± {evals[1]:.3f} (n={evals[2]})" if evals else "n/a"
        lines.append(f"| {label} | {len(runs)} | {mean:.3f} ± {std:.3f} | {steps} | {ratio} | {per_step} | {time} "
                     f"| {accuracy} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------

def draw(runs_by_label, out_dir):
    """The PNGs of PLOTS in out_dir; returns their paths."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("toy/plot.py: the PNGs need matplotlib: python -m pip install -r requirements-plot.txt "
                         "(the table above needs nothing)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    colors = {label: f"C{i}" for i, label in enumerate(runs_by_label)}  # one color per label everywhere
    written = []
    for name, (key, ylabel) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, runs in runs_by_label.items():
            steps, mean, low, high = seed_curve(runs, key)
            if not steps:
                continue
            ax.plot(steps, mean, color=colors[label], lw=1.5, label=f"{label} ({len(runs)} seeds)")
            ax.fill_between(steps, low, high, color=colors[label], alpha=0.2, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.set_title(f"{ylabel}: mean over seeds, min-max shaded", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# the PRM's token credit (--token_rewards RUN)
# ----------------------------------------------------------------------------------------------

def token_credit(prm, ref, prompts, responses, beta):
    """Each response token's implicit process reward beta * log(pi_phi / pi_ref) (rewards.py,
    Eq. 3) under the PRM `prm` and the reference `ref` (model.py networks): a list of float lists,
    one per response. prompts and responses are token id lists; the numbers are train.py's own,
    from its packed log-probs (support.batches.response_logprobs) and rewards.implicit_process_rewards."""
    import torch

    from support.batches import Rollouts

    rollouts = Rollouts(prompts=prompts, responses=responses, outcome=torch.zeros(len(responses)),
                              truncated=[False] * len(responses))
    process = process_rewards(prm, ref, rollouts, beta)  # [B, T]
    return [row[:len(response)].tolist() for row, response in zip(process, responses)]


def process_rewards(prm, ref, rollouts, beta):
    """[B, T] implicit process rewards of every response of `rollouts` (support.batches.Rollouts), as
    train.py computes them, in one packed forward per model."""
    import torch

    import rewards
    from support.batches import response_logprobs

    device, rows = next(prm.parameters()).device, range(len(rollouts.responses))
    with torch.no_grad():
        prm_logp, _ = response_logprobs(prm, rollouts, rows, device)  # [B, T]
        ref_logp, _ = response_logprobs(ref, rollouts, rows, device)
    return rewards.implicit_process_rewards(prm_logp, ref_logp, rollouts.mask(device), beta)


def draw_token_credit(examples, path, title=""):
    """A heat strip per response: each token's reward in a cell under its character (red
    negative, blue positive, one symmetric scale for all), a newline drawn as "⏎", the end of
    the turn as "■" (another special token as "◆"). examples: dicts {"tokens" (strings), "rewards" (floats), "label" (the line
    above the strip), "marks" ([(token index, text)] written under the strip)}."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("toy/plot.py: the picture needs matplotlib: python -m pip install -r requirements-plot.txt") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    scale = max((abs(r) for e in examples for r in e["rewards"]), default=0.0) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    width = max(len(e["tokens"]) for e in examples)
    fig, axes = plt.subplots(len(examples), 1, figsize=(0.2 * width + 1.5, 1.05 * len(examples) + 0.6),
                             squeeze=False)
    for ax, example in zip(axes[:, 0], examples):
        image = ax.imshow([example["rewards"]], cmap="RdBu", norm=norm, aspect="auto",
                          extent=(-0.5, len(example["rewards"]) - 0.5, 0, 1))
        for x, token in enumerate(example["tokens"]):
            ax.text(x, 0.5, token, ha="center", va="center", fontsize=7, family="monospace")
        for x, text in example.get("marks", []):
            ax.text(x - 0.5, -0.15, text, ha="left", va="top", fontsize=6.5)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(-0.75, 1)
        ax.set_title(example["label"], fontsize=7.5, loc="left", family="monospace")
        ax.axis("off")
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="beta * log(pi_phi / pi_ref)")
    if title:
        fig.suptitle(title, fontsize=8.5, x=0.01, ha="left")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def load_run(run, flag):
    """What a finished toy train.py run with process rewards left in folder `run`: (its config
    dict, its toy settings (toy.task.ToyConfig), the tokenizer, the PRM, the SFT model it started
    from, the reference of its implicit reward: the SFT model, or the final policy for
    reference=policy)."""
    import data
    import model as M
    from toy import task

    for need in ("prm", "config.json", "summary.json"):
        if not os.path.exists(os.path.join(run, need)):
            raise SystemExit(f"toy/plot.py: {run} has no {need}: {flag} needs a finished train.py run "
                             f"with process rewards (its exported PRM)")
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    sft_path = os.path.join(run, "sft")  # the SFT model: the toy's own <run>/sft, or the run's --model_path
    if not os.path.isdir(sft_path):
        with open(os.path.join(run, "summary.json")) as f:
            sft_path = json.load(f)["model_path"]
    toy = task.run_settings(os.path.join(run, "policy"))[0]
    tokenizer = data.load_tokenizer(os.path.join(run, "prm"))
    prm = M.load_model(os.path.join(run, "prm"))
    sft = M.load_model(sft_path)
    ref = M.load_model(os.path.join(run, "policy")) if config.get("reference") == "policy" else sft
    return config, toy, tokenizer, prm, sft, ref


def token_rewards_picture(run, out_dir, n_wrong=4, n_right=2, seed=0):
    """The PRM of the train.py run in folder `run` (<run>/prm) crediting held-out responses: sampled
    at temperature 1 from the model RL started from (the run's SFT model, where the careless
    habit is common), the first n_wrong wrong and n_right right ones, each token's reward
    beta * log(pi_phi / pi_ref) with the run's beta and reference (the SFT model, or the final
    policy for reference=policy). On the products task each decision line is marked careful or
    slip (toy.task.toy_decisions), and every line's summed reward is written under it. Writes
    <out_dir>/token_credit.png; returns its path."""
    import data
    import verify
    from rollout import generate
    from toy import task

    config, toy, tokenizer, prm, sft, ref = load_run(run, "--token_rewards")
    rows = task.test_rows(toy)
    problems = task.held_out_problems(toy, tokenizer, config["max_prompt_tokens"])
    chosen = []  # (problem, response ids, right)
    wanted = {False: n_wrong, True: n_right}
    for start in range(0, len(problems), 64):
        batch = problems[start:start + 64]
        responses = generate(sft, [p.prompt_ids for p in batch], config["max_response_tokens"],
                             data.stop_token_ids(tokenizer), temperature=1.0, seed=seed + start,
                             vocab_size=len(tokenizer))
        _, scores = verify.score_responses(tokenizer, batch, responses)  # as train.py scored them
        for problem, ids, score in zip(batch, responses, scores):
            right = score == 1.0
            if wanted[right] > 0:
                wanted[right] -= 1
                chosen.append((problem, ids, right))
        if not any(wanted.values()):
            break
    chosen.sort(key=lambda c: c[2])  # the wrong ones first
    credit = token_credit(prm, ref, [p.prompt_ids for p, _, _ in chosen], [ids for _, ids, _ in chosen],
                          config["beta"])
    examples = []
    stops, special = data.stop_token_ids(tokenizer), set(tokenizer.all_special_ids)
    for (problem, ids, right), rewards in zip(chosen, credit):
        question = rows[int(problem.id.rsplit(":", 1)[1])]["prompt"][0]["content"]
        tokens = ["■" if i in stops else "◆" if i in special else "⏎" if t == "\n" else t
                  for t, i in zip((tokenizer.decode([i]) for i in ids), ids)]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        starts = [0] + [k + 1 for k, t in enumerate(tokens) if t == "⏎"]  # token index of each line
        ends = starts[1:] + [len(tokens)]
        decisions = dict(task.toy_decisions(question, text)) if toy.toy_task == "products" else {}
        marks = [(a, f"{decisions[i] + ' ' if i in decisions else ''}{sum(rewards[a:b]):+.2f}")
                 for i, (a, b) in enumerate(zip(starts, ends))]
        examples.append({"tokens": tokens, "rewards": rewards, "marks": marks,
                         "label": f"{question} = {problem.ground_truth}:  {'right' if right else 'WRONG'},  "
                                  f"r_phi(y) = {sum(rewards):+.2f}"})
    os.makedirs(out_dir, exist_ok=True)
    return draw_token_credit(examples, os.path.join(out_dir, "token_credit.png"),
                             title=f"the PRM of {run} on held-out responses of its SFT model "
                                   f"(temperature 1); under each line: its summed reward")


# ----------------------------------------------------------------------------------------------
# how far the dense reward moves the advantage (--advantages RUN)
# ----------------------------------------------------------------------------------------------

def advantage_agreement(process, outcome, mask, cfg):
    """PRIME's token advantages against outcome-only RLOO's (train.compute_advantages with and
    without the process rewards [B, T]; outcome [B], mask [B, T], cfg a train.Config), under each
    normaliser of the process rewards. The rows are taken a training step's batch at a time
    (cfg.prompts_per_step groups of K, as one rank holds them), since the normaliser and the
    whitening see one step's batch. For each process_norm, a dict:
      r               Pearson correlation of the two advantages over every response token
      same_sign       share of the tokens where both advantages have the same sign
      wrong_pushed_up share of the wrong responses' tokens with a positive PRIME advantage (the
                      dense reward crediting part of a wrong response; None without one)
      within          PRIME's advantage spread inside a response (mean over responses of the std
                      of its tokens' advantages); RLOO's is 0, one advantage per response
      between         the spread of the responses' mean advantages"""
    import dataclasses

    import torch

    import train

    def advantages(rewards, norm):  # [B, T], one step's batch of rows at a time
        step = cfg.prompts_per_step * cfg.samples_per_prompt
        step_cfg = dataclasses.replace(cfg, process_norm=norm)
        return torch.cat([train.compute_advantages(None if rewards is None else rewards[start:start + step],
                                                   outcome[start:start + step], mask[start:start + step], step_cfg)
                          for start in range(0, len(outcome), step)])

    valid = mask.bool()
    wrong = (outcome == 0)[:, None] & valid  # [B, T]
    rloo = advantages(None, cfg.process_norm)[valid]
    result = {}
    for norm in train.PROCESS_NORMS:
        prime = advantages(process, norm)
        rows = [prime[i][valid[i]] for i in range(len(prime))]
        result[norm] = {
            "r": float(torch.corrcoef(torch.stack([prime[valid], rloo]))[0, 1]),
            "same_sign": float(((prime[valid] > 0) == (rloo > 0)).float().mean()),
            "wrong_pushed_up": float((prime[wrong] > 0).float().mean()) if wrong.any() else None,
            "within": float(torch.stack([row.std(unbiased=False) for row in rows]).mean()),
            "between": float(torch.stack([row.mean() for row in rows]).std(unbiased=False)),
        }
    return result


def advantages_report(run, n_prompts=128, seed=0):
    """The PRM of the train.py run in folder `run` on batches like the run's training steps: K
    samples at temperature 1 from the run's SFT model for each of n_prompts held-out problems, the
    groups the run's accuracy filter keeps, their implicit process rewards, and
    advantage_agreement of the advantages train.py computes from them, a step's batch
    (prompts_per_step groups) at a time. Prints a line per normaliser; returns the dict."""
    import dataclasses

    import torch

    import data
    import train
    import verify
    from rollout import generate
    from support.batches import Rollouts
    from toy import task

    config, toy, tokenizer, prm, sft, ref = load_run(run, "--advantages")
    fields = {f.name for f in dataclasses.fields(train.Config)}
    cfg = train.Config(**{k: v for k, v in config.items() if k in fields})
    K = cfg.samples_per_prompt
    rows = [p for p in task.held_out_problems(toy, tokenizer, cfg.max_prompt_tokens)[:n_prompts] for _ in range(K)]
    responses = generate(sft, [p.prompt_ids for p in rows], cfg.max_response_tokens,
                         data.stop_token_ids(tokenizer), temperature=1.0, seed=seed, vocab_size=len(tokenizer))
    scores = torch.tensor(verify.score_responses(tokenizer, rows, responses)[1], dtype=torch.float32)
    keep = train.kept_groups(scores, cfg).tolist()
    kept = [g * K + k for g, kept_group in enumerate(keep) if kept_group for k in range(K)]
    if not kept:
        raise SystemExit(f"toy/plot.py: none of {len(keep)} groups of {K} samples of the SFT model has a mean outcome "
                         f"in [{cfg.filter_low}, {cfg.filter_high}]: no batch to compare")
    rollouts = Rollouts(prompts=[rows[i].prompt_ids for i in kept], responses=[responses[i] for i in kept],
                              outcome=scores[kept], truncated=[False] * len(kept))
    mask = rollouts.mask("cpu")
    result = advantage_agreement(process_rewards(prm, ref, rollouts, cfg.beta), rollouts.outcome, mask, cfg)
    print(f"{run}: {sum(keep)} of {len(keep)} groups of {K} kept ({len(kept)} responses, {int(mask.sum())} "
          f"tokens, outcome mean {float(rollouts.outcome.mean()):.3f}), in batches of {cfg.prompts_per_step} "
          f"groups; PRIME's token advantages against outcome-only RLOO's:")
    for norm, stats in result.items():
        up = "-" if stats["wrong_pushed_up"] is None else f"{stats['wrong_pushed_up']:.1%}"
        print(f"  process_norm={norm}{' (the run)' if norm == cfg.process_norm else ''}: r = {stats['r']:.3f}, "
              f"same sign on {stats['same_sign']:.1%} of tokens, {up} of the wrong responses' tokens pushed up; "
              f"spread within a response {stats['within']:.3f}, between responses {stats['between']:.3f}")
    return result


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="metrics.jsonl files, or folders to search for them")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default docs)")
    parser.add_argument("--token_rewards", metavar="RUN", help="a train.py run folder: draw its PRM's token "
                        "credit on held-out responses to <out>/token_credit.png (instead of the curves)")
    parser.add_argument("--advantages", metavar="RUN", help="a train.py run folder: print how far its PRM's "
                        "process rewards move the advantages away from outcome-only RLOO's, on a batch of its SFT "
                        "model's samples (instead of the curves)")
    args = parser.parse_args(argv)
    if args.token_rewards:
        print(f"wrote {token_rewards_picture(args.token_rewards, args.out)}")
        return
    if args.advantages:
        advantages_report(args.advantages)
        return
    if not args.paths:
        parser.error("give metrics.jsonl files or folders, --token_rewards RUN or --advantages RUN")
    try:
        runs = load_runs(args.paths)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    runs = {label: [run for run in members if run["rows"]] for label, members in runs.items()}
    runs = {label: members for label, members in runs.items() if members}
    if not runs:
        raise SystemExit(f"toy/plot.py: no metrics.jsonl with any step under {' '.join(args.paths)}")
    print(table(runs), flush=True)
    for path in draw(runs, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
