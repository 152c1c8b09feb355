"""support/batches.py: a step's responses as packed sequences, and their token log-probs as [B, T].

The reward math (rewards.py) works on [B, T] matrices: one row per response, one column per
response position, right-padded. The model works on packed sequences: prompt + response of
several rows concatenated, no padding (model.py). These helpers go from one to the other:
`Rollouts` holds a rank's kept samples of a step, `micro_batches` splits rows into forwards of a
bounded number of tokens (as many on every rank: under FSDP2 each forward is a collective), and
`response_logprobs` / `all_logprobs` score the response tokens and scatter them into [b, T].
`check_arithmetic` checks, before a run starts, that a step's prompts, mini-batches and
normaliser groups divide evenly over the ranks.
"""

from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule

import model as M
from support.distributed import all_max, log


@dataclass
class Rollouts:
    """One rank's kept samples for one step: rows in contiguous groups of K (one prompt each)."""
    prompts: list     # [B] prompt token ids
    responses: list   # [B] response token ids (EOS included when sampled)
    outcome: torch.Tensor  # [B] verifier scores r_o in [0, 1]
    truncated: list   # [B] hit max_response_tokens without an EOS

    @property
    def width(self):  # T: the longest response, the width of every [B, T] matrix
        return max(len(r) for r in self.responses)

    @property
    def lengths(self):  # [B] packed tokens of each row: prompt + response
        return [len(p) + len(r) for p, r in zip(self.prompts, self.responses)]

    def mask(self, device):  # [B, T] 1 on response tokens (EOS included), 0 on padding
        lengths = torch.tensor([len(r) for r in self.responses], device=device)
        return (torch.arange(self.width, device=device)[None, :] < lengths[:, None]).float()


def response_logprobs(net, rollouts, rows, device, temperature=1.0):
    """log pi(y_t | x, y_<t) of each response token of `rows` under `net`, as ([b, T] logp,
    [b, T] entropy), zero on padding. The rows go through the model as one packed sequence
    prompt+response each; only response positions are scored (model.chunked_logprobs)."""
    T = rollouts.width
    # Each row is prompt+response, scored at its response tokens; score t of row j lands in cell
    # (j, t) of the flattened [b, T] grid.
    sequences, cells = [], []
    for j, i in enumerate(rows):
        prompt, response = rollouts.prompts[i], rollouts.responses[i]
        sequences.append((prompt + response, range(len(prompt), len(prompt) + len(response))))
        cells += range(j * T, j * T + len(response))
    logp, entropy = M.packed_logprobs(net, sequences, device, temperature)  # [M] each
    if not torch.is_grad_enabled() and isinstance(net, FSDPModule):
        # No backward follows: free the root unit's gathered embedding and head now. (fsdp_wrap
        # asks FSDP2 to do so after every forward; versions before 2.8 keep the root gathered.)
        net.reshard()
    # Scatter the packed [M] values into the [b, T] grid the reward math works on (rewards.py):
    # one row per response, padding left at 0 and masked out downstream.
    cells = torch.tensor(cells, device=device)
    grid = torch.zeros(len(rows) * T, device=device)  # [b * T], then scattered into
    return grid.index_put((cells,), logp).view(len(rows), T), grid.index_put((cells,), entropy).view(len(rows), T)


@torch.no_grad()
def all_logprobs(net, rollouts, cfg, device, temperature=1.0):
    """[B, T] log-probs (and entropies) of every response, micro-batch by micro-batch."""
    B, T = len(rollouts.responses), rollouts.width
    logp, entropy = torch.zeros(B, T, device=device), torch.zeros(B, T, device=device)
    # no_grad: these are fixed targets (pi_theta_old for the PPO ratio), never differentiated
    for rows in micro_batches(range(B), rollouts.lengths, cfg.micro_batch_tokens, device):
        logp[rows], entropy[rows] = response_logprobs(net, rollouts, rows, device, temperature)
    return logp, entropy


def micro_batches(rows, lengths, budget, device):
    """Split `rows` (in order; lengths[i]: row i's packed tokens) into micro-batches of at most
    `budget` tokens (a longer sequence goes alone), as many on every rank: under FSDP each forward
    and backward is a collective, so all ranks must run as many. A rank that needs fewer splits its
    largest micro-batches further. Every rank holds as many rows (a step's quota, a mini-batch), and
    no rank needs more micro-batches than it has rows, so none is ever empty."""
    batches, tokens = [], []  # row lists and their packed token counts
    # Greedy packing in order: a row joins the current micro-batch while it fits the budget.
    for i in rows:
        if not batches or tokens[-1] + lengths[i] > budget:
            batches.append([])
            tokens.append(0)
        batches[-1].append(i)
        tokens[-1] += lengths[i]
    # Then match the rank with the most micro-batches: halve this rank's fullest one until the
    # counts agree (halving the fullest keeps the micro-batches as even as it can).
    for _ in range(all_max(len(batches), device) - len(batches)):
        splittable = [k for k in range(len(batches)) if len(batches[k]) > 1]
        if not splittable:
            raise RuntimeError(f"micro_batches: this rank has {len(rows)} rows, fewer than another rank's "
                               f"micro-batches: every rank must hold as many rows")
        k = max(splittable, key=lambda k: tokens[k])
        half = len(batches[k]) // 2
        batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
        tokens[k:k + 1] = [sum(lengths[i] for i in b) for b in batches[k:k + 2]]
    return batches


def check_arithmetic(cfg, world):
    """The numbers every rank must agree on for a PRIME step of cfg (a train.Config) on `world`
    ranks, printed once; a config that does not divide stops."""
    K = cfg.samples_per_prompt
    responses = cfg.prompts_per_step * K  # one step's batch, all ranks together
    # Each rank takes an equal share of the prompts and of every mini-batch; a mini-batch must
    # divide the step's responses, or the last optimizer step would see a partial batch.
    problems = [f"prompts_per_step={cfg.prompts_per_step} is not divisible by {world} ranks"] \
        if cfg.prompts_per_step % world else []
    problems += [f"{name}={getattr(cfg, name)} must divide the {responses} responses per step and be divisible "
                 f"by {world} ranks" for name in ("prm_mini_batch", "policy_mini_batch")
                 if getattr(cfg, name) % world or responses % getattr(cfg, name)]
    if K < 2:
        problems.append("samples_per_prompt must be >= 2 (the leave-one-out baseline needs K-1 others)")
    norm_rows = min(cfg.process_norm_rows or responses, responses)  # a smaller step is one group
    normalised = cfg.process_rewards and cfg.process_norm == "batch_norm"
    if normalised and (cfg.process_norm_rows < 0 or responses % norm_rows or norm_rows % K):
        problems.append(f"process_norm_rows={cfg.process_norm_rows} must divide the {responses} responses per step "
                        f"and be a multiple of samples_per_prompt={K} (0: the whole step)")
    if cfg.keep_checkpoints < 1 or cfg.save_every < 1:
        problems.append("keep_checkpoints and save_every must be >= 1")
    if problems:
        raise SystemExit("train.py: " + "; ".join(problems))
    prm = ("no PRM (outcome-only RLOO)" if not cfg.process_rewards else "PRM frozen (scores only)"
           if cfg.prm_update == "frozen" else f"PRM: {responses // cfg.prm_mini_batch} optimizer steps of "
           f"{cfg.prm_mini_batch} responses, in order" + (", then a second forward re-scores them all"
                                                          if cfg.prm_update == "double" else ""))
    log(f"batch: {cfg.prompts_per_step} prompts x {K} samples = {responses} responses per step "
        f"({responses // world} per rank on {world} ranks); {prm}; policy: "
        f"{cfg.ppo_epochs * responses // cfg.policy_mini_batch} optimizer steps of {cfg.policy_mini_batch} "
        f"responses, shuffled; micro-batches of <= {cfg.micro_batch_tokens} tokens" +
        (f"; process rewards normalised over groups of {norm_rows} responses" if normalised else ""))
