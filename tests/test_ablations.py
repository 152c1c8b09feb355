"""The paper's ablations as train.py switches, in-process: each switch changes what it should and
nothing else. Outcome-only RLOO (process_rewards=False) gives whiten(RLOO of the outcome) and
loads neither PRM nor reference; the PRM update modes (single / double / frozen) score and update
as docs/notes.md §2 describes; reference=policy scores against the policy's own log-probs;
accuracy_filter=False keeps every group; bad values are rejected.

The models are tiny random Qwen2 networks (tests/tiny.py) and the rollouts random token ids, so
everything runs in a second; prm_step and whiten talk to torch.distributed, so the module runs
inside a gloo process group of one.
"""

import copy
import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import model as M
import rewards
import train
from support import batches
from support.distributed import adamw
from tests.tiny import random_checkpoint, tiny_config, toy_config

K = 4


@pytest.fixture(scope="module", autouse=True)
def process_group(tmp_path_factory):
    """A gloo group of one for the module (prm_step's micro_batches all-reduce); removed after."""
    init_file = tmp_path_factory.mktemp("pg") / "init"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_net(seed):
    torch.manual_seed(seed)
    net = M.Qwen2ForCausalLM(tiny_config(hidden_size=32, layers=1))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def random_rollouts(n_groups=4, seed=0):
    """n_groups prompts x K responses of random ids (ragged lengths), outcomes with 1-3 of K
    correct per group so the CE loss and the pairwise accuracy have something to order."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(n_groups):
        prompt = torch.randint(3, 97, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist()
        for _ in range(K):
            prompts.append(prompt)
            responses.append(torch.randint(3, 97, (int(torch.randint(2, 12, (1,), generator=g)),),
                                           generator=g).tolist())
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0] * n_groups)[:n_groups * K]
    return train.Rollouts(prompts=prompts, responses=responses, outcome=outcome,
                          truncated=[False] * len(responses))


def config(**overrides):
    """A toy Config for 16 responses: PRM mini-batches of 8 (two PRM optimizer steps), micro-batches
    small enough that each mini-batch spans several (gradient accumulation runs)."""
    base = dict(prm_mini_batch=8, policy_mini_batch=8, micro_batch_tokens=40, prm_lr=1e-2, beta=0.05)
    return toy_config(**{**base, **overrides})


def parse(argv):
    return train.settings(argv)[0]


def logprobs(net, rollouts, cfg):
    return train.all_logprobs(net, rollouts, cfg, "cpu")[0]


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# the advantage: process rewards on / off
# ----------------------------------------------------------------------------------------------

def test_outcome_only_advantages_are_whitened_rloo_of_the_outcome():
    rollouts = random_rollouts()
    mask = rollouts.mask("cpu")
    cfg = config(process_rewards=False)
    got = train.compute_advantages(None, rollouts.outcome, mask, cfg)

    # Eq. 4 by hand: r_o(i) - mean of the other K-1 outcomes, the same at every token (gamma = 1)
    o = rollouts.outcome.view(-1, K)
    loo = (o - (o.sum(-1, keepdim=True) - o) / (K - 1)).reshape(-1)    # [B]
    valid = mask.bool()
    values = loo[:, None].expand_as(mask)[valid]                         # every valid token
    want = torch.zeros_like(mask)
    want[valid] = (values - values.mean()) / torch.sqrt(values.var() + 1e-8)  # unbiased variance
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_process_rewards_on_keeps_the_recipe_advantages():
    rollouts = random_rollouts()
    mask = rollouts.mask("cpu")
    process = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask
    cfg = config()
    want = rewards.whiten(rewards.rloo_returns(rewards.normalize_process_rewards(process, mask),
                                               rollouts.outcome, mask, K, cfg.gamma), mask)
    got = train.compute_advantages(process, rollouts.outcome, mask, cfg)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert not torch.allclose(got, train.compute_advantages(None, rollouts.outcome, mask, cfg))


def test_process_norm_none_leaves_the_rewards_unscaled():
    """process_norm=none: the returns of the rewards as they are (no max-|return| division), so
    the process term weighs against the outcome term by beta alone."""
    rollouts = random_rollouts()
    mask = rollouts.mask("cpu")
    process = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask
    cfg = config(process_norm="none")
    want = rewards.whiten(rewards.rloo_returns(process, rollouts.outcome, mask, K, cfg.gamma), mask)
    got = train.compute_advantages(process, rollouts.outcome, mask, cfg)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert not torch.allclose(got, train.compute_advantages(process, rollouts.outcome, mask, config()))
    # scaling the rewards changes the balance without the normaliser, and nothing with it
    for norm, changes in (("none", True), ("batch_norm", False)):
        a, b = (train.compute_advantages(scale * process, rollouts.outcome, mask, config(process_norm=norm))
                for scale in (1.0, 4.0))
        assert changes != torch.allclose(a, b, atol=1e-5), norm


# The max-|return| normaliser's group: rows of the step, on any number of ranks. Eight rows with
# their lengths; on two ranks rank 0 holds the first four (width 7), rank 1 the last four (width 6).
NORM_LENGTHS = [5, 3, 7, 2, 6, 4, 1, 3]


def norm_batch():
    mask = (torch.arange(7)[None] < torch.tensor(NORM_LENGTHS)[:, None]).float()        # [8, 7]
    return torch.randn(8, 7, generator=torch.Generator().manual_seed(3)) * mask, mask


def by_hand(process, mask, group):  # rewards.normalize_process_rewards on each `group` rows
    return torch.cat([rewards.normalize_process_rewards(process[s:s + group], mask[s:s + group])
                      for s in range(0, len(process), group)])


def _norm_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        process, mask = norm_batch()
        mine = slice(4 * rank, 4 * rank + 4)
        width = max(NORM_LENGTHS[mine])
        torch.save({group: rewards.normalize_in_groups(process[mine, :width], mask[mine, :width], group)
                    for group in (2, 4, 8, 0)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_normaliser_group_is_rows_of_the_step_on_any_number_of_ranks(tmp_path):
    """process_norm_rows: one max-|return| divisor per that many consecutive rows of the step,
    whether the rows lie on one rank or on several (0: the whole step), so a run computes the same
    advantages on 1 or 2 ranks (16 GPUs or 8 with the recipe's 128)."""
    process, mask = norm_batch()
    for group in (2, 4, 8):
        assert torch.equal(rewards.normalize_in_groups(process, mask, group), by_hand(process, mask, group))
    whole = rewards.normalize_process_rewards(process, mask)
    assert torch.equal(rewards.normalize_in_groups(process, mask, 0), whole)
    assert torch.equal(rewards.normalize_in_groups(process, mask, 128), whole)  # a step smaller than the group
    assert not torch.allclose(by_hand(process, mask, 4), by_hand(process, mask, 8))  # the group matters
    with pytest.raises(ValueError, match="does not divide"):
        rewards.normalize_in_groups(process, mask, 3)

    import torch.multiprocessing as mp
    mp.spawn(_norm_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got, mine = torch.load(tmp_path / f"rank{rank}.pt"), slice(4 * rank, 4 * rank + 4)
        width = max(NORM_LENGTHS[mine])
        for group, whole in ((2, 2), (4, 4), (8, 8), (0, 8)):  # 8 and 0 span the two ranks
            torch.testing.assert_close(got[group], by_hand(process, mask, whole)[mine, :width], atol=0, rtol=0)


def test_normaliser_group_must_divide_the_step_into_whole_prompts():
    """A group of more rows than the step is the whole step (32 here); one that does not divide
    the step (12) or would split a prompt's K responses (2, 6) is refused."""
    cfg = config(prompts_per_step=4)  # 16 responses per step, K = 4
    for rows, ok in ((0, True), (8, True), (16, True), (32, True), (6, False), (12, False), (2, False), (-4, False)):
        if ok:
            batches.check_arithmetic(dataclasses.replace(cfg, process_norm_rows=rows), 1)
        else:
            with pytest.raises(SystemExit, match="process_norm_rows"):
                batches.check_arithmetic(dataclasses.replace(cfg, process_norm_rows=rows), 1)


# ----------------------------------------------------------------------------------------------
# which models a run loads and checkpoints
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("switches,loads,trained,ref_kind", [
    ({}, 3, {"policy", "prm"}, "frozen copy"),
    ({"process_rewards": False}, 1, {"policy"}, None),
    ({"reference": "policy"}, 2, {"policy", "prm"}, "policy"),
    ({"prm_update": "frozen"}, 3, {"policy"}, "frozen copy"),
    ({"prm_update": "double"}, 3, {"policy", "prm"}, "frozen copy"),
])
def test_build_models_loads_only_what_the_switches_need(tmp_path, monkeypatch, switches, loads, trained, ref_kind):
    path = str(tmp_path / "sft")
    random_checkpoint(path, hidden_size=32, layers=1)
    loaded = []
    real_load = M.load_shards  # every model load_for_training builds is filled by it: (model, path)
    monkeypatch.setattr(M, "load_shards", lambda *a, **k: loaded.append(a[1]) or real_load(*a, **k))
    policy, prm, ref, models, optimizers = train.build_models(config(**switches), path, torch.device("cpu"),
                                                               init_device_mesh("cpu", (1,)))

    assert len(loaded) == loads, loaded
    assert set(models) == set(optimizers) == trained  # what a checkpoint stores
    assert models["policy"] is policy
    if ref_kind is None:
        assert prm is None and ref is None
    elif ref_kind == "policy":
        assert ref is policy
    else:
        assert ref is not policy and ref is not prm and not any(p.requires_grad for p in ref.parameters())
    if switches.get("prm_update") == "frozen":
        assert not any(p.requires_grad for p in prm.parameters())
    elif prm is not None:
        assert models["prm"] is prm and all(p.requires_grad for p in prm.parameters())


# ----------------------------------------------------------------------------------------------
# prm_step: single, double, frozen; the reference
# ----------------------------------------------------------------------------------------------

def implicit(prm_logp, ref_logp, rollouts, cfg):
    return rewards.implicit_process_rewards(prm_logp, ref_logp, rollouts.mask("cpu"), cfg.beta)


def test_frozen_prm_keeps_its_weights_and_scores_with_them():
    rollouts, cfg = random_rollouts(), config(prm_update="frozen")
    prm, ref = tiny_net(1), tiny_net(2)
    prm.requires_grad_(False)
    before = state(prm)
    want = implicit(logprobs(prm, rollouts, cfg), logprobs(ref, rollouts, cfg), rollouts, cfg)
    process, loss = train.prm_step(prm, ref, None, rollouts, cfg, "cpu", mode="frozen")
    assert same_weights(before, state(prm)), "a frozen PRM changed"
    torch.testing.assert_close(process, want, atol=1e-6, rtol=0)
    # the loss is still reported: the CE of these very rewards (a diagnostic)
    mask = rollouts.mask("cpu")
    ce = rewards.prm_ce_loss(process / cfg.beta, torch.zeros_like(mask), mask, rollouts.outcome, cfg.beta)
    assert loss == pytest.approx(float(ce), rel=1e-5)


def updating_prm_step(mode):
    """One prm_step of a trainable PRM in `mode` ("single" or "double") on random rollouts,
    checked to have moved the PRM. Returns rollouts, cfg, the PRM, the reference, the implicit
    rewards before the step, and prm_step's (rewards, loss)."""
    rollouts, cfg = random_rollouts(), config(prm_update=mode)
    prm, ref = tiny_net(1), tiny_net(2)
    before = state(prm)
    initial = implicit(logprobs(prm, rollouts, cfg), logprobs(ref, rollouts, cfg), rollouts, cfg)
    optimizer = adamw(prm, cfg.prm_lr, cfg.prm_weight_decay)
    process, loss = train.prm_step(prm, ref, optimizer, rollouts, cfg, "cpu", mode=mode)
    assert not same_weights(before, state(prm)), "the PRM was not updated"
    return rollouts, cfg, prm, ref, initial, process, loss


def test_single_forward_scores_each_mini_batch_before_its_own_update():
    _, _, _, _, initial, process, loss = updating_prm_step("single")
    # mini-batch 1 (rows 0-7) is scored by the PRM before any update; mini-batch 2 after one
    torch.testing.assert_close(process[:8], initial[:8], atol=1e-6, rtol=0)
    assert not torch.allclose(process[8:], initial[8:], atol=1e-5)
    assert 0 < loss < 5


def test_double_forward_rescores_every_response_with_the_updated_prm():
    rollouts, cfg, prm, ref, initial, process, _ = updating_prm_step("double")
    with torch.no_grad():  # a fresh forward of the updated PRM
        fresh = implicit(logprobs(prm, rollouts, cfg), logprobs(ref, rollouts, cfg), rollouts, cfg)
    torch.testing.assert_close(process, fresh, atol=1e-6, rtol=0)
    assert not torch.allclose(process[:8], initial[:8], atol=1e-5), "mini-batch 1 kept its old score"


def test_double_and_single_update_the_prm_identically():
    """The mode changes which forward the rewards come from, not the PRM's updates."""
    rollouts, cfg = random_rollouts(), config()
    weights = {}
    for mode in ("single", "double"):
        prm, ref = tiny_net(1), tiny_net(2)
        train.prm_step(prm, ref, adamw(prm, cfg.prm_lr, 0.0), rollouts, cfg, "cpu", mode=mode)
        weights[mode] = state(prm)
    assert same_weights(weights["single"], weights["double"])


def test_reference_policy_scores_against_the_policys_old_logprobs():
    rollouts, cfg = random_rollouts(), config(reference="policy")
    policy = tiny_net(3)
    old_logp = logprobs(policy, rollouts, cfg)  # pi_theta_old, as train.main takes it at T = 1

    # a PRM equal to the policy: every reward exactly 0 (same micro-batches, same computation)
    process, loss = train.prm_step(copy.deepcopy(policy), policy, None, rollouts, cfg, "cpu", mode="frozen")
    assert torch.equal(process, torch.zeros_like(process))
    assert loss == pytest.approx(0.6931471805599453, abs=1e-6)  # log 2

    prm = tiny_net(1)
    want = implicit(logprobs(prm, rollouts, cfg), old_logp, rollouts, cfg)
    process, _ = train.prm_step(prm, policy, None, rollouts, cfg, "cpu", mode="frozen")
    torch.testing.assert_close(process, want, atol=1e-6, rtol=0)


def test_prm_step_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        train.prm_step(tiny_net(1), tiny_net(2), None, random_rollouts(), config(), "cpu", mode="triple")


# ----------------------------------------------------------------------------------------------
# the accuracy filter switch
# ----------------------------------------------------------------------------------------------

def test_accuracy_filter_off_keeps_every_group():
    scores = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.float32)
    on = train.kept_groups(scores, config())
    assert on.tolist() == [False, True, False, True]  # the recipe's [0.2, 0.8]
    assert torch.equal(on, rewards.accuracy_filter(scores, K, 0.2, 0.8))
    off = train.kept_groups(scores, config(accuracy_filter=False, filter_low=0.9, filter_high=1.0))
    assert off.tolist() == [True] * 4


# ----------------------------------------------------------------------------------------------
# the configuration
# ----------------------------------------------------------------------------------------------

def test_switch_defaults_are_the_recipe_in_every_preset():
    for preset in train.PRESETS:
        cfg = parse([f"--preset={preset}", "--train_files=train.parquet"])
        assert (cfg.process_rewards, cfg.prm_update, cfg.reference, cfg.accuracy_filter, cfg.process_norm) == \
            (True, "single", "sft", True, "batch_norm"), preset


def test_switches_parse():
    cfg = parse(["--process_rewards=false", "--prm_update=double", "--reference=policy",
                              "--accuracy_filter=0", "--process_norm=none"])
    assert (cfg.process_rewards, cfg.prm_update, cfg.reference, cfg.accuracy_filter, cfg.process_norm) == \
        (False, "double", "policy", False, "none")
    assert parse(["--prm_update=frozen", "--prm_path=x"]).prm_update == "frozen"


def test_every_switch_has_a_help_line():
    fields = {f.name: f for f in dataclasses.fields(train.Config)}
    for name in ("process_rewards", "prm_update", "reference", "accuracy_filter", "process_norm"):
        assert fields[name].metadata.get("help"), name


def test_official_first_iteration_updates_at_learning_rate_zero():
    """--official_first_iteration: iteration 1 runs at lr 0 (the official schedule's first factor),
    so the weights stay put while AdamW's moments advance; from iteration 2 the configured rates."""
    net = tiny_net(0)
    opt = adamw(net, 1e-2, 0.01)
    cfg = config(official_first_iteration=True, policy_lr=1e-2)
    before = state(net)
    train.set_learning_rates({"policy": opt}, cfg, step=1)
    net(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    assert same_weights(before, state(net)) and opt.state[next(net.parameters())]["exp_avg"].abs().sum() > 0
    train.set_learning_rates({"policy": opt}, cfg, step=2)
    assert opt.param_groups[0]["lr"] == 1e-2
    train.set_learning_rates({"policy": opt}, config(policy_lr=1e-2), step=1)  # the default: no zero
    assert opt.param_groups[0]["lr"] == 1e-2
