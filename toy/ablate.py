"""toy/ablate.py: the paper's ablations in miniature, on the toy task, over several seeds.

    python toy/ablate.py                                # prime, rloo, offline_prm x 3 seeds (products toy)
    python toy/ablate.py --setting=expression           # the same on train.py's default toy
    python toy/ablate.py --configs prime,rloo --seeds 5 --steps 60 --parallel 2 --root runs/ablate
    python toy/ablate.py --steps 2 --toy_hidden=32 ...  # any other --key=value goes to train.py
    python toy/plot.py runs/ablate --out docs/          # then the curves and the table

Every run starts from ONE shared SFT checkpoint, as the paper's ablations start from one SFT
model: `train.py --stage=sft --out_dir=<root>/sft` makes it once, and each run gets it as
--model_path. Each run is `python train.py ...` in a subprocess, writing
<root>/<config>/seed<k>/ (metrics.jsonl, summary.json, train.log); a run whose summary.json
exists is skipped, so re-running the same command resumes (train.py itself resumes a run that
was cut off from its last checkpoint).

The configurations (train.py switches; docs/notes.md §8 for the paper's results):

    prime           the recipe: online implicit PRM, single-forward, SFT reference, filter on
    rloo            process_rewards=false: outcome-only RLOO, the baseline of Fig. 4 (the paper:
                    PRIME reaches RLOO's final training reward in 40% of the steps)
    offline_prm     prm_update=frozen with an offline PRM (Fig. 6: an offline PRM's accuracy
                    decays while the online one's rises): the PRM of a run whose policy was held
                    fixed (policy_lr=0, so every sample came from the SFT policy, not the policy
                    being trained), trained for as many steps; made once, in
                    <root>/_offline_prm_source (toy/plot.py skips folders starting with "_")
    double_forward  prm_update=double: re-score after the PRM update (§5.3 / App. B.2)
    policy_ref      reference=policy: pi_theta_old as pi_ref (§5.2 / App. B.1)
    no_filter       accuracy_filter=false: keep every prompt
    no_norm         process_norm=none: no max-|return| normaliser of the process rewards (ours,
                    not the paper's; verl's prime_norm=none): they weigh against the outcome by
                    beta alone

--parallel N runs N trainings at once, each with cores/N torch threads.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # train.py's folder

CONFIGS = {  # name -> train.py overrides; {offline_prm} is the offline PRM's folder
    "prime": [],
    "rloo": ["--process_rewards=false"],
    "offline_prm": ["--prm_update=frozen", "--prm_path={offline_prm}"],
    "double_forward": ["--prm_update=double"],
    "policy_ref": ["--reference=policy"],
    "no_filter": ["--accuracy_filter=false"],
    "no_norm": ["--process_norm=none"],
}
DEFAULT_CONFIGS = "prime,rloo,offline_prm"

# The toy setting every run of an ablation shares: train.py overrides that come before the user's
# own (so a --key=value given to ablate.py wins). "products" is the task with several independent
# places to slip (docs/toy.md), sized to run 3 seeds of prime and rloo in
# well under an hour on 2 cores: 16 prompts x 4 samples per step, one PRM and one policy update
# per step. "expression" is train.py's default toy as it is.
SETTINGS = {
    "products": ["--toy_task=products", "--toy_products=3", "--toy_careless_share=0.5", "--max_response_tokens=80",
                 "--prompts_per_step=16", "--policy_mini_batch=64", "--prm_mini_batch=64"],
    "expression": [],
}
DEFAULT_SETTING = "products"
OFFLINE_SEED = 1000  # the offline PRM's run: a seed none of the compared runs uses
RESERVED = ("stage", "out_dir", "model_path", "seed", "steps", "print_config")  # set by ablate.py


@dataclass
class Job:
    """One train.py run: its name for progress lines, its out_dir, and its argv after train.py.
    `done_file` existing means the job is finished (skipped on a re-run)."""
    name: str
    out_dir: str
    args: list
    done_file: str


def plan(configs, seeds, root, steps=None, extra=()):
    """The jobs of an ablation, in three phases that must run in order: [[SFT], [offline PRM
    source] or [], [every config x seed]]. Jobs already done (their done_file exists) are
    dropped. Raises ValueError on an unknown configuration or an override ablate.py sets itself."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if not configs or seeds < 1:
        raise ValueError("need at least one configuration and one seed")
    for arg in extra:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key is None or "=" not in arg:
            raise ValueError(f"train.py overrides are --key=value, got {arg!r}")
        if key in RESERVED:
            raise ValueError(f"--{key} is set by ablate.py per run; remove it")
    root = os.path.abspath(root)
    extra = list(extra)
    run_steps = [f"--steps={steps}"] if steps is not None else []
    sft_dir = os.path.join(root, "sft")
    sft_model = os.path.join(sft_dir, "sft")
    sft = Job("sft", sft_dir, ["--stage=sft", f"--out_dir={sft_dir}", *extra],
              os.path.join(sft_model, "config.json"))
    source_dir = os.path.join(root, "_offline_prm_source")
    source = Job("offline PRM (policy held fixed)", source_dir,
                 [f"--model_path={sft_model}", f"--out_dir={source_dir}", f"--seed={OFFLINE_SEED}", *run_steps,
                  *extra, "--policy_lr=0"], os.path.join(source_dir, "summary.json"))
    runs = []
    for config in configs:
        for seed in range(seeds):
            out = os.path.join(root, config, f"seed{seed}")
            overrides = [a.format(offline_prm=os.path.join(source_dir, "prm")) for a in CONFIGS[config]]
            runs.append(Job(f"{config} seed{seed}", out,
                            [f"--model_path={sft_model}", f"--out_dir={out}", f"--seed={seed}", *run_steps, *extra,
                             *overrides], os.path.join(out, "summary.json")))
    phases = [[sft], [source] if "offline_prm" in configs else [], runs]
    return [[job for job in phase if not os.path.exists(job.done_file)] for phase in phases]


def run_jobs(jobs, parallel, cores=None, python=sys.executable, script="train.py"):
    """Run `python script <job.args>` for every job, `parallel` at a time, the cores split
    between the runs that share them (torch threads); each writes <out_dir>/train.log. Prints a
    line per start and end; returns the names of the jobs that failed (their log's tail printed)."""
    cores = cores or os.cpu_count() or 1
    threads = str(max(1, cores // max(1, min(parallel, len(jobs)))))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    waiting, running, failed, finished = list(jobs), [], [], 0
    while waiting or running:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            os.makedirs(job.out_dir, exist_ok=True)
            log_path = os.path.join(job.out_dir, "train.log")
            log = open(log_path, "a")
            process = subprocess.Popen([python, script, *job.args], cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
            running.append((job, process, log, log_path, time.time()))
            print(f"start  {job.name}  ({log_path})", flush=True)
        time.sleep(0.2)
        for entry in [r for r in running if r[1].poll() is not None]:
            job, process, log, log_path, started = entry
            running.remove(entry)
            log.close()
            finished += 1
            status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            print(f"[{finished}/{len(jobs)}] {status}  {job.name}  {time.time() - started:.0f}s", flush=True)
            if process.returncode != 0:
                failed.append(job.name)
                with open(log_path) as f:
                    print("".join(f.readlines()[-15:]), flush=True)
    return failed


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     epilog="Any other --key=value is passed to every train.py run.")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default {DEFAULT_CONFIGS})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per configuration (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="PRIME steps per run (default: train.py's)")
    parser.add_argument("--root", default="runs/ablate", help="where the runs go (default runs/ablate)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once, torch threads split (default 1)")
    parser.add_argument("--setting", default=DEFAULT_SETTING, choices=sorted(SETTINGS),
                        help=f"the toy setting (default {DEFAULT_SETTING}): train.py overrides before your own")
    args, extra = parser.parse_known_args(argv)
    extra = SETTINGS[args.setting] + extra
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    try:
        phases = plan(args.configs.split(","), args.seeds, args.root, args.steps, extra)
    except ValueError as error:
        parser.error(str(error))
    todo = sum(len(p) for p in phases)
    print(f"ablate: {args.configs} x {args.seeds} seeds under {os.path.abspath(args.root)}; "
          f"{todo} run(s) to do (finished ones are skipped)", flush=True)
    for phase in phases:
        failed = run_jobs(phase, args.parallel)
        if failed:  # a later phase needs this one's output (the SFT model, the offline PRM)
            raise SystemExit(f"toy/ablate.py: failed: {', '.join(failed)}; see their train.log. Re-run the same "
                             f"command to retry (finished runs are skipped)")
    print(f"ablate: all runs done. Plots and table: python toy/plot.py {args.root} --out docs/", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
