"""PRIME's math: implicit process rewards, the PRM loss, RLOO returns, whitening, PPO clip.

Pure functions over [B, T] tensors of *response* positions (the prompt is not included):

    B  rows = responses, in contiguous groups of K = group_size samples of one prompt
       (rows 0..K-1 answer prompt 0, rows K..2K-1 prompt 1, ...);
    T  columns = response token positions, right-padded;
    response_mask [B, T]: 1 on valid response tokens (the EOS token included), 0 on padding.
       Every row must be right-padded: ones, then zeros.
    outcome [B]: the verifier's outcome reward r_o in [0, 1] (1/0 for math, the fraction of
       tests passed for code).

Where PRIME's paper (Cui et al. 2025, arXiv 2502.01456) and the official code that trained
Eurus-2-7B-PRIME ([PR] = PRIME-RL/PRIME, training/verl: dp_prime.py, core_algos.py,
torch_functional.py) disagree, these functions compute what [PR] computes and the docstring
shows the paper's form beside it.

Algorithm 1 of the paper, and where each step lives:

    1  init policy pi_theta, PRM pi_phi, reference pi_ref, all from the SFT model   train.py
    4  sample K responses per prompt                                                 rollout.py
    5  outcome rewards r_o                                                           verify.py
    6  keep prompts with 0.2 <= mean_k r_o <= 0.8                    accuracy_filter
    7  implicit process rewards r_phi(y_t) = beta log pi_phi/pi_ref  implicit_process_rewards
    8  update the PRM with cross-entropy on r_o                      prm_ce_loss
           (metric: does the PRM order responses like r_o?)          prm_pairwise_accuracy
    9  advantages, Eq. 4-5: [PR] first rescales the process rewards  normalize_process_rewards
       (per worker's share of the step's rows)                       normalize_in_groups
       then leave-one-out returns for process + outcome rewards      rloo_returns
       then whitens the returns over all valid tokens                whiten
   10  update the policy with the PPO clip loss, Eq. 6               ppo_clip_loss

A reader new to RL: a "return" at token t is the (discounted) sum of the rewards from t to
the end of the response; an "advantage" says how much better than expected that is. The
policy-gradient loss pushes up the log-probability of tokens with a positive advantage.
"""

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Input checks. The official code guards none of these (K = 1 divides by zero, an empty response
# gives a NaN mean). A batch's *values* (the mask holds 0/1 and is right-padded, every response
# has a token, outcomes lie in [0, 1]) are checked once per step by check_batch, where the batch
# is built: each such check waits for the device. Every function below checks only what the
# host knows (shapes, group size, settings), so an equation reads first and costs no sync.
# ---------------------------------------------------------------------------------------------


def check_batch(response_mask, outcome, group_size):
    """Raise ValueError unless this is a batch the functions below accept: response_mask [B, T]
    of 0/1, right-padded (ones, then zeros: "the last valid token", where the outcome reward
    sits, is then position length - 1, as in [PR]) with at least one valid token per row (EOS
    counts); outcome [B], finite, in [0, 1]; B a whole number of groups of group_size >= 2."""
    _check(response_mask, outcome=outcome, group_size=group_size)
    if not ((response_mask == 0) | (response_mask == 1)).all():
        raise ValueError("response_mask must hold only 0 and 1")
    mask = response_mask.bool()
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("response_mask rows must be right-padded (ones, then zeros)")
    if (mask.sum(-1) == 0).any():
        raise ValueError("every response needs at least one valid token (EOS counts)")
    _check_outcome_values(outcome)


def _check(response_mask, outcome=None, group_size=None, beta=None, gamma=None, clip_eps=None, **per_token):
    """Shapes and settings, on the host: the mask is [B, T], each per-token tensor matches it,
    outcome is [B], B is a whole number of groups of group_size >= 2; beta > 0, gamma in
    [0, 1], clip_eps in (0, 1)."""
    for name, value, ok in (("beta", beta, lambda v: v > 0), ("gamma", gamma, lambda v: 0 <= v <= 1),
                            ("clip_eps", clip_eps, lambda v: 0 < v < 1)):
        if value is not None and not ok(value):
            raise ValueError(f"{name}={value} is out of range (beta > 0, 0 <= gamma <= 1, 0 < clip_eps < 1)")
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be [B, T], got shape {tuple(response_mask.shape)}")
    for name, x in per_token.items():
        if x.shape != response_mask.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, response_mask {tuple(response_mask.shape)}")
    B = response_mask.shape[0]
    if outcome is not None and outcome.shape != (B,):
        raise ValueError(f"outcome must have shape ({B},), got {tuple(outcome.shape)}")
    if group_size is not None:
        _check_groups(B, group_size)


def _check_groups(B, group_size):
    """B rows make whole groups of group_size >= 2 (on the host)."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (leave-one-out needs others), got {group_size}")
    if B % group_size != 0:
        raise ValueError(f"batch of {B} rows is not a whole number of groups of {group_size}")


def _check_outcome_values(outcome):
    """Every outcome lies in [0, 1] (waits for the device)."""
    if not ((outcome >= 0) & (outcome <= 1)).all():  # also rejects NaN
        raise ValueError("outcome rewards must lie in [0, 1]")


def _f32(x):
    """Compute in at least float32: a sum over thousands of bf16 log-probs loses most of its digits."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------
# Alg. 1 line 7: implicit process rewards (Eq. 3)
# ---------------------------------------------------------------------------------------------


def implicit_process_rewards(prm_logprobs, ref_logprobs, response_mask, beta):
    """Per-token implicit process reward, Eq. 3:  r_phi(y_t) = beta * log pi_phi(y_t|y_<t) / pi_ref(y_t|y_<t).

    prm_logprobs, ref_logprobs: [B, T] log-probs of the sampled response tokens under the
    implicit PRM pi_phi and the frozen reference pi_ref. Returns [B, T]: beta * (logp_prm -
    logp_ref) on valid tokens (EOS included, as in [PR]), 0 on padding, detached: rewards are
    data for the advantage, not part of a graph (the PRM's gradient comes from prm_ce_loss).

    Summed over a response this is the implicit outcome reward r_phi(y) = beta log pi_phi(y)/pi_ref(y);
    its prefix sums are the PRM's Q-values. At step 0 pi_phi == pi_ref, so every reward is 0 (in
    [PR] bf16-sized noise instead, about 2.5e-3 per token: docs/notes.md §1).

    [PR] hands the raw q = logp_prm - logp_ref (no beta) to the advantage; beta enters only the
    loss. The next step, normalize_process_rewards, divides by (largest |return| + 1e-6), which
    cancels a positive scale only while the largest |return| is well above 1e-6: with beta = 0.05
    the guard weighs 20x more against these rewards than against [PR]'s raw q, which matters only
    when the PRM barely differs from the reference (at step 1 every reward is 0 either way).
    """
    _check(response_mask, beta=beta, prm_logprobs=prm_logprobs, ref_logprobs=ref_logprobs)
    mask = response_mask.bool()
    return torch.where(mask, beta * (_f32(prm_logprobs) - _f32(ref_logprobs)), 0.0).detach()  # [B, T]


# ---------------------------------------------------------------------------------------------
# Alg. 1 line 8: the PRM's cross-entropy loss
# ---------------------------------------------------------------------------------------------


def prm_ce_loss(prm_logprobs, ref_logprobs, response_mask, outcome, beta):
    """Cross-entropy of the implicit PRM against outcome labels, Alg. 1 line 8:

        L_CE(phi) = -E[ r_o log sigmoid(r_phi(y)) + (1 - r_o) log(1 - sigmoid(r_phi(y))) ],
        r_phi(y)  = beta * sum_t (log pi_phi(y_t|.) - log pi_ref(y_t|.))   over valid tokens.

    Returns a 0-dim tensor: the mean over the B responses given. outcome [B] may be fractional
    (code pass rates): a soft-label BCE. The gradient flows into prm_logprobs only
    (ref_logprobs is detached; the reference is frozen).

    Gradient accumulation: the loss is a mean over *these* rows. A caller splitting one PRM
    mini-batch into micro-batches should weight each micro-batch's loss by
    rows_in_micro / rows_in_mini (with equal micro-batches: divide by their number, as [PR]'s
    `loss / gradient_accumulation` does), so the accumulated gradient is that of the mean over
    the mini-batch.

    Numerics: [PR] computes F.binary_cross_entropy(sigmoid(r), r_o), which clamps each log at
    -100. Here binary_cross_entropy_with_logits(r, r_o) = softplus(r) - r_o * r computes the
    same value without forming sigmoid(r). They agree while sigmoid(r) does not round to 0 or 1
    (|r| below about 16 in float32); beyond that [PR]'s loss saturates at 100 and its gradient
    vanishes, while this one stays exact, with gradient sigmoid(r) - r_o.
    """
    _check(response_mask, outcome=outcome, beta=beta, prm_logprobs=prm_logprobs, ref_logprobs=ref_logprobs)
    mask = response_mask.bool()
    logit = beta * torch.where(mask, _f32(prm_logprobs) - _f32(ref_logprobs).detach(), 0.0).sum(-1)  # [B]  r_phi(y)
    return F.binary_cross_entropy_with_logits(logit, outcome.to(logit.dtype))  # mean over B


# ---------------------------------------------------------------------------------------------
# Alg. 1 line 8, the metric: PRM pairwise accuracy
# ---------------------------------------------------------------------------------------------


def prm_pairwise_accuracy(process_rewards, outcome, response_mask, group_size):
    """Does the PRM rank a prompt's responses like the verifier does? [PR] compute_dpo_accuracy.

    The "PRM accuracy" of the paper's Fig. 6 (v1; Fig. 5 in v2), logged by [PR] as
    reward_model/dpo_acc_before. Within each group of K responses, with R_i = sum_t r[i,t]
    and over the pairs i < j:

        acc_group = sum_{i<j} |o_i - o_j| * 1[(R_i - R_j > 0) == (o_i - o_j > 0)] / sum_{i<j} |o_i - o_j|

    (o = outcome), i.e. the share of pairs with different outcomes that the summed process
    rewards order like the outcomes, weighted by how far apart the outcomes are. A group whose outcomes
    are all equal counts 0.5. Returns a 0-dim tensor: the plain mean over the B/K groups (each
    group weighs the same, as [PR] does; [PR] computes it per data-parallel shard, and the
    logger averages the shards).

    As in [PR], the test is (R_i - R_j > 0) == (o_i - o_j > 0), not a comparison of signs: a tie
    R_i == R_j counts as "j is at least as good", right exactly when o_i < o_j. So at step 0,
    when every reward is 0, the metric is the weighted share of pairs with o_i < o_j, which
    depends on the order of rows inside a group. Any positive rescaling of the rewards (beta,
    normalize_process_rewards) leaves the metric unchanged.
    """
    _check(response_mask, outcome=outcome, group_size=group_size, process_rewards=process_rewards)
    mask, n_groups = response_mask.bool(), response_mask.shape[0] // group_size
    score = torch.where(mask, _f32(process_rewards), 0.0).sum(-1).view(n_groups, group_size)  # [G, K]  R_i
    o = outcome.view(n_groups, group_size)                                       # [G, K]
    i, j = torch.triu_indices(group_size, group_size, offset=1)                  # pairs i < j
    score_diff = score[:, i] - score[:, j]                                       # [G, P]
    o_diff = o[:, i] - o[:, j]                                                   # [G, P]
    weight = o_diff.abs()                                                        # [G, P]
    right = ((score_diff > 0) == (o_diff > 0)).to(weight.dtype)                  # [G, P]
    total = weight.sum(-1)                                                       # [G]
    # clamp_min only keeps the unused branch of an all-equal group from computing 0/0.
    per_group = torch.where(total > 0, (right * weight).sum(-1) / total.clamp_min(1e-30), 0.5)
    return per_group.mean()


# ---------------------------------------------------------------------------------------------
# Alg. 1 line 9: advantages (normalise, leave-one-out returns, whiten)
# ---------------------------------------------------------------------------------------------


def normalize_process_rewards(rewards, response_mask):
    """Rescale process rewards so the largest |process return| is 1 ([PR] prime_norm=batch_norm).

    Not in the paper. [PR] (the default, "batch_norm") divides every token's reward by

        max_{i,t} | sum_{s>=t} r[i,s] | + 1e-6

    the largest absolute reverse cumulative sum (the largest |undiscounted process return|)
    over valid tokens. Returns [B, T], 0 on padding. It normalises exactly the batch it is
    given; [PR] runs it inside each data-parallel worker, i.e. on the local shard of responses
    (128 of 1024 on 8 GPUs), not the global batch, and normalize_in_groups hands it groups
    of that many rows on any number of ranks.

    Step 0: the PRM equals the reference, so all rewards are 0 and stay 0 here (0 / 1e-6).
    If they were tiny non-zero noise instead, this would blow the noise up to unit size, as it
    did in [PR], whose bf16 reference rounded its rotary frequencies (docs/notes.md §1); the
    trainer makes the step-0 PRM and reference log-probs identical.
    """
    _check(response_mask, rewards=rewards)
    r = torch.where(response_mask.bool(), _f32(rewards), 0.0)    # [B, T]
    reverse_cumsum = r.flip(-1).cumsum(-1).flip(-1)               # [B, T]  sum_{s>=t} r[i,s]
    return r / (reverse_cumsum.abs().max() + 1e-6)


def normalize_in_groups(token_rewards, response_mask, group):
    """normalize_process_rewards over each `group` consecutive rows of the step (0, or a
    group larger than the step: the whole step), [B, T] -> [B, T]. The step's rows are rank 0's,
    then rank 1's, ...: with B rows per rank and B a multiple of the group (128 on 1, 2, 4 or 8 GPUs
    in the recipe) each group lies inside one rank. When a group spans ranks (16 GPUs hold 64 rows
    each; the toy preset's whole step on 2 ranks) every rank gathers the step's rewards, padded to
    the longest response (4 MB per 1024 rows x 1024 tokens), and takes its own rows back.
    support.batches.check_arithmetic makes the group divide the step's responses and hold whole prompts' groups
    of K."""
    B, T = token_rewards.shape
    world = dist.get_world_size() if dist.is_initialized() else 1
    group = min(group or B * world, B * world)
    if B * world % group:
        raise ValueError(f"process_norm_rows={group} does not divide the step's {B * world} responses")

    def by_group(r, m):
        return torch.cat([normalize_process_rewards(r[s:s + group], m[s:s + group])
                          for s in range(0, len(r), group)])

    if B % group == 0:
        return by_group(token_rewards, response_mask)
    width = torch.tensor(T, device=token_rewards.device)  # the longest response of any rank
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    width = int(width)
    whole = []  # [world * B, width] each: the step's rewards, then its mask
    for x in (token_rewards, response_mask):
        parts = [torch.empty(B, width, dtype=x.dtype, device=x.device) for _ in range(world)]
        dist.all_gather(parts, F.pad(x, (0, width - T)))
        whole.append(torch.cat(parts))
    rank = dist.get_rank()
    return by_group(*whole)[rank * B:(rank + 1) * B, :T]


def _leave_one_out(x, mask, group_size):
    """[PR]'s per-token leave-one-out baseline for one reward source, on its own mask.

    x, mask: [B, T]. With m_i = mean of x[i] over mask_i, on masked positions
        x'[i,t] = x[i,t] * K/(K-1) - (sum_{j in group} m_j) / (K-1),
    0 elsewhere.
    """
    n_groups = x.shape[0] // group_size
    k = group_size
    x = torch.where(mask, x, 0.0)
    row_mean = x.sum(-1) / mask.sum(-1)                                  # [B]  m_i
    group_sum = row_mean.view(n_groups, k).sum(-1).repeat_interleave(k)  # [B]  sum_j m_j
    return torch.where(mask, x * k / (k - 1) - group_sum[:, None] / (k - 1), 0.0)


def _discounted_returns(x, gamma):
    """G[:, t] = x[:, t] + gamma * G[:, t+1] over the full padded width [B, T] (G[:, T] = 0)."""
    returns = torch.zeros_like(x)
    running = torch.zeros_like(x[:, 0])
    for t in reversed(range(x.shape[1])):
        running = x[:, t] + gamma * running
        returns[:, t] = running
    return returns


def rloo_returns(process_rewards, outcome, response_mask, group_size, gamma=1.0):
    """Leave-one-out (RLOO) returns of process and outcome rewards, summed; Eq. 4-5.

    process_rewards [B, T] (after normalize_process_rewards), outcome [B] in [0, 1]. Returns
    the per-token returns [B, T], 0 on padding; whiten() turns them into advantages.

    The paper, Eq. 5 (Eq. 4 is the outcome-only RLOO), for response i of K, token t:

        A_t^i = sum_{s=t}^{|y^i|} gamma^{s-t} [ r_phi(y_s^i) - 1/(K-1) sum_{j!=i} r_phi(y^j) ]
                + r_o(y^i) - 1/(K-1) sum_{j!=i} r_o(y^j)

    where r_phi(y^j) is response j's *mean* per-token process reward ("the averaged implicit
    process rewards" of §3.2).

    What [PR] (core_algos.compute_rloo_returns) computes, and this function with it: each
    source x gets, on its own mask, with m_i = mean_t x[i,t]:

        x'[i,t] = x[i,t] * K/(K-1) - (sum_{j in group} m_j) / (K-1),
        G[i,t]  = x'[i,t] + gamma * G[i,t+1]       (over the padded width; 0 on padding),

    and the result is G_process + G_outcome.

    * Outcome: r_o sits on the response's last valid token, with a mask of that token alone,
      so m_i = r_o(i) and x'_i = r_o(i) - mean_{j!=i} r_o(j): exactly Eq. 4. With gamma = 1
      the outcome return is that constant at every token of response i.
    * Process: x'[i,t] = (r[i,t] - mean_{j!=i} m_j) + (r[i,t] - m_i)/(K-1), i.e. Eq. 5's term
      plus (r[i,t] - m_i)/(K-1), which sums to 0 over response i. So with gamma = 1 the process
      return at t = 0 equals Eq. 5's, and at t > 0 it differs from Eq. 5 by
      sum_{s>=t} (r[i,s] - m_i) / (K-1).
    """
    _check(response_mask, outcome=outcome, group_size=group_size, gamma=gamma, process_rewards=process_rewards)
    mask, rewards = response_mask.bool(), _f32(process_rewards)  # (check_batch: no empty row, m_i != 0/0)

    # Process rewards: every valid token.
    process = _discounted_returns(_leave_one_out(rewards, mask, group_size), gamma)  # [B, T]

    # Outcome reward: placed on the last valid token (position length - 1), its own mask.
    rows = torch.arange(mask.shape[0], device=mask.device)
    last = mask.sum(-1) - 1                                                          # [B]
    last_mask = torch.zeros_like(mask)
    last_mask[rows, last] = True
    outcome_tokens = torch.zeros_like(rewards)
    outcome_tokens[rows, last] = outcome.to(rewards.dtype)
    outcome_part = _discounted_returns(_leave_one_out(outcome_tokens, last_mask, group_size), gamma)

    return torch.where(mask, process + outcome_part, 0.0)


def whiten(values, response_mask):
    """Advantages from returns: (x - mean) / sqrt(var + 1e-8) over all valid tokens.

    [PR] verl masked_whiten, applied to the RLOO returns of the whole batch; not in the paper
    (Eq. 5 uses the returns themselves as advantages). The mean and the unbiased (Bessel)
    variance run over every valid token of every response, and, when torch.distributed is
    initialised, over all ranks: every rank must call it (it all-reduces). The statistics are
    two-pass (all-reduce count and sum -> mean; then the sum of squared deviations) so a large
    mean cannot cancel the variance. Returns [B, T], 0 on padding.
    """
    _check(response_mask, values=values)
    mask = response_mask.bool()
    x = torch.where(mask, _f32(values), 0.0)  # [B, T]
    distributed = dist.is_available() and dist.is_initialized()

    # The statistics in float64: exact token counts, and sums over millions of tokens. (The batch
    # holds at least one group of K >= 2 responses with a token each: count >= 2.)
    stats = torch.stack([mask.sum().double(), x.double().sum()])  # [2]  count, sum
    if distributed:
        dist.all_reduce(stats)
    count, total = stats
    mean = total / count

    squares = torch.where(mask, (x.double() - mean) ** 2, 0.0).sum()  # 0-dim
    if distributed:
        dist.all_reduce(squares)
    var = squares / (count - 1)
    whitened = (x - mean.to(x.dtype)) * torch.rsqrt(var + 1e-8).to(x.dtype)  # [B, T]
    return torch.where(mask, whitened, 0.0)


# ---------------------------------------------------------------------------------------------
# Alg. 1 line 10: the policy's PPO clip loss (Eq. 6)
# ---------------------------------------------------------------------------------------------


class PPOStats(NamedTuple):
    """Diagnostics of ppo_clip_loss, 0-dim detached tensors, aggregated like the loss."""

    clip_frac: torch.Tensor  # share of tokens where the clipped term is the active one
    approx_kl: torch.Tensor  # mean of old_logp - logp: the k1 estimate of KL(pi_old || pi_theta)


def ppo_clip_loss(logprobs, old_logprobs, advantages, response_mask, clip_eps=0.2):
    """The PPO clipped surrogate, Eq. 6, as a loss to minimise.

    Paper: L_CLIP(theta) = E_t[ min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t) ],
    rho_t = pi_theta(y_t|.) / pi_theta_old(y_t|.). [PR] core_algos.compute_policy_loss, per
    token (the same thing negated):

        loss_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1-eps, 1+eps)),  rho_t = exp(logp - old_logp)

    logprobs [B, T] (with grad) under the current policy; old_logprobs [B, T] under the policy
    that sampled (detached here); advantages [B, T] from whiten (detached here). No KL and no
    entropy term: the paper sets both coefficients to 0.

    Returns (loss, PPOStats(clip_frac, approx_kl)): loss is a 0-dim tensor, the token mean per
    response, then the mean over the B responses given ("sequence-mean of token-means"). That
    is [PR]'s weighting: it took the token mean per micro-batch, and a micro-batch held one
    response (8 per micro-batch over 8 GPUs). Not the paper's global token mean.

    Gradient accumulation: a caller splitting a mini-batch into micro-batches should weight each
    micro-batch's loss by rows_in_micro / rows_in_mini (equal micro-batches: divide by their
    number); then the accumulated gradient is that of the mean over the mini-batch's responses.
    The diagnostics use the same weighting ([PR] took them per micro-batch and averaged).
    """
    _check(response_mask, clip_eps=clip_eps, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    mask = response_mask.bool()  # (check_batch: no empty row, every response has a token mean)
    logp, old, adv = _f32(logprobs), _f32(old_logprobs).detach(), _f32(advantages).detach()

    # Zero the padding first: garbage log-probs there must not reach exp() (an inf would
    # turn the masked-out gradient into NaN).
    log_ratio = torch.where(mask, logp - old, 0.0)                       # [B, T]
    adv = torch.where(mask, adv, 0.0)                                    # [B, T]
    ratio = torch.exp(log_ratio)                                         # [B, T]  rho
    unclipped = -adv * ratio                                             # [B, T]
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)     # [B, T]
    per_token = torch.max(unclipped, clipped)                            # [B, T]

    lengths = mask.sum(-1)                                               # [B]

    def seq_mean_token_mean(x):  # [B, T] -> 0-dim: token mean per response, mean over responses
        return (torch.where(mask, x, 0.0).sum(-1) / lengths).mean()

    loss = seq_mean_token_mean(per_token)
    with torch.no_grad():
        stats = PPOStats(
            clip_frac=seq_mean_token_mean((clipped > unclipped).to(logp.dtype)),
            approx_kl=seq_mean_token_mean(-log_ratio),
        )
    return loss, stats


# ---------------------------------------------------------------------------------------------
# Alg. 1 line 6: the online accuracy filter
# ---------------------------------------------------------------------------------------------


def accuracy_filter(outcome, group_size, low=0.2, high=0.8):
    """Which prompts to keep: low <= mean_k r_o <= high, bounds inclusive (paper §3.3, [PR]).

    outcome [B] in [0, 1], rows in groups of K. Returns a bool tensor [B // K], one per group
    (True = keep; expand to rows with .repeat_interleave(group_size)). With K = 4 and 0/1
    rewards, groups with 1, 2 or 3 correct answers survive. The group mean is taken in float64
    so that e.g. 1 of 5 correct gives exactly 0.2 and is kept.
    """
    if outcome.dim() != 1:
        raise ValueError(f"outcome must be [B], got shape {tuple(outcome.shape)}")
    _check_groups(len(outcome), group_size)
    _check_outcome_values(outcome)  # the outcomes enter the step here
    if not 0 <= low <= high <= 1:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    mean = outcome.double().view(-1, group_size).mean(-1)  # [G]
    return (mean >= low) & (mean <= high)
