"""plot.py: curves and a table from train.py runs, grouped into configurations over seeds.

    python plot.py runs/ablate --out docs/          # what ablate.py wrote
    python plot.py runs/a/metrics.jsonl runs/b      # any metrics.jsonl files or folders

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

WINDOW = 10      # steps: the "final" reward is the mean of the last WINDOW; the smoothing window
BASELINE = "rloo"
PLOTS = {  # file -> (metrics.jsonl key, y-axis label)
    "training_reward.png": ("outcome_accuracy", "training reward (outcome accuracy, before filtering)"),
    "prm_accuracy.png": ("prm_accuracy", "PRM pairwise accuracy"),
    "response_length.png": ("response_length_mean", "mean response length (tokens)"),
}
ORDER = ["prime", "rloo", "offline_prm", "double_forward", "policy_ref", "no_filter"]  # ablate.py's


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


def table(runs_by_label):
    """The markdown table (a string): per label the seeds, the final training reward, the
    steps to reach the rloo baseline's final training reward, the final held-out accuracy."""
    baseline = None
    if BASELINE in runs_by_label:  # the target: rloo's smoothed seed-mean at its last step
        baseline = smooth(seed_curve(runs_by_label[BASELINE], "outcome_accuracy")[1])[-1]
    target = f"{baseline:.3f}" if baseline is not None else "n/a"
    lines = [f"| config | seeds | final training reward (last {WINDOW} steps) | steps to reach {BASELINE}'s "
             f"final reward ({target}) | held-out accuracy at the end |",
             "|---|---|---|---|---|"]
    for label, runs in runs_by_label.items():
        mean, std = final_reward(runs)
        if baseline is None:
            reach = "n/a"
        else:
            step = steps_to_reach(runs, baseline)
            total = max(row["step"] for run in runs for row in run["rows"])
            reach = f"{step} of {total}" if step is not None else f"not within {total}"
        evals = held_out(runs)
        accuracy = f"{evals[0]:.3f} ± {evals[1]:.3f} (n={evals[2]})" if evals else "n/a"
        lines.append(f"| {label} | {len(runs)} | {mean:.3f} ± {std:.3f} | {reach} | {accuracy} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------

def draw(runs_by_label, out_dir):
    """The PNGs of PLOTS in out_dir; returns their paths."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot.py: the PNGs need matplotlib: python -m pip install -r requirements-plot.txt "
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


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="metrics.jsonl files, or folders to search for them")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default docs)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.paths)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    runs = {label: [run for run in members if run["rows"]] for label, members in runs.items()}
    runs = {label: members for label, members in runs.items() if members}
    if not runs:
        raise SystemExit(f"plot.py: no metrics.jsonl with any step under {' '.join(args.paths)}")
    print(table(runs), flush=True)
    for path in draw(runs, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
