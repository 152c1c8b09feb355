"""rewards.py against hand-computed numbers, the paper's Eq. 5, and a 2-rank gloo run."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import rewards as R


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol, rtol=0)


# docs/notes.md §3 worked test vector: K = 4, one group, lengths [4, 2, 3, 1], acc [1, 0, 0, 1].
Q = t([[.2, -.1, .4, .1], [-.3, .5, 0, 0], [.1, .1, -.2, 0], [.6, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
ACC = t([1, 0, 0, 1])


# --- implicit_process_rewards -----------------------------------------------------------------


def test_implicit_process_rewards_by_hand():
    prm = t([[-1.0, -2.0, -0.5], [-0.1, 9.0, 9.0]])  # row 1 is EOS-only; 9.0 is padding garbage
    ref = t([[-1.5, -1.0, -0.5], [-0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    prm.requires_grad_(True)
    r = R.implicit_process_rewards(prm, ref, mask, beta=0.05)
    # 0.05 * (prm - ref): [0.05*0.5, 0.05*-1.0, 0] and [0.05*0.2, padding 0, 0]
    assert close(r, [[0.025, -0.05, 0.0], [0.01, 0.0, 0.0]])
    assert not r.requires_grad  # rewards are data for the advantage


# --- prm_ce_loss -------------------------------------------------------------------------------


def test_prm_ce_loss_by_hand_soft_labels():
    # beta = 0.5. Row 0: diffs 1 + 1 = 2 -> r = 1, label 1. Row 1 (EOS-only): diff -2 -> r = -1,
    # soft label 0.5 (a code pass rate). BCE with logits = softplus(r) - y*r:
    #   row 0: softplus(1) - 1 = log(1 + e^-1) = 0.313262
    #   row 1: softplus(-1) + 0.5 = 0.313262 + 0.5 = 0.813262;  mean = 0.563262
    prm = t([[0.0, 0.0], [-2.0, 5.0]])
    ref = t([[-1.0, -1.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = R.prm_ce_loss(prm, ref, mask, t([1.0, 0.5]), beta=0.5)
    assert close(loss, 0.563262)
    # The official form, F.binary_cross_entropy(sigmoid(r)), gives the same value here.
    assert close(loss, F.binary_cross_entropy(torch.sigmoid(t([1.0, -1.0])), t([1.0, 0.5])))


def test_prm_ce_loss_stays_exact_when_sigmoid_saturates():
    # r = beta * 800 = 40 with label 0: loss softplus(40) = 40.0. sigmoid(40) rounds to 1 in
    # float32, so the official F.binary_cross_entropy(sigmoid(r)) would clamp the log at -100.
    prm = t([[800.0]]).requires_grad_(True)
    loss = R.prm_ce_loss(prm, t([[0.0]]), torch.ones(1, 1), t([0.0]), beta=0.05)
    assert close(loss, 40.0, tol=1e-4)
    loss.backward()
    assert close(prm.grad, [[0.05]])  # beta * (sigmoid(40) - 0), not a vanished gradient


def test_prm_ce_loss_gradient_reaches_prm_logprobs_only():
    prm = t([[-1.0, -2.0], [-0.5, -3.0]]).requires_grad_(True)
    ref = t([[-1.0, -1.0], [-1.0, 0.0]]).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]])
    outcome = t([1.0, 0.0])
    R.prm_ce_loss(prm, ref, mask, outcome, beta=0.05).backward()
    assert ref.grad is None  # the reference is detached
    # d loss / d prm[i,t] = beta * (sigmoid(r_i) - o_i) / B on valid tokens, 0 on padding.
    # r_0 = 0.05 * (0 - 1) = -0.05, r_1 = 0.05 * 0.5 = 0.025.
    g0 = 0.05 * (torch.sigmoid(torch.tensor(-0.05)) - 1) / 2
    g1 = 0.05 * (torch.sigmoid(torch.tensor(0.025)) - 0) / 2
    assert close(prm.grad, [[g0, g0], [g1, 0.0]])


# --- normalize_process_rewards -----------------------------------------------------------------


def test_normalize_worked_vector():
    # Largest |reverse cumsum|: row 3's 0.6 (row 0: .6, .4, .5, .1; row 1: .2, .5; row 2: 0, -.1, -.2).
    # A garbage value on padding must not count.
    q = Q.clone()
    q[1, 3] = 100.0
    assert close(R.normalize_process_rewards(q, MASK), Q / (0.6 + 1e-6))


def test_normalize_keeps_step0_zeros_zero():
    zeros = torch.zeros(4, 3)
    out = R.normalize_process_rewards(zeros, torch.ones(4, 3))
    assert torch.equal(out, zeros)  # 0 / (0 + 1e-6), not NaN and not amplified


# --- rloo_returns ------------------------------------------------------------------------------


def test_rloo_worked_vector_returns_and_advantages():
    r = R.normalize_process_rewards(Q, MASK)
    G = R.rloo_returns(r, ACC, MASK, group_size=4)
    expected_G = t([[.1111, .1389, .8333, .4167], [-1.1667, -.0278, 0, 0],
                    [-2.0833, -1.8333, -1.5833, 0], [1.5278, 0, 0, 0]])
    assert close(G, expected_G, tol=1e-4)
    A = R.whiten(G, MASK)
    expected_A = t([[.3907, .4134, .9813, .6405], [-.6542, .2771, 0, 0],
                    [-1.4038, -1.1993, -.9949, 0], [1.5491, 0, 0, 0]])
    assert close(A, expected_A, tol=1e-4)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_rloo_all_correct_or_all_wrong_group_has_zero_outcome_advantage(value):
    # Outcome x'_i = o_i - mean_{j!=i} o_j = v - v = 0 for every row; process rewards are 0.
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    G = R.rloo_returns(torch.zeros(4, 3), torch.full((4,), value), mask, group_size=4)
    assert torch.equal(G, torch.zeros(4, 3))


def test_rloo_fractional_outcomes():
    # K = 3, outcomes (pass rates) [0.5, 0.2, 0.8], gamma = 1, no process reward:
    #   row 0: 0.5 - (0.2 + 0.8)/2 = 0.0;  row 1: 0.2 - (0.5 + 0.8)/2 = -0.45;
    #   row 2: 0.8 - (0.5 + 0.2)/2 = 0.45;  constant over each row's valid tokens.
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    G = R.rloo_returns(torch.zeros(3, 2), t([0.5, 0.2, 0.8]), mask, group_size=3)
    assert close(G, [[0.0, 0.0], [-0.45, 0.0], [0.45, 0.45]])


def test_rloo_gamma_below_one_with_an_eos_only_response():
    # K = 2, gamma = 0.5. Row 0: r = [0.2, 0.4], outcome 1. Row 1 (EOS-only): r = [0.6], outcome 0.
    # Process: m_0 = 0.3, m_1 = 0.6, sum 0.9; x' = x * K/(K-1) - 0.9/(K-1) = 2x - 0.9:
    #   row 0: [-0.5, -0.1] -> returns [-0.5 + 0.5*-0.1, -0.1] = [-0.55, -0.1]
    #   row 1: [0.3]        -> [0.3]
    # Outcome, on the last valid token: row 0: 1 - 0 = 1 at t=1 -> returns [0.5*1, 1] = [0.5, 1]
    #                                    row 1: 0 - 1 = -1 at t=0 -> [-1]
    # Sum: row 0 [-0.05, 0.9], row 1 [-0.7, 0 (padding)].
    G = R.rloo_returns(t([[0.2, 0.4], [0.6, 7.0]]), t([1.0, 0.0]),
                       torch.tensor([[1, 1], [1, 0]]), group_size=2, gamma=0.5)
    assert close(G, [[-0.05, 0.9], [-0.7, 0.0]])


def test_rloo_all_eos_only_responses():
    # K = 2, both length 1: process x' = 2x - (0.3 + 0.1) -> [0.2, -0.2]; outcome [1, 0] -> [1, -1].
    G = R.rloo_returns(t([[0.3, 0.0], [0.1, 0.0]]), t([1.0, 0.0]),
                       torch.tensor([[1, 0], [1, 0]]), group_size=2)
    assert close(G, [[1.2, 0.0], [-1.2, 0.0]])


def test_rloo_groups_are_contiguous_blocks():
    # Two groups of K = 2; outcomes [1, 0 | 1, 1]: group 0 gets +-1, group 1 gets 0.
    G = R.rloo_returns(torch.zeros(4, 1), t([1, 0, 1, 1]), torch.ones(4, 1), group_size=2)
    assert close(G, [[1.0], [-1.0], [0.0], [0.0]])


def paper_eq5(r, outcome, lengths, k, gamma):
    """Eq. 5 as written, with plain loops: r_phi(y^j) = response j's mean per-token reward."""
    mean = [sum(r[j][:lengths[j]]) / lengths[j] for j in range(len(r))]
    A = []
    for i in range(len(r)):
        g0 = (i // k) * k
        others = [j for j in range(g0, g0 + k) if j != i]
        proc_base = sum(mean[j] for j in others) / (k - 1)
        outc = outcome[i] - sum(outcome[j] for j in others) / (k - 1)
        A.append([sum(gamma ** (s - t_) * (r[i][s] - proc_base) for s in range(t_, lengths[i])) + outc
                  for t_ in range(lengths[i])])
    return A


def test_rloo_equals_paper_eq5_at_t0_and_parts_later_by_the_stated_term():
    torch.manual_seed(0)
    k, lengths = 4, [5, 2, 1, 4, 3, 5, 5, 1]
    mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).long()
    r = torch.randn(8, 5, dtype=torch.float64) * mask
    outcome = torch.tensor([1, 0, 0, 1, 0.25, 0.5, 1, 0], dtype=torch.float64)
    G = R.rloo_returns(r, outcome, mask, group_size=k)
    A = paper_eq5(r.tolist(), outcome.tolist(), lengths, k, gamma=1.0)
    for i, L in enumerate(lengths):
        assert abs(G[i, 0].item() - A[i][0]) < 1e-10  # t = 0: the code equals Eq. 5
        # t > 0: the code = Eq. 5 + sum_{s>=t} (r[i,s] - m_i) / (K-1)  (see rloo_returns)
        m_i = r[i, :L].mean().item()
        for s in range(L):
            extra = (r[i, s:L] - m_i).sum().item() / (k - 1)
            assert abs(G[i, s].item() - (A[i][s] + extra)) < 1e-10
    # ...and the extra term is not zero in general: they do part after t = 0.
    assert abs(G[0, 1].item() - A[0][1]) > 1e-3


# --- whiten ------------------------------------------------------------------------------------


def test_whiten_by_hand():
    # Valid values 1, 2, 3: mean 2, unbiased var ((1)+0+(1))/2 = 1 -> [-1, 0, 1]; padding -> 0.
    out = R.whiten(t([[1, 2], [3, 50]]), torch.tensor([[1, 1], [1, 0]]))
    s = 1 / math.sqrt(1 + 1e-8)
    assert close(out, [[-s, 0.0], [s, 0.0]])


SHARDS = [  # uneven shards: 3 responses with 7 tokens, and 2 responses (another width) with 3
    (t([[0.5, -1.0, 2.0], [3.0, 0.0, 0.0], [1.5, 0.25, 0.0]]), torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])),
    (t([[4.0, -2.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])),
]


def _whiten_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        values, mask = SHARDS[rank]
        torch.save(R.whiten(values, mask), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_whiten_two_rank_gloo_equals_whole_batch(tmp_path):
    mp.spawn(_whiten_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    # The whole batch in one process: pad shard 0 to width 5 and stack.
    values = torch.cat([F.pad(SHARDS[0][0], (0, 2)), SHARDS[1][0]])
    mask = torch.cat([F.pad(SHARDS[0][1], (0, 2)), SHARDS[1][1]])
    whole = R.whiten(values, mask)
    assert close(torch.load(tmp_path / "rank0.pt"), whole[:3, :3], tol=1e-6)
    assert close(torch.load(tmp_path / "rank1.pt"), whole[3:], tol=1e-6)
    # Each shard alone would give something else: the all-reduce matters.
    assert not close(R.whiten(*SHARDS[1]), whole[3:], tol=1e-3)


# --- ppo_clip_loss -----------------------------------------------------------------------------


def test_ppo_loss_and_gradient_at_rho_one():
    # rho = 1 everywhere: loss_t = -A_t. Row 0: mean(-1, 2) = 0.5; row 1: -3; loss = (0.5 - 3)/2 = -1.25.
    # d loss / d logp[i,t] = -A[i,t] * rho / (L_i * B): row 0 [-1/4, 2/4]; row 1 [-3/2]; padding 0.
    old = t([[-1.0, -2.0], [-0.5, -9.0]])
    logp = old.clone().requires_grad_(True)
    adv = t([[1.0, -2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = R.ppo_clip_loss(logp, old, adv, mask)
    assert close(loss, -1.25)
    loss.backward()
    assert close(logp.grad, [[-0.25, 0.5], [-1.5, 0.0]])
    assert close(stats.clip_frac, 0.0) and close(stats.approx_kl, 0.0)


def test_ppo_clipped_tokens_get_no_gradient():
    # Row 0, t0: rho = 1,   A = 1  -> max(-1, -1) = -1, gradient -A*rho/(L*B) = -1/(2*3)
    #        t1: rho = 1.5, A = 2  -> max(-3, -2*1.2 = -2.4) = -2.4 (clipped, no gradient)
    # Row 1, t0: rho = 0.5, A = -1 -> max(0.5, 0.8) = 0.8 (clipped, no gradient)
    # Row 2, t0: rho = 0.5, A = 1  -> max(-0.5, -0.8) = -0.5 (unclipped: the ratio may rise)
    #        gradient -A*rho/(L*B) = -0.5/(1*3)
    # loss = mean(-1.7, 0.8, -0.5) = -1.4/3; clip_frac = mean(1/2, 1, 0) = 0.5;
    # approx_kl = mean((0 - log 1.5)/2, -log 0.5, -log 0.5) = (-0.2027326 + 2*0.6931472)/3
    old = torch.zeros(3, 2)
    logp = torch.log(t([[1.0, 1.5], [0.5, 1.0], [0.5, 1.0]])).requires_grad_(True)
    adv = t([[1.0, 2.0], [-1.0, 0.0], [1.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    loss, stats = R.ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2)
    assert close(loss, -1.4 / 3)
    assert close(stats.clip_frac, 0.5)
    assert close(stats.approx_kl, (-math.log(1.5) / 2 + 2 * math.log(2)) / 3)
    loss.backward()
    assert close(logp.grad, [[-1 / 6, 0.0], [0.0, 0.0], [-0.5 / 3, 0.0]])


def test_ppo_padding_garbage_cannot_poison_gradient():
    logp = t([[-1.0, 1000.0]]).requires_grad_(True)  # exp(1000 - 0) = inf on padding
    loss, _ = R.ppo_clip_loss(logp, t([[-1.0, 0.0]]), t([[1.0, 1.0]]), torch.tensor([[1, 0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(logp.grad, t([[-1.0, 0.0]]))


# --- accuracy_filter ---------------------------------------------------------------------------


def test_accuracy_filter_inclusive_bounds():
    # K = 5, groups with 0..5 correct: means 0, .2, .4, .6, .8, 1 -> keep the four in [0.2, 0.8].
    outcome = torch.cat([torch.tensor([1.0] * c + [0.0] * (5 - c)) for c in range(6)])
    assert R.accuracy_filter(outcome, 5).tolist() == [False, True, True, True, True, False]
    # K = 4, fractional code rewards: means 0.1875 (drop), 0.5 (keep), 0.8125 (drop).
    frac = t([0.25, 0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.25, 1.0])
    assert R.accuracy_filter(frac, 4).tolist() == [False, True, False]


# --- prm_pairwise_accuracy ---------------------------------------------------------------------


def test_prm_pairwise_accuracy_by_hand():
    # Group 0: outcomes [1, .5, 0, 0], summed rewards R = [.3, .1, .2, 0] (row 1 = .05 + .05).
    #   (0,1): o +.5, R +.2 right, w .5   (0,2): o +1, R +.1 right, w 1   (0,3): o +1, R +.3 right, w 1
    #   (1,2): o +.5, R -.1 wrong, w .5   (1,3): o +.5, R +.1 right, w .5  (2,3): o 0, w 0
    #   -> 3.0 / 3.5 = 6/7.
    # Group 1: all outcomes equal -> 0.5.  Mean over groups: (6/7 + 1/2) / 2.
    rewards = t([[.3, 0], [.05, .05], [.2, 0], [0, 9.0], [1, 0], [2, 0], [3, 0], [4, 0]])
    mask = torch.tensor([[1, 0], [1, 1], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0]])
    outcome = t([1, .5, 0, 0, 1, 1, 1, 1])
    acc = R.prm_pairwise_accuracy(rewards, outcome, mask, group_size=4)
    assert close(acc, (6 / 7 + 0.5) / 2)


def test_prm_pairwise_accuracy_ties_follow_the_official_code():
    # Equal summed rewards: (R_i - R_j > 0) is False, right exactly when o_i - o_j < 0.
    zeros, mask = torch.zeros(2, 1), torch.ones(2, 1)
    assert close(R.prm_pairwise_accuracy(zeros, t([0, 1]), mask, 2), 1.0)
    assert close(R.prm_pairwise_accuracy(zeros, t([1, 0]), mask, 2), 0.0)


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    """Shapes and settings are checked by every function (on the host); a batch's values once,
    by check_batch."""
    mask = torch.ones(4, 3)
    x, o = torch.zeros(4, 3), t([1, 0, 1, 0])
    with pytest.raises(ValueError, match="group_size"):
        R.rloo_returns(x, o, mask, group_size=1)
    with pytest.raises(ValueError, match="groups"):
        R.rloo_returns(x, o, mask, group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        R.accuracy_filter(o, 1)
    with pytest.raises(ValueError, match="groups"):
        R.prm_pairwise_accuracy(x, o, mask, 3)
    with pytest.raises(ValueError, match="shape"):
        R.implicit_process_rewards(torch.zeros(4, 2), x, mask, beta=0.05)
    with pytest.raises(ValueError, match="shape"):
        R.prm_ce_loss(x, x, mask, t([1, 0, 1]), beta=0.05)
    with pytest.raises(ValueError, match="shape"):
        R.ppo_clip_loss(x, x, torch.zeros(3, 3), mask)
    with pytest.raises(ValueError, match="beta"):
        R.implicit_process_rewards(x, x, mask, beta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        R.rloo_returns(x, o, mask, group_size=2, gamma=1.5)
    with pytest.raises(ValueError, match="clip_eps"):
        R.ppo_clip_loss(x, x, x, mask, clip_eps=1.0)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            R.check_batch(mask, t([1, 0, bad, 0]), 2)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            R.accuracy_filter(t([1, 0, bad, 0]), 2)
    empty = mask.clone()
    empty[2] = 0
    with pytest.raises(ValueError, match="valid token"):
        R.check_batch(empty, o, 2)
    with pytest.raises(ValueError, match="right-padded"):
        R.check_batch(torch.tensor([[0, 1, 1]] * 4), o, 2)
    with pytest.raises(ValueError, match="0 and 1"):
        R.check_batch(mask * 2, o, 2)
    with pytest.raises(ValueError, match="groups"):
        R.check_batch(mask, o, 3)
    R.check_batch(torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]), o, 2)  # a good batch passes
