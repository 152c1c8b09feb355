"""train.py: PRIME's training loop (Cui et al. 2025, arXiv 2502.01456, Algorithm 1).

    python train.py                                   # the toy preset on the CPU (SFT, then PRIME)
    torchrun --nproc_per_node=2 train.py              # the same on 2 CPU ranks (gloo)
    torchrun --nproc_per_node=8 train.py --preset=eurus2-7b-prime \\
        --model_path=/ckpt/Eurus-2-7B-SFT --train_files=/data/train.parquet --out_dir=runs/prime
    python train.py --help                            # every setting, its meaning, each preset's value

One PRIME iteration (Alg. 1; the official code's "single-forward" order, docs/notes.md §2, §10):

    collect   each rank samples K responses for each of its prompts (rollout.py), scores them
              (verify.py), keeps prompts whose mean score lies in [0.2, 0.8], and samples more
              until it holds its quota of kept prompts                           Alg. 1 lines 4-6
    old       log-probs of the responses under the policy that sampled them (no grad)
    PRM       for each PRM mini-batch, in order: reference log-probs (no grad), PRM log-probs
              (grad); the implicit process rewards beta*(logp_prm - logp_ref) are kept from this
              very forward, and the cross-entropy against the outcome updates the PRM  lines 7-8
    advantage process rewards / max|return|, leave-one-out returns of process and outcome
              rewards, whitened over every token of every rank                  line 9, Eq. 5
    policy    PPO clip loss over shuffled mini-batches                          line 10, Eq. 6

Three models share one architecture (model.py): the policy pi_theta and the implicit PRM pi_phi
are trained, the reference pi_ref is frozen; all start from the SFT checkpoint (Alg. 1 line 1).
All three are sharded with FSDP2 over every rank, one rank too (then FSDP2 only applies the
mixed precision), so one process computes a model's numbers exactly as N do.

What the algorithm does not need lives in support/ (the command line, processes, checkpoints,
metrics, the SFT stage that makes the starting checkpoint, the memory plan) and toy/ (the CPU
task). Every step appends one JSON line to <out_dir>/metrics.jsonl; a checkpoint is written every
`save_every` steps and a re-run with the same out_dir resumes from the last complete one.
"""

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoTokenizer

import data
import eval as evaluation
import rewards
import rollout
import verify
from support import batches, cli, memory, metrics, sandbox, sft
from support.batches import Rollouts, all_logprobs, micro_batches, response_logprobs
from support.checkpoint import export, resume_from, save_checkpoint
from support.cli import knob, out_of
from support.distributed import (adamw, all_max, all_sum, clip_and_step, init_distributed, load_for_training, log,
                                 require_torch, seed_for)
from toy import task as toy

PRM_UPDATES = ("single", "double", "frozen")  # Config.prm_update
REFERENCES = ("sft", "policy")                # Config.reference
PROCESS_NORMS = ("batch_norm", "none")        # Config.process_norm


# ==============================================================================================
# 1. The settings: defaults are the paper's recipe, Eurus-2-7B-PRIME (docs/notes.md §6).
# ==============================================================================================

@dataclass
class Config:
    """PRIME's settings. The defaults are the paper's; `python train.py` selects the toy preset."""
    preset: str = knob("toy", "toy (CPU, minutes), eurus2-7b-prime (the paper's PRIME recipe: these defaults) or "
                              "eurus2-7b-sft (its SFT recipe)")
    out_dir: str = knob("runs/eurus2-7b-prime", "checkpoints, metrics.jsonl, summary.json, the exported models")
    seed: int = knob(0, "seeds data order, sampling and shuffling (per step and rank, so resume is exact)")

    # models and data: three networks of one architecture (Alg. 1 line 1); the toy makes its own
    model_path: str = knob("", "SFT checkpoint (Hugging Face folder): policy, PRM and reference start here. "
                               "Toy: empty = <out_dir>/sft, trained first if missing")
    prm_path: str = knob("", "PRM initialisation if not model_path (the paper starts it from the SFT model)")
    train_files: str = knob("", "comma-separated Eurus-2-RL-Data parquet files; empty = the built-in toy task")
    eval_files: str = knob("", "comma-separated validation parquet files (greedy accuracy); empty with the "
                               "toy = its held-out split")
    max_prompt_tokens: int = knob(1024, "drop longer prompts")
    max_response_tokens: int = knob(3072, "sampling stops here")

    # rollout and filter (Alg. 1 lines 4-6): K samples per prompt give each response K-1 others
    # to serve as its baseline; prompts all right or all wrong carry no signal and are dropped
    prompts_per_step: int = knob(256, "kept prompts per step, all ranks together")
    samples_per_prompt: int = knob(4, "K responses per prompt")
    temperature: float = knob(1.0, "sampling temperature")
    top_p: float = knob(1.0, "nucleus sampling mass")
    filter_low: float = knob(0.2, "keep a prompt when its mean outcome is >= this")
    filter_high: float = knob(0.8, "... and <= this")
    max_collect_rounds: int = knob(20, "stop with an error when this many sampling rounds cannot fill a step")
    max_unscored_share: float = knob(0.1, "stop when more than this share of a sampling round's responses could not "
                                          "be scored (verifier timeouts, crashes, malformed rows), rather than train on zeros")
    allow_unjailed_code: bool = knob(False, "true: train on code problems even where the bwrap jail cannot run, "
                                            "accepting untrusted programs under a tripwire only (docs/sandbox.md)")

    # implicit PRM (Alg. 1 lines 7-8): beta scales log(pi_phi/pi_ref) into a reward. The PRM's
    # learning rate is the larger one (1e-6 against the policy's 5e-7): an online PRM has to
    # follow the responses of a policy that keeps changing
    beta: float = knob(0.05, "implicit reward scale beta in beta*log(pi_phi/pi_ref)")
    prm_lr: float = knob(1e-6, "PRM AdamW learning rate, constant")
    prm_weight_decay: float = knob(0.0, "PRM AdamW weight decay")
    prm_grad_clip: float = knob(10.0, "PRM gradient-norm clip")
    prm_mini_batch: int = knob(256, "responses per PRM optimizer step, in order, all ranks")

    # advantage (Alg. 1 line 9): gamma 1 sums every later process reward into a token's return
    gamma: float = knob(1.0, "discount of both returns")

    # policy (Alg. 1 line 10): one PPO epoch over the step's mini-batches, so the ratio pi/pi_old
    # departs from 1 only through the step's earlier mini-batch updates. No KL term and no
    # entropy bonus: the recipe sets both coefficients to 0 (docs/notes.md §4)
    policy_lr: float = knob(5e-7, "policy AdamW learning rate, constant")
    policy_weight_decay: float = knob(0.01, "policy AdamW weight decay")
    policy_grad_clip: float = knob(1.0, "policy gradient-norm clip")
    policy_mini_batch: int = knob(256, "responses per policy optimizer step, shuffled, all ranks")
    ppo_epochs: int = knob(1, "passes over each step's responses")
    clip_eps: float = knob(0.2, "PPO ratio clip")
    steps: int = knob(592, "PRIME iterations (learning rates are constant: no warmup, no decay)")

    # the paper's ablations (Fig. 4, §5 / App. B) are switches; the defaults are the recipe
    process_rewards: bool = knob(True, "false: outcome-only RLOO, the paper's baseline (no PRM, no reference)")
    prm_update: str = knob("single", "single: rewards from the forward that trains each PRM mini-batch; double: "
                                     "update on every mini-batch, then re-score; frozen: never update "
                                     "(with --prm_path: an offline PRM)")
    reference: str = knob("sft", "pi_ref of the implicit reward: sft (the frozen SFT model) or policy "
                                 "(pi_theta_old, no reference model)")
    accuracy_filter: bool = knob(True, "false: keep every prompt's group (filter_low/high ignored)")
    process_norm: str = knob("batch_norm", "batch_norm: divide the process rewards by the largest |process "
                                           "return| of each group of process_norm_rows responses (the official "
                                           "default, not in the paper); none: no normaliser, the rewards "
                                           "beta*log(pi_phi/pi_ref) as they are ([VR] prime_norm=none; not an "
                                           "ablation of the paper)")
    process_norm_rows: int = knob(128, "responses that share one batch_norm divisor, in step order, on any number "
                                       "of ranks: 128 = each official worker's share (1024 rows on 8 GPUs); 0 (or "
                                       "more than a step holds) = the whole step")
    official_first_iteration: bool = knob(False, "true: the first iteration's updates run at learning rate 0, as "
                                                 "in the official code (its schedule starts at 0; AdamW's moments "
                                                 "still advance), so N steps are N-1 updates (docs/notes.md §2)")

    # the machine: precision, memory, checkpoints
    bf16: bool = knob(True, "bf16 compute with fp32 master weights (CUDA); reference kept in bf16")
    activation_checkpointing: bool = knob(True, "recompute each layer in backward to save memory")
    micro_batch_tokens: int = knob(16384, "packed tokens per forward/backward on one rank")
    gpu_memory_utilization: float = knob(0.9, "share of each GPU's memory the run may use: sampling sizes its KV "
                                              "cache to fit it (support/memory.py)")
    dist_timeout_minutes: int = knob(30, "how long a rank waits at a collective before the run fails")
    save_every: int = knob(16, "checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = knob(2, "complete checkpoints kept on disk")
    eval_every: int = knob(16, "greedy eval every this many steps (0: only before and after)")

    def problems(self):
        return [p for p in (out_of("prm_update", self.prm_update, PRM_UPDATES),
                            out_of("reference", self.reference, REFERENCES),
                            out_of("process_norm", self.process_norm, PROCESS_NORMS)) if p] + [
            f"--{name}={getattr(self, name)}: {why}" for name, ok, why in (
                ("beta", self.beta > 0, "must be positive"),
                ("gamma", 0 <= self.gamma <= 1, "must lie in [0, 1]"),
                ("clip_eps", 0 < self.clip_eps < 1, "must lie in (0, 1)"),
                ("temperature", self.temperature > 0, "must be positive: K greedy samples would all be the same"),
                ("top_p", 0 < self.top_p <= 1, "must lie in (0, 1]"),
                ("filter_low", 0 <= self.filter_low <= self.filter_high <= 1,
                 "need 0 <= filter_low <= filter_high <= 1"),
                ("max_unscored_share", 0 <= self.max_unscored_share <= 1, "must lie in [0, 1]"),
                ("gpu_memory_utilization", 0 < self.gpu_memory_utilization <= 1, "must lie in (0, 1]")) if not ok]


PRESETS = {"toy": toy.PRESET, "eurus2-7b-prime": {}, "eurus2-7b-sft": sft.PRESET}
SECTIONS = (Config, toy.ToyConfig, sft.SFTConfig, memory.PlanConfig)  # every --key=value (support/cli.py)


# ==============================================================================================
# 2. The loop: Algorithm 1, line by line. Each step's function follows, in order.
# ==============================================================================================


def main(argv):
    require_torch()  # an older torch stops here, with the reason, not minutes into a run
    cfg, toy_cfg, sft_cfg, plan_cfg = resolved = settings(argv)
    if plan_cfg.memory_plan:  # the per-GPU memory of every phase, on fake tensors, on any machine
        world, gpu = memory.machine(plan_cfg)
        if sft_cfg.stage == "prime":
            batches.check_arithmetic(cfg, world)
        raise SystemExit(memory.run_plan(cfg, sft_cfg, world, gpu))
    rank, world, device, mesh = init_distributed(timedelta(minutes=cfg.dist_timeout_minutes))
    os.makedirs(cfg.out_dir, exist_ok=True)
    if sft_cfg.stage == "prime":
        batches.check_arithmetic(cfg, world)
    # The resolved settings, beside the run's outputs: eval.py reads them to rebuild the toy's
    # held-out problems, and a reader can see what produced the metrics.
    if rank == 0:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(cli.flat(resolved), f, indent=2)
    model_path = sft.sft_model_path(cfg, sft_cfg, toy_cfg, device, mesh)  # given, or made here first
    if sft_cfg.stage == "sft":
        dist.destroy_process_group()
        return
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_problems, held_out = load_problems(cfg, toy_cfg, tokenizer)

    # Alg. 1 line 1: the policy pi_theta, the implicit PRM pi_phi and the reference pi_ref, all
    # from the SFT model (the reference frozen); AdamW for the two that learn.
    policy, prm, ref, models, optimizers = build_models(cfg, model_path, device, mesh)
    stream = data.PromptStream(len(train_problems), cfg.seed, rank, world)  # this rank's prompts
    # A resumed run takes the counters, the weights, the optimizer moments and every rank's prompt
    # stream from its newest complete checkpoint; a fresh run starts at step 0.
    progress = Progress(**resume_from(os.path.join(cfg.out_dir, "checkpoints"),
                                      os.path.join(cfg.out_dir, "metrics.jsonl"), models, optimizers, stream))
    if progress.eval_accuracy_start is None:
        progress.eval_accuracy_start = held_out_accuracy(policy, tokenizer, held_out, cfg, device)
        log(f"held-out greedy accuracy before PRIME: {progress.eval_accuracy_start}")

    start_time = time.time() - progress.seconds  # so the seconds of an interrupted run carry on
    for step in range(progress.step + 1, cfg.steps + 1):  # Alg. 1 line 2: for each iteration
        clock = {"start": time.time()}  # time.time() at the end of each phase, for the metrics
        set_learning_rates(optimizers, cfg, step)

        # Alg. 1 lines 3-6: draw prompts, sample K responses to each (rollout.py), score every
        # response with the outcome verifier r_o (verify.py), keep the prompts whose mean score
        # lies in [0.2, 0.8]; repeat until this rank holds its share of the step's prompts.
        rollouts, counts = collect(policy, train_problems, stream, tokenizer, cfg, step, device)
        mask = rollouts.mask(device)  # [B, T]: 1 on each response's tokens
        # Validate the batch's values once, here where it is built (groups of K, no empty response,
        # outcomes in [0, 1]); the reward functions below check only shapes and settings.
        rewards.check_batch(mask, rollouts.outcome, cfg.samples_per_prompt)
        clock["collect"] = time.time()

        # log pi_theta_old(y_t): the policy that sampled; the PPO ratio's denominator (Eq. 6)
        old_logp, _ = all_logprobs(policy, rollouts, cfg, device, cfg.temperature)  # [B, T]
        clock["old"] = time.time()

        # Alg. 1 lines 7-8: implicit process rewards r_t = beta log pi_phi(y_t)/pi_ref(y_t), and the
        # PRM's cross-entropy update on the outcomes (each PRM mini-batch is scored by the very
        # forward that then trains it: the official "single-forward" order).
        token_rewards, prm_loss = (prm_step(prm, ref, optimizers.get("prm"), rollouts, cfg, device, cfg.prm_update)
                                   if cfg.process_rewards else (None, None))  # [B, T], float
        clock["prm"] = time.time()

        # Alg. 1 line 9: leave-one-out (RLOO) returns of process and outcome rewards, summed
        # and whitened into advantages (Eq. 5, as the official code computes it).
        advantages = compute_advantages(token_rewards, rollouts.outcome, mask, cfg)  # [B, T]

        # Alg. 1 line 10: PPO clip updates of the policy over shuffled mini-batches (Eq. 6).
        ppo = policy_step(policy, optimizers["policy"], rollouts, old_logp, advantages, cfg, step, device)
        clock["policy"] = time.time()

        # Bookkeeping: a metrics.jsonl line, a held-out eval now and then, and a checkpoint every
        # save_every steps (the last step's too), from which a re-run resumes exactly.
        row = metrics.step_metrics(step, rollouts, counts, token_rewards, prm_loss, advantages, ppo, clock, cfg,
                                   device)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            row["eval_accuracy"] = held_out_accuracy(policy, tokenizer, held_out, cfg, device)
        metrics.log_step(row, cfg)
        progress.step, progress.seconds = step, time.time() - start_time
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(os.path.join(cfg.out_dir, "checkpoints"), step, models, optimizers,
                            dataclasses.asdict(progress), cfg.keep_checkpoints, stream)

    # The end: the held-out accuracy, the policy (and PRM) as Hugging Face folders for eval.py and
    # transformers (the last checkpoint stays, for a longer re-run), summary.json.
    eval_end = held_out_accuracy(policy, tokenizer, held_out, cfg, device)
    export(policy, tokenizer, os.path.join(cfg.out_dir, "policy"), cfg.bf16)
    prm_out = os.path.join(cfg.out_dir, "prm") if cfg.process_rewards else None
    if prm_out:  # the PRM as trained here: --prm_path of a later offline-PRM (prm_update=frozen) run
        export(prm, tokenizer, prm_out, cfg.bf16)
    if rank == 0:
        summary = {"eval_accuracy_start": progress.eval_accuracy_start, "eval_accuracy_end": eval_end,
                   "steps": max(progress.step, cfg.steps), "eval_problems": len(held_out), "model_path": model_path,
                   "policy_path": os.path.join(cfg.out_dir, "policy"), "prm_path": prm_out, "world_size": world,
                   "train_seconds": time.time() - start_time}
        with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"held-out greedy accuracy: {summary['eval_accuracy_start']} -> {eval_end} after "
              f"{summary['steps']} steps", flush=True)
    dist.destroy_process_group()


# ==============================================================================================
# 3. The three models (Alg. 1 line 1).
# ==============================================================================================


def build_models(cfg, model_path, device, mesh):
    """(policy, prm, ref, models, optimizers) under the ablation switches: `ref` is the network
    whose log-probs are log pi_ref in the implicit reward; `models` and `optimizers` hold what is
    trained, i.e. what a checkpoint stores.
      default                policy, PRM (trained) and a frozen copy of the SFT model as ref
      process_rewards=False  prm = ref = None: outcome-only RLOO needs neither, and skips their
                             memory and forwards (PRIME's step costs +24% over RLOO, [P2] Table 2)
      prm_update=frozen      the PRM is loaded frozen: no optimizer, not checkpointed (on resume
                             it is read again from its path, unchanged)
      reference=policy       ref is the policy itself ([PR] ref_type=policy): prm_step runs before
                             the policy's update, so it scores with pi_theta_old; no third model.
                             (At temperature 1, like the PRM; the PPO ratio's old log-probs use the
                             sampling temperature: the same numbers at the recipe's T = 1.)
    Under bf16 the trained models keep fp32 master weights and compute in bf16, and the frozen
    reference is stored in bf16 (as the official code kept it, docs/notes.md §1): the PRM's bf16
    compute copy of the SFT weights then equals the reference's weights bit for bit, so at step 1
    their log-probs agree exactly and every process reward is exactly 0 (prm_step says why)."""
    def load(path, trainable):
        return load_for_training(path, device, mesh, trainable, cfg.bf16, cfg.activation_checkpointing)

    policy = load(model_path, trainable=True)
    models, optimizers = {"policy": policy}, {"policy": adamw(policy, cfg.policy_lr, cfg.policy_weight_decay)}
    prm = ref = None
    if cfg.process_rewards:
        trained = cfg.prm_update != "frozen"
        prm = load(cfg.prm_path or model_path, trainable=trained)
        if trained:
            models["prm"], optimizers["prm"] = prm, adamw(prm, cfg.prm_lr, cfg.prm_weight_decay)
        ref = policy if cfg.reference == "policy" else load(model_path, trainable=False)
    return policy, prm, ref, models, optimizers


# ==============================================================================================
# 4. Collect: sample, verify, filter, refill (Alg. 1 lines 4-6).
# ==============================================================================================


def collect(policy, problems, stream, tokenizer, cfg, step, device):
    """Sample until this rank holds cfg.prompts_per_step / world prompts whose K responses have
    a mean outcome inside the filter's bounds (all ranks take part in every round until all are
    full: sampling under FSDP is collective); a rank with a full quota samples nothing in a round.
    Kept prompts beyond the quota go back to the stream's buffer as prompts (their responses are
    dropped), as in the official code.

    Each rank fills its own quota from its own prompts here; the official code samples the whole
    batch, filters it, and buffers or draws more prompts for the batch as a whole (docs/notes.md
    §5). The kept prompts are drawn by the same rule either way; only which rank holds a prompt,
    and so the batch's mix within a step, differs.

    Returns (Rollouts with rows in groups of K, counts): counts holds the step's totals before
    filtering, "sampled" responses, "correct" (the sum of their outcomes), "groups" and "kept",
    and "unscored_<kind>": responses the verifier failed to score, per kind of verify.FAILURES."""
    world, rank, K = dist.get_world_size(), dist.get_rank(), cfg.samples_per_prompt
    quota = cfg.prompts_per_step // world
    kept = []  # (problem index, [K responses], [K scores], [K truncated])
    counts = {"sampled": 0, "correct": 0.0, "groups": 0, "kept": 0, **{f"unscored_{k}": 0 for k in verify.FAILURES}}
    eos = data.stop_token_ids(tokenizer)  # EOS and the chat end-of-turn token
    bar = tqdm(total=0, desc=f"step {step} sample", unit="response", leave=False, disable=rank != 0)
    for round_ in range(cfg.max_collect_rounds):
        # A rank that still needs prompts samples a full quota's worth (the filter keeps only
        # some); a full rank samples nothing but still enters generate, whose weight gathering
        # is collective.
        batch = stream.take(quota) if len(kept) < quota else []
        rows = [problems[i] for i in batch for _ in range(K)]  # K contiguous copies of each prompt
        bar.total += len(rows)  # one bar for the step's rounds
        bar.refresh()
        # How many KV-cache slots fit beside the training state: generate samples the rows in
        # chunks that fit them, and prefills their prompts a bounded number of tokens at a time.
        max_batch_tokens, max_prefill_tokens = sampling_bounds(policy, cfg, device, len(rows))
        responses = rollout.generate(policy, [p.prompt_ids for p in rows], cfg.max_response_tokens, eos,
                                     cfg.temperature, cfg.top_p, seed=seed_for(cfg.seed, step, round_, rank),
                                     vocab_size=len(tokenizer), max_batch_tokens=max_batch_tokens,
                                     max_prefill_tokens=max_prefill_tokens, progress=bar)
        # Alg. 1 line 5: the outcome reward r_o of every response, [len(rows)] in [0, 1]. A response
        # the verifier failed to score reads 0; if too many did (all ranks together), stop rather
        # than train on zeros.
        failures = dict.fromkeys(verify.FAILURES, 0)
        scores = torch.tensor(verify.score_responses(tokenizer, rows, responses, failures)[1], dtype=torch.float32)
        *failed, scored = all_sum([*failures.values(), len(rows)], device)
        if sum(failed) > cfg.max_unscored_share * scored:
            bar.close()
            raise SystemExit(f"train.py: step {step}: the verifier could not score {sum(failed):.0f} of {scored:.0f} "
                             f"responses ({', '.join(f'{k} {n:.0f}' for k, n in zip(verify.FAILURES, failed))}), "
                             f"more than --max_unscored_share={cfg.max_unscored_share} (the warnings above say "
                             f"why); stopping before training on them")
        for kind, n in failures.items():
            counts[f"unscored_{kind}"] += n
        counts["sampled"] += len(scores)
        counts["correct"] += float(scores.sum())
        counts["groups"] += len(batch)
        if batch:
            # Alg. 1 line 6: keep the prompts of middling accuracy, up to the quota; the rest of
            # the kept ones wait in the stream's buffer for the next step
            keep = kept_groups(scores, cfg).tolist()
            for g, i in enumerate(batch):
                if not keep[g]:
                    continue
                if len(kept) < quota:
                    group = responses[g * K:(g + 1) * K]
                    kept.append((i, group, scores[g * K:(g + 1) * K],
                                 [rollout.truncated(r, cfg.max_response_tokens, eos) for r in group]))
                else:
                    stream.buffer.append(i)
            counts["kept"] += sum(keep)
        if all_max(quota - len(kept), device) <= 0:  # every rank is full: the step's batch is complete
            break
    else:  # (for-else: no round ended with every rank full, so some rank's quota is unmet)
        bar.close()
        raise SystemExit(f"train.py: {cfg.max_collect_rounds} sampling rounds could not fill step {step}: "
                         f"too few prompts have a mean outcome in [{cfg.filter_low}, {cfg.filter_high}] "
                         f"(the task is too easy or too hard for this model)")
    bar.close()
    # Flatten the kept groups into rows: prompt g's K responses become rows g*K .. g*K+K-1, the
    # layout every leave-one-out computation in rewards.py assumes.
    return Rollouts(prompts=[problems[i].prompt_ids for i, *_ in kept for _ in range(K)],
                    responses=[r for _, rs, _, _ in kept for r in rs],
                    outcome=torch.cat([s for _, _, s, _ in kept]).to(device),
                    truncated=[t for *_, ts in kept for t in ts]), counts


def kept_groups(scores, cfg):
    """Which prompts of a sampling round to keep, bool [G] from the outcomes [G * K]: the online
    accuracy filter (paper §3.3, Alg. 1 line 6), or every group with accuracy_filter off."""
    if not cfg.accuracy_filter:
        return torch.ones(len(scores) // cfg.samples_per_prompt, dtype=torch.bool)
    return rewards.accuracy_filter(scores, cfg.samples_per_prompt, cfg.filter_low, cfg.filter_high)


def sampling_bounds(policy, cfg, device, rows):
    """rollout.generate's memory bounds for `rows` rows of the FSDP2-sharded policy: the KV cache
    gets what the GPU has left under gpu_memory_utilization (support/memory.py); none on the CPU."""
    return memory.sampling_limits(policy.config, device, rows, cfg.gpu_memory_utilization, cfg.micro_batch_tokens,
                                  memory.compute_dtype(cfg), sharded=True)


# ==============================================================================================
# 5. The PRM step, the advantages and the policy step (Alg. 1 lines 7-10).
# ==============================================================================================


def prm_step(prm, ref, optimizer, rollouts, cfg, device, mode="single"):
    """The implicit PRM's part of a step (Alg. 1 lines 7-8): returns the implicit process rewards
    [B, T] and the PRM's cross-entropy loss (the mean over the step's responses). The PRM goes over
    its mini-batches in order; how scoring and updating interleave is `mode` (docs/notes.md §2):

      single  the official default ([PR] update=after, "single-forward", paper §5.3 / App. B.2):
              each mini-batch's rewards are kept from the very forward whose loss then updates the
              PRM, so mini-batch k is scored by the PRM after k-1 of this step's updates
      double  "double-forward" ([VR] update=before): update on every mini-batch first, then
              re-score every response with the updated PRM in a second, no-grad forward (the
              paper: higher PRM accuracy, similar training reward)
      frozen  no update ([VR] update=none): score under no_grad; `optimizer` is unused and the loss
              is only a diagnostic. Initialised from the SFT model this PRM equals the reference
              and scores 0 everywhere; from --prm_path it is an offline PRM (the paper's Fig. 6)

    `ref` is the network whose log-probs are log pi_ref: the frozen SFT model, or the policy itself
    before this step's update (pi_theta_old; see build_models). It runs on the very same
    micro-batches as the PRM, so when the two hold equal weights (step 1) both forwards are
    identical computations and every reward is exactly 0 (different packing would leave ~1e-6
    noise, which normalize_process_rewards would blow up to unit size, docs/notes.md §1)."""
    if mode not in PRM_UPDATES:
        raise ValueError(f"prm_step: mode must be one of {PRM_UPDATES}, got {mode!r}")
    update = mode != "frozen"
    B, T = len(rollouts.responses), rollouts.width  # this rank's responses, the longest one's length
    mask = rollouts.mask(device)  # [B, T]
    token_rewards = torch.zeros(B, T, device=device)  # r_t, filled in mini-batch by mini-batch
    ref_logp = torch.zeros(B, T, device=device)  # kept for double's second forward
    # The step's rows in order (no shuffle, as [PR]): this rank's share of each PRM mini-batch.
    mini = cfg.prm_mini_batch // dist.get_world_size()
    mini_batches = [list(range(start, start + mini)) for start in range(0, B, mini)]
    losses = []  # each micro-batch's share of its mini-batch's mean loss
    for rows_mini in mini_batches:
        for rows in micro_batches(rows_mini, rollouts.lengths, cfg.micro_batch_tokens, device):
            # log pi_ref and log pi_phi of the same response tokens, [b, T] each
            with torch.no_grad():
                ref_lp, _ = response_logprobs(ref, rollouts, rows, device)
            with torch.set_grad_enabled(update):
                prm_logp, _ = response_logprobs(prm, rollouts, rows, device)
            # Alg. 1 line 8: CE between sigmoid(beta * sum_t log pi_phi/pi_ref) and the outcome
            loss = rewards.prm_ce_loss(prm_logp, ref_lp, mask[rows], rollouts.outcome[rows], cfg.beta)
            if update:  # gradients accumulate over micro-batches to the mini-batch's mean
                (loss * len(rows) / mini).backward()
            losses.append(loss.detach() * len(rows) / mini)
            ref_logp[rows] = ref_lp
            # Alg. 1 line 7 from the same forward: r_t = beta (log pi_phi - log pi_ref), detached
            token_rewards[rows] = rewards.implicit_process_rewards(prm_logp, ref_lp, mask[rows], cfg.beta)
        if update:  # one PRM optimizer step per mini-batch (4 per iteration in the recipe)
            clip_and_step(prm, optimizer, cfg.prm_grad_clip)
    if mode == "double":  # the second forward, on the same micro-batches, with the updated PRM
        with torch.no_grad():
            for rows_mini in mini_batches:
                for rows in micro_batches(rows_mini, rollouts.lengths, cfg.micro_batch_tokens, device):
                    prm_logp, _ = response_logprobs(prm, rollouts, rows, device)
                    token_rewards[rows] = rewards.implicit_process_rewards(prm_logp, ref_logp[rows], mask[rows],
                                                                           cfg.beta)
    return token_rewards, float(torch.stack(losses).sum()) / len(mini_batches)  # one read, at the end


def compute_advantages(token_rewards, outcome, mask, cfg):
    """Advantages [B, T] (Alg. 1 line 9) from the implicit process rewards [B, T] (None when
    process_rewards is off), the outcomes [B] and the response mask [B, T]:
    whiten(RLOO returns of process + outcome rewards), Eq. 5. With None it is the paper's
    baseline, outcome-only RLOO, Eq. 4 (whitened the same way): zero process rewards add nothing
    to the returns.

    Each response gets a return at every token: the sum of its remaining process rewards minus
    the other K-1 responses' baseline, plus its outcome minus theirs. Whitening over all tokens
    of all ranks then sets their scale, so that the PPO step's size does not depend on the
    rewards' units (beta, or the verifier's range). What it does not set is the weight of the
    process term against the outcome term: the official normaliser (process_norm=batch_norm)
    divides the process rewards by the largest |process return| of a group of rows, so the most
    extreme response of the group sets it; with process_norm=none beta does, as in Eq. 5."""
    if token_rewards is None:
        token_rewards = torch.zeros_like(mask)
    elif cfg.process_norm == "batch_norm":
        # [PR] normalised inside each data-parallel worker, over its 128 of the step's 1024 rows on
        # the recipe's 8 GPUs. The group is that number of rows here whatever the number of ranks
        # (process_norm_rows), so 1, 2, 4, 8 or 16 GPUs divide by what the paper's run divided by.
        token_rewards = rewards.normalize_in_groups(token_rewards, mask, cfg.process_norm_rows)
    returns = rewards.rloo_returns(token_rewards, outcome, mask, cfg.samples_per_prompt, cfg.gamma)
    return rewards.whiten(returns, mask)  # over every valid token of every rank


def policy_step(policy, optimizer, rollouts, old_logp, advantages, cfg, step, device):
    """PPO clip updates over shuffled mini-batches (Eq. 6, [PR]'s sequence-mean of token-means),
    ppo_epochs passes. Returns PolicyStats.

    In words (rewards.ppo_clip_loss has the equation): each update raises the log-prob of the
    tokens whose advantage A is positive and lowers it where A is negative; a token whose ratio
    rho = pi_theta / pi_theta_old has already left [1 - eps, 1 + eps] in the direction A favours
    gets no more gradient, so the update has nothing to gain from moving the policy far from the
    one that drew the samples. With one epoch, the first mini-batch sees rho = 1 (up to rounding:
    its micro-batches are packed otherwise than the old log-probs' were); later ones see the drift
    made by the step's earlier mini-batch updates."""
    B = len(rollouts.responses)  # this rank's responses
    mask = rollouts.mask(device)  # [B, T]
    mini = cfg.policy_mini_batch // dist.get_world_size()  # this rank's share of a mini-batch
    # Mini-batches are shuffled (as [PR]), with a seed per step and rank: a resumed run repeats them.
    g = torch.Generator().manual_seed(seed_for(cfg.seed, step, dist.get_rank(), "shuffle"))
    totals = torch.zeros(4, device=device)  # loss, clip_frac, approx_kl, entropy: read once, at the end
    grad_norms = []  # one per optimizer step
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=g).tolist()  # a new shuffle for every epoch
        for start in range(0, B, mini):  # each mini-batch is one optimizer step
            for rows in micro_batches(order[start:start + mini], rollouts.lengths, cfg.micro_batch_tokens,
                                      device):
                # log pi_theta at the sampling temperature, as pi_theta_old was scored: rho = 1 at first
                logp, entropy = response_logprobs(policy, rollouts, rows, device, cfg.temperature)
                loss, ppo = rewards.ppo_clip_loss(logp, old_logp[rows], advantages[rows], mask[rows], cfg.clip_eps)
                weight = len(rows) / mini  # the micro-batch's share of the mini-batch's mean
                (loss * weight).backward()
                token_entropy = (entropy * mask[rows]).sum() / mask[rows].sum()
                totals += weight * torch.stack([loss.detach(), ppo.clip_frac, ppo.approx_kl, token_entropy.detach()])
            grad_norms.append(clip_and_step(policy, optimizer, cfg.policy_grad_clip))
    return PolicyStats(*(totals / len(grad_norms)).tolist(), grad_norm=sum(grad_norms) / len(grad_norms))


class PolicyStats(NamedTuple):
    """What policy_step reports: means over its micro-batches (weighted as the loss), and the
    gradient norm before clipping, averaged over its optimizer steps."""
    loss: float
    clip_frac: float
    approx_kl: float
    entropy: float
    grad_norm: float


# ==============================================================================================
# 6. The run's bookkeeping: settings, problems, held-out accuracy, counters, learning rates.
# ==============================================================================================


def settings(argv):
    """(Config, ToyConfig, SFTConfig, PlanConfig) from the command line (support/cli.py)."""
    return cli.parse(argv, SECTIONS, PRESETS, "train.py", check=across)


def across(cfg, toy_cfg, sft_cfg, plan_cfg):
    """What no single section can check."""
    problems = []
    if not plan_cfg.memory_plan:
        if cfg.preset != "toy" and sft_cfg.stage == "prime" and not cfg.train_files:
            problems.append(f"--preset={cfg.preset} trains on Eurus-2-RL-Data: pass --train_files (and "
                            f"--model_path); the built-in toy task is --preset=toy")
        if sft_cfg.stage == "sft" and bool(sft_cfg.sft_files) != bool(cfg.model_path):
            problems.append("--stage=sft fine-tunes --model_path (the base model) on --sft_files (chat files): "
                            "give both, or neither for the toy")
    return problems


def load_problems(cfg, toy_cfg, tokenizer):
    """(training problems, held-out problems): Eurus-style parquet files, or the toy task (its pool
    seeded by the run's seed, its held-out split fixed). A missing file or a malformed row stops
    the run with data.py's message (file, row, field)."""
    try:
        if cfg.train_files:
            train, dropped = data.load_rl_data(cfg.train_files.split(","), tokenizer, cfg.max_prompt_tokens)
            log(f"train data: {len(train)} prompts ({dropped} longer than {cfg.max_prompt_tokens} tokens dropped)")
            held_out = data.load_rl_data(cfg.eval_files.split(","), tokenizer, cfg.max_prompt_tokens)[0] \
                if cfg.eval_files else []
        else:
            train = toy.train_problems(toy_cfg, tokenizer, cfg.seed, cfg.max_prompt_tokens)
            held_out = toy.held_out_problems(toy_cfg, tokenizer, cfg.max_prompt_tokens)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"train.py: {error}") from None
    if not train:
        raise SystemExit("train.py: no training prompts left after the length filter")
    if any(p.ability == "code" for p in train + held_out) and not (cfg.allow_unjailed_code or sandbox.jail_works()):
        raise SystemExit("train.py: the data has code problems, and the bwrap jail cannot run here (the warning "
                         "above says why): their tests would run the policy's programs under an audit hook only, a "
                         "tripwire that a hostile program gets past. Install bubblewrap (docs/sandbox.md), or pass "
                         "--allow_unjailed_code=true to accept running untrusted code unjailed")
    return train, held_out


def held_out_accuracy(policy, tokenizer, problems, cfg, device):
    """Greedy pass@1 on the held-out problems (eval.py's own computation), sampled in chunks that
    fit beside the training state."""
    if not problems:
        return None
    rows = math.ceil(len(problems) / dist.get_world_size())  # evaluate() splits them over ranks
    max_batch_tokens, max_prefill_tokens = sampling_bounds(policy, cfg, device, rows)
    return evaluation.evaluate(policy, tokenizer, problems, cfg.max_response_tokens, temperature=0.0,
                               max_batch_tokens=max_batch_tokens, max_prefill_tokens=max_prefill_tokens)["accuracy"]


@dataclass
class Progress:
    """The trainer's counters, saved in every checkpoint: the step reached, the held-out accuracy
    before training (measured once, so a resumed run reports the true start) and the training
    seconds so far."""
    step: int = 0
    eval_accuracy_start: float | None = None
    seconds: float = 0.0


def set_learning_rates(optimizers, cfg, step):
    """The constant learning rates, or 0 in the first iteration with --official_first_iteration."""
    scale = 0.0 if cfg.official_first_iteration and step == 1 else 1.0
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = scale * (cfg.policy_lr if name == "policy" else cfg.prm_lr)


if __name__ == "__main__":
    main(sys.argv[1:])
