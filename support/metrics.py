"""support/metrics.py: one line of <out_dir>/metrics.jsonl per PRIME step, and its console line.

Sums over the ranks travel in one all-reduce, keyed by name; per-rank means (losses, PRM accuracy,
the PPO diagnostics) are averaged over the ranks; a ratio of sums (accuracy, lengths) is taken
after summing, as if on one rank. The PRM's metrics are null for outcome-only RLOO. A non-finite
loss stops the run.
"""

import json
import math
import os

import torch
import torch.distributed as dist

import rewards
from support.distributed import all_max, all_sum

# metrics.jsonl keys that measure the PRM: null when process_rewards is off
PRM_METRICS = ("prm_loss", "prm_accuracy", "process_reward_mean", "process_reward_std")


def step_metrics(step, rollouts, counts, token_rewards, prm_loss, advantages, ppo, clock, cfg, device):
    """One metrics.jsonl row for a step: `rollouts` and `counts` from train.collect, the implicit
    process rewards [B, T] (None without a PRM) and the PRM's loss, the advantages [B, T], the policy
    step's statistics (train.PolicyStats) and the clock: time.time() at the step's start and at the
    end of each phase (collect, old log-probs, PRM, policy)."""
    mask = rollouts.mask(device)  # [B, T]
    valid, lengths = mask.bool(), mask.sum(-1)  # [B, T] response tokens, [B] their counts
    scored = token_rewards if token_rewards is not None else torch.zeros_like(mask)  # [B, T]
    # The PRM's pairwise accuracy (the paper's Fig. 6): within each prompt's group, the share of
    # (right, wrong) response pairs whose summed process rewards order them as the verifier does.
    # Single-forward scores each response before the PRM trains on it, so this is a held-out
    # score (double-forward's is not: it scores after the update).
    prm_accuracy = 0.0 if token_rewards is None else float(
        rewards.prm_pairwise_accuracy(token_rewards, rollouts.outcome, mask, cfg.samples_per_prompt))
    names = dict(counts, tokens=float(lengths.sum()), truncated=sum(rollouts.truncated), rows=len(rollouts.truncated),
                 reward_sum=float(scored[valid].sum()), reward_sq=float((scored[valid] ** 2).sum()),
                 reward_n=float(valid.sum()), prm_loss=prm_loss or 0.0, prm_accuracy=prm_accuracy,
                 advantage_abs_mean=float(advantages.abs()[valid].mean()), loss=ppo.loss, clip_frac=ppo.clip_frac,
                 approx_kl=ppo.approx_kl, entropy=ppo.entropy)
    total = dict(zip(names, all_sum(list(names.values()), device)))  # one collective for every sum
    world, mean = dist.get_world_size(), total["reward_sum"] / total["reward_n"]
    row = {
        "step": step,
        "outcome_accuracy": total["correct"] / total["sampled"],  # before filtering: the training reward
        "kept_share": total["kept"] / total["groups"],
        "prm_loss": total["prm_loss"] / world,
        "prm_accuracy": total["prm_accuracy"] / world,
        "process_reward_mean": mean,
        "process_reward_std": math.sqrt(max(total["reward_sq"] / total["reward_n"] - mean ** 2, 0.0)),
        "advantage_abs_mean": total["advantage_abs_mean"] / world,
        "policy_loss": total["loss"] / world,
        "clip_frac": total["clip_frac"] / world,
        "approx_kl": total["approx_kl"] / world,
        "entropy": total["entropy"] / world,
        "policy_grad_norm": ppo.grad_norm,
        "response_length_mean": total["tokens"] / total["rows"],
        "response_length_max": all_max(int(lengths.max()), device),
        "truncation_rate": total["truncated"] / total["rows"],
        # responses the verifier failed to score (scored 0), by cause: "unscored_timeout",
        # "unscored_crash", "unscored_malformed" (verify.FAILURES; train.collect stops on too many)
        **{key: int(total[key]) for key in counts if key.startswith("unscored_")},
        "seconds_collect": clock["collect"] - clock["start"],
        "seconds_old_logprobs": clock["old"] - clock["collect"],
        "seconds_prm": clock["prm"] - clock["old"],
        "seconds_policy": clock["policy"] - clock["prm"],
        "tokens_per_second": total["tokens"] / (clock["policy"] - clock["start"]),
    }
    if token_rewards is None:  # no PRM: null, not a misleading 0, in the curves toy/plot.py draws
        row.update(dict.fromkeys(PRM_METRICS, None))
    for key in ("prm_loss", "policy_loss"):
        if row[key] is not None and not math.isfinite(row[key]):
            raise SystemExit(f"train.py: {key} is {row[key]} at step {step}; stopping. The last good "
                             f"checkpoint is in {os.path.join(cfg.out_dir, 'checkpoints')}")
    return row


def log_step(row, cfg):
    """Append the row to metrics.jsonl and print one line (rank 0)."""
    if dist.get_rank() != 0:
        return
    with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    prm = f"prm loss {row['prm_loss']:.4f} acc {row['prm_accuracy']:.3f} | " if cfg.process_rewards else ""
    seconds = sum(value for key, value in row.items() if key.startswith("seconds_"))
    print(f"step {row['step']}/{cfg.steps} | acc {row['outcome_accuracy']:.3f} kept {row['kept_share']:.2f} | "
          f"{prm}pg loss {row['policy_loss']:+.4f} clip {row['clip_frac']:.3f} kl {row['approx_kl']:+.4f} | "
          f"len {row['response_length_mean']:.1f} | {seconds:.1f}s"
          + (f" | eval {row['eval_accuracy']:.3f}" if "eval_accuracy" in row else ""), flush=True)
