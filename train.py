"""train.py: PRIME's training loop (Cui et al. 2025, arXiv 2502.01456, Algorithm 1).

    python train.py                                   # the toy preset on the CPU (SFT, then PRIME)
    torchrun --nproc_per_node=2 train.py              # the same on 2 CPU ranks (gloo)
    torchrun --nproc_per_node=8 train.py --preset=eurus2-7b-prime \\
        --model_path=/ckpt/Eurus-2-7B-SFT --train_files=/data/train.parquet --out_dir=runs/prime
    torchrun --nproc_per_node=8 train.py --preset=eurus2-7b-sft \\
        --model_path=/ckpt/Qwen2.5-Math-7B --sft_files=/data/chats.parquet --out_dir=runs/sft
    python train.py --preset=... --model_path=DIR --memory_plan=true   # per-GPU memory (memory.py)
    python train.py --print_config [--preset=...]     # the resolved config as JSON
    python train.py --help                            # every field, its meaning, each preset's value

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
mixed precision), so one process computes exactly as N do. The SFT stage (--stage=sft) makes
that checkpoint with the same machinery, from chat files or, for the toy, worked solutions.

The paper's ablations are Config switches (defaults: the recipe above): process_rewards=false is
outcome-only RLOO (Fig. 4); prm_update=double|frozen re-scores after the PRM update, or never
updates it (with --prm_path: an offline PRM, Fig. 6); reference=policy uses pi_theta_old as pi_ref;
accuracy_filter=false keeps every prompt. One switch is ours, not the paper's: process_norm=none
leaves out the official code's max-|return| normaliser, so the process rewards enter the returns
as the paper's beta*log(pi_phi/pi_ref). ablate.py runs them over seeds, plot.py draws the curves.

Every step appends one JSON line to <out_dir>/metrics.jsonl; a checkpoint is written every
`save_every` steps and a re-run with the same out_dir resumes from the last complete one.
"""

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from transformers import AutoTokenizer

import data
import eval as evaluation
import memory
import model as M
import rewards
import rollout


# ==============================================================================================
# 1. The configuration: every knob, its meaning and the paper's value.
# ==============================================================================================

def knob(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """Defaults are the toy preset's; PRESETS below lists what the other presets change, and
    `python train.py --help` prints every field with its value in each. The paper's recipe also
    sets the KL coefficient and the entropy bonus to 0 (docs/notes.md §4), so the policy loss
    here has neither term."""
    preset: str = knob("toy", "toy (CPU, minutes), eurus2-7b-prime (the paper's PRIME recipe) or eurus2-7b-sft "
                              "(its SFT recipe)")
    stage: str = knob("prime", "prime: the RL loop (after SFT if the toy has no SFT model yet); sft: SFT only")
    out_dir: str = knob("runs/toy", "checkpoints, metrics.jsonl, summary.json, the exported policy")
    seed: int = knob(0, "seeds data order, sampling and shuffling (per step and rank, so resume is exact)")

    # models: three networks of one architecture (Alg. 1 line 1); the toy makes its own SFT model
    model_path: str = knob("", "SFT checkpoint (Hugging Face folder): policy, PRM and reference start here. "
                               "Toy: empty = <out_dir>/sft, trained first if missing")
    prm_path: str = knob("", "PRM initialisation if not model_path (the paper starts it from the SFT model)")
    bf16: bool = knob(False, "bf16 compute with fp32 master weights (CUDA); reference kept in bf16")
    activation_checkpointing: bool = knob(False, "recompute each layer in backward to save memory")

    # memory and processes (see memory.py): sampling is the phase that fills a GPU (the KV cache),
    # so its size is derived from what the rest of the step leaves free, not set by hand
    gpu_memory_utilization: float = knob(0.9, "share of each GPU's memory the run may use: sampling sizes its KV "
                                              "cache to fit it, the memory plan checks every phase against it")
    memory_plan: bool = knob(False, "print the per-GPU memory plan of this config (and write it to "
                                    "<out_dir>/memory_plan.json) and exit: runs on a CPU, --model_path needs only "
                                    "config.json; exit 1 if it does not fit")
    world_size: int = knob(0, "memory plan: GPUs to plan for (0: this machine's, or 8 without GPUs)")
    gpu_memory_gib: float = knob(0.0, "memory plan: GiB per GPU (0: this machine's GPU, or 80 without GPUs)")
    dist_timeout_minutes: int = knob(30, "how long a rank waits at a collective before the run fails")

    # data: Eurus-2-RL-Data parquet for the recipe; otherwise the built-in toy (data.py section 5),
    # whose knobs set how hard it is and how often the SFT teacher is careless
    train_files: str = knob("", "comma-separated Eurus-2-RL-Data parquet files; empty = the built-in toy task")
    eval_files: str = knob("", "comma-separated validation parquet files (greedy accuracy); empty with the "
                               "toy = its held-out split")
    eval_problems: int = knob(500, "toy: held-out problems for the greedy accuracy before/after")
    toy_task: str = knob("expression", "toy: expression (one place where the careless habit strikes: the first "
                                       "line) or products (toy_products places, each on its own; data.py section 5)")
    toy_steps: int = knob(3, "toy: operations per problem (expression task)")
    toy_products: int = knob(3, "toy: products per problem, each a place to slip (products task)")
    toy_max_operand: int = knob(6, "toy: operands are drawn from 1..toy_max_operand (at 9 the tiny model's "
                                   "arithmetic slips, not its habits, limit the accuracy; README)")
    toy_careless_share: float = knob(0.6, "toy: share of SFT solutions worked left to right, ignoring that * "
                                           "comes first (wrong on ~37% of problems; data.py section 5); products "
                                           "task: the chance of a slip at each product, drawn for each on its own")
    toy_train_problems: int = knob(20000, "toy: size of the RL training pool")
    max_prompt_tokens: int = knob(64, "drop longer prompts")
    max_response_tokens: int = knob(48, "sampling stops here")

    # rollout and filter (Alg. 1 lines 4-6): K samples per prompt give each response K-1 others
    # to serve as its baseline; prompts all right or all wrong carry no signal and are dropped
    prompts_per_step: int = knob(64, "kept prompts per step, all ranks together")
    samples_per_prompt: int = knob(4, "K responses per prompt")
    temperature: float = knob(1.0, "sampling temperature")
    top_p: float = knob(1.0, "nucleus sampling mass")
    filter_low: float = knob(0.2, "keep a prompt when its mean outcome is >= this")
    filter_high: float = knob(0.8, "... and <= this")
    max_collect_rounds: int = knob(20, "stop with an error when this many sampling rounds cannot fill a step")

    # implicit PRM (Alg. 1 lines 7-8): beta scales log(pi_phi/pi_ref) into a reward. The recipe
    # gives the PRM the larger learning rate (1e-6 against the policy's 5e-7, docs/notes.md §6):
    # an online PRM has to follow the responses of a policy that keeps changing
    beta: float = knob(0.05, "implicit reward scale beta in beta*log(pi_phi/pi_ref)")
    prm_lr: float = knob(1e-4, "PRM AdamW learning rate, constant")
    prm_weight_decay: float = knob(0.0, "PRM AdamW weight decay")
    prm_grad_clip: float = knob(10.0, "PRM gradient-norm clip")
    prm_mini_batch: int = knob(128, "responses per PRM optimizer step, in order, all ranks")

    # advantage (Alg. 1 line 9): gamma 1 sums every later process reward into a token's return
    gamma: float = knob(1.0, "discount of both returns")

    # ablation switches (the paper's Fig. 4, §5 / App. B); the defaults are the recipe
    process_rewards: bool = knob(True, "false: outcome-only RLOO, the paper's baseline (no PRM, no reference)")
    prm_update: str = knob("single", "single: rewards from the forward that trains each PRM mini-batch; double: "
                                     "update on every mini-batch, then re-score; frozen: never update "
                                     "(with --prm_path: an offline PRM)")
    reference: str = knob("sft", "pi_ref of the implicit reward: sft (the frozen SFT model) or policy "
                                 "(pi_theta_old, no reference model)")
    accuracy_filter: bool = knob(True, "false: keep every prompt's group (filter_low/high ignored)")
    process_norm: str = knob("batch_norm", "batch_norm: divide the process rewards by the largest |process "
                                           "return| of the rank's batch (the official default, not in the "
                                           "paper); none: no normaliser, the rewards beta*log(pi_phi/pi_ref) "
                                           "as they are ([VR] prime_norm=none; not an ablation of the paper)")

    # policy (Alg. 1 line 10): one PPO epoch over the step's mini-batches, so the ratio pi/pi_old
    # departs from 1 only through the step's earlier mini-batch updates
    policy_lr: float = knob(2e-5, "policy AdamW learning rate, constant")
    policy_weight_decay: float = knob(0.01, "policy AdamW weight decay")
    policy_grad_clip: float = knob(1.0, "policy gradient-norm clip")
    policy_mini_batch: int = knob(128, "responses per policy optimizer step, shuffled, all ranks")
    ppo_epochs: int = knob(1, "passes over each step's responses")
    clip_eps: float = knob(0.2, "PPO ratio clip")

    # schedule and bookkeeping: learning rates are constant in the recipe (no warmup, no decay)
    steps: int = knob(100, "PRIME iterations")
    official_first_iteration: bool = knob(False, "true: the first iteration's updates run at learning rate 0, as "
                                                 "in the official code (its schedule starts at 0; AdamW's moments "
                                                 "still advance), so N steps are N-1 updates (docs/notes.md §2)")
    micro_batch_tokens: int = knob(4096, "packed tokens per forward/backward on one rank")
    save_every: int = knob(25, "checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = knob(2, "complete checkpoints kept on disk")
    eval_every: int = knob(0, "greedy eval every this many steps (0: only before and after)")

    # SFT (--stage=sft; the toy's warm start): Eurus-2-7B-SFT's recipe is the eurus2-7b-sft preset
    sft_files: str = knob("", "comma-separated chat files (parquet / JSON / JSONL; `messages` role/content or "
                              "`conversations` from/value) to fine-tune --model_path on; empty: the toy's solutions")
    sft_max_tokens: int = knob(0, "drop (and count) longer chats; 0: the model's context length")
    sft_problems: int = knob(20000, "toy: SFT examples (worked solutions)")
    sft_epochs: int = knob(2, "SFT epochs")
    sft_batch: int = knob(32, "SFT chats per optimizer step, all ranks")
    sft_lr: float = knob(1e-3, "SFT peak learning rate, cosine decay")
    sft_warmup: float = knob(0.1, "SFT warmup share of the steps")
    sft_save_every: int = knob(250, "SFT: checkpoint every this many steps (and at the end)")
    toy_hidden: int = knob(128, "toy model: hidden size")
    toy_layers: int = knob(4, "toy model: decoder layers")


PRESETS = {
    "toy": {},
    "eurus2-7b-prime": dict(  # docs/notes.md §6: Eurus-2-7B-PRIME
        out_dir="runs/eurus2-7b-prime", bf16=True, activation_checkpointing=True,
        max_prompt_tokens=1024, max_response_tokens=3072, prompts_per_step=256, samples_per_prompt=4,
        temperature=1.0, top_p=1.0, filter_low=0.2, filter_high=0.8, beta=0.05,
        prm_lr=1e-6, prm_weight_decay=0.0, prm_grad_clip=10.0, prm_mini_batch=256,
        gamma=1.0, policy_lr=5e-7, policy_weight_decay=0.01, policy_grad_clip=1.0,
        policy_mini_batch=256, ppo_epochs=1, clip_eps=0.2, steps=592, micro_batch_tokens=16384,
        save_every=16, eval_every=16),
    "eurus2-7b-sft": dict(  # docs/notes.md §6: Eurus-2-7B-SFT from Qwen2.5-Math-7B-Base
        stage="sft", out_dir="runs/eurus2-7b-sft", bf16=True, activation_checkpointing=True, seed=42,
        sft_epochs=3, sft_batch=96, sft_lr=1e-5, sft_warmup=0.1, micro_batch_tokens=16384),
}


PRM_UPDATES = ("single", "double", "frozen")  # Config.prm_update
REFERENCES = ("sft", "policy")                # Config.reference
PROCESS_NORMS = ("batch_norm", "none")        # Config.process_norm
# metrics.jsonl keys that measure the PRM: null when process_rewards is off
PRM_METRICS = ("prm_loss", "prm_accuracy", "process_reward_mean", "process_reward_std")


def parse_config(argv):
    """--key=value for any field (type-checked), --preset=NAME, --print_config, --help."""
    # nanoGPT-style flags rather than argparse: every Config field is a flag, with no second
    # list of options to keep in step with the dataclass.
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    values, print_config = {}, False
    for arg in argv:
        if arg in ("--help", "-h"):
            print_help()
            raise SystemExit(0)
        if arg == "--print_config":
            print_config = True
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"train.py: expected --key=value, got {arg!r} (--help lists the fields)")
        key, value = arg[2:].split("=", 1)
        if key not in types:
            raise SystemExit(f"train.py: unknown option --{key} (--help lists the fields)")
        kind = types[key]  # bool, int, float or str
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                values[key] = value.lower() in ("true", "1")
            else:
                values[key] = kind(value)
        except ValueError:
            raise SystemExit(f"train.py: --{key} expects a {kind.__name__}, got {value!r}") from None
    # The preset's values first, then the user's flags over them: --preset=eurus2-7b-prime
    # --steps=10 is the recipe cut short.
    preset = values.get("preset", "toy")
    if preset not in PRESETS:
        raise SystemExit(f"train.py: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = Config(**{**PRESETS[preset], **values})
    if print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        raise SystemExit(0)
    # Every bad value at once, before any process group or model exists: a 7B run should not
    # fail on a typo after minutes of loading.
    problems = [f"--{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}"
                for name, choices in (("stage", ("prime", "sft")), ("prm_update", PRM_UPDATES),
                                      ("reference", REFERENCES), ("process_norm", PROCESS_NORMS),
                                      ("toy_task", data.TOY_TASKS)) if getattr(cfg, name) not in choices]
    problems += [f"--{name}={getattr(cfg, name)}: {why}" for name, ok, why in (
        ("beta", cfg.beta > 0, "must be positive"),
        ("gamma", 0 <= cfg.gamma <= 1, "must lie in [0, 1]"),
        ("clip_eps", 0 < cfg.clip_eps < 1, "must lie in (0, 1)"),
        ("temperature", cfg.temperature > 0, "must be positive: K greedy samples would all be the same"),
        ("top_p", 0 < cfg.top_p <= 1, "must lie in (0, 1]"),
        ("filter_low", 0 <= cfg.filter_low <= cfg.filter_high <= 1, "need 0 <= filter_low <= filter_high <= 1"),
        ("gpu_memory_utilization", 0 < cfg.gpu_memory_utilization <= 1, "must lie in (0, 1]")) if not ok]
    if not cfg.memory_plan:
        if preset != "toy" and cfg.stage == "prime" and not cfg.train_files:
            problems.append(f"--preset={preset} trains on Eurus-2-RL-Data: pass --train_files (and "
                            f"--model_path); the built-in toy task is --preset=toy")
        if cfg.stage == "sft" and bool(cfg.sft_files) != bool(cfg.model_path):
            problems.append("--stage=sft fine-tunes --model_path (the base model) on --sft_files (chat files): "
                            "give both, or neither for the toy")
    if problems:
        raise SystemExit("train.py: " + "; ".join(problems))
    return cfg


def print_help():
    """Every Config field with its meaning and its value in each preset."""
    print(__doc__.split("\n\n")[1].rstrip("\n") + "\n\nfields (--key=value), with the value in each preset:")
    for f in dataclasses.fields(Config):
        values = ", ".join(f"{name} {PRESETS[name].get(f.name, f.default)!r}" for name in PRESETS) \
            if f.name != "preset" else "one of: " + ", ".join(PRESETS)
        print(f"  --{f.name}=<{f.type.__name__}>  [{values}]\n      {f.metadata['help']}")


# ==============================================================================================
# 2. Processes: torchrun ranks, or one process on its own (model.init_distributed).
# ==============================================================================================

def seed_for(*parts):
    """A seed derived from any values (Python's hash() of strings changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 2


def log(*args):  # rank 0 speaks for all
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


def all_sum(values, device):
    """Sum a list of numbers over ranks; returns floats."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value, device):
    """The largest integer over ranks: how many rounds or micro-batches every rank must run."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def check_batch_arithmetic(cfg, world):
    """The numbers every rank must agree on, printed once; a config that does not divide stops."""
    if cfg.stage == "sft":
        if cfg.sft_batch % world:
            raise SystemExit(f"train.py: sft_batch={cfg.sft_batch} is not divisible by {world} ranks")
        return
    K = cfg.samples_per_prompt
    responses = cfg.prompts_per_step * K  # one step's batch, all ranks together
    # Each rank takes an equal share of the prompts and of every mini-batch; a mini-batch must
    # divide the step's responses, or the last optimizer step would see a partial batch.
    problems = []
    if cfg.prompts_per_step % world:
        problems.append(f"prompts_per_step={cfg.prompts_per_step} is not divisible by {world} ranks")
    for name in ("prm_mini_batch", "policy_mini_batch"):
        mini = getattr(cfg, name)
        if mini % world or responses % mini:
            problems.append(f"{name}={mini} must divide the {responses} responses per step and "
                            f"be divisible by {world} ranks")
    if K < 2:
        problems.append("samples_per_prompt must be >= 2 (the leave-one-out baseline needs K-1 others)")
    if cfg.keep_checkpoints < 1 or cfg.save_every < 1:
        problems.append("keep_checkpoints and save_every must be >= 1")
    if problems:
        raise SystemExit("train.py: " + "; ".join(problems))
    if not cfg.process_rewards:
        prm = "no PRM (outcome-only RLOO)"
    elif cfg.prm_update == "frozen":
        prm = "PRM frozen (scores only)"
    else:
        prm = (f"PRM: {responses // cfg.prm_mini_batch} optimizer steps of {cfg.prm_mini_batch} responses, "
               f"in order" + (", then a second forward re-scores them all" if cfg.prm_update == "double" else ""))
    log(f"batch: {cfg.prompts_per_step} prompts x {K} samples = {responses} responses per step "
        f"({responses // world} per rank on {world} ranks); {prm}; policy: "
        f"{cfg.ppo_epochs * responses // cfg.policy_mini_batch} optimizer steps of {cfg.policy_mini_batch} "
        f"responses, shuffled; micro-batches of <= {cfg.micro_batch_tokens} tokens")


# ==============================================================================================
# 3. Models and optimizers.
# ==============================================================================================

def load_for_training(path, cfg, device, mesh, trainable):
    """A model from a Hugging Face folder, on `device`, sharded with FSDP2 over `mesh` (on one
    rank too: then FSDP2 only applies the mixed precision, so one process computes exactly as
    N do). Trainable models keep fp32 master weights (bf16 compute with cfg.bf16); the frozen
    reference is stored in bf16 under cfg.bf16, as the official code kept it (docs/notes.md §1).
    With both, the PRM's bf16 compute copy of the SFT weights equals the reference's bf16
    weights bit for bit, so at step 1 their log-probs agree exactly and every process reward
    is exactly 0 (prm_step's docstring says why that matters)."""
    dtype = torch.bfloat16 if cfg.bf16 and not trainable else torch.float32
    net = M.load_model(path, device=device, dtype=dtype)
    net.train(trainable)
    net.requires_grad_(trainable)
    return M.fsdp_wrap(net, mesh, mixed_precision=cfg.bf16 and trainable,
                       activation_checkpointing=cfg.activation_checkpointing and trainable)


def adamw(net, lr, weight_decay):
    """AdamW as the official code configures it (betas 0.9/0.999). The fused implementation
    updates every parameter in one kernel with no temporaries: the for-each one (the CUDA
    default) holds a temporary as large as this rank's parameter shard (3.5 GB at 7B on 8 GPUs)."""
    return torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=True)


def build_models(cfg, model_path, device, mesh):
    """(policy, prm, ref, models, optimizers) for a PRIME run under the ablation switches: `ref`
    is the network whose log-probs are log pi_ref in the implicit reward. `models` and `optimizers`
    hold what is trained, i.e. what a checkpoint stores.
      default                policy, PRM (trained) and a frozen copy of the SFT model as ref
      process_rewards=False  prm = ref = None: outcome-only RLOO needs neither, and skips their
                             memory and forwards (PRIME's step costs +24% over RLOO, [P2] Table 2)
      prm_update=frozen      the PRM is loaded frozen: no optimizer, not checkpointed (on resume
                             it is read again from its path, unchanged)
      reference=policy       ref is the policy itself ([PR] ref_type=policy): prm_step runs before
                             the policy's update, so it scores with pi_theta_old; no third model.
                             (At temperature 1, like the PRM; the PPO ratio's old log-probs use the
                             sampling temperature: the same numbers at the recipe's T = 1.)"""
    policy = load_for_training(model_path, cfg, device, mesh, trainable=True)
    models, optimizers = {"policy": policy}, {"policy": adamw(policy, cfg.policy_lr, cfg.policy_weight_decay)}
    prm = ref = None
    if cfg.process_rewards:
        trained = cfg.prm_update != "frozen"
        prm = load_for_training(cfg.prm_path or model_path, cfg, device, mesh, trainable=trained)
        if trained:
            models["prm"], optimizers["prm"] = prm, adamw(prm, cfg.prm_lr, cfg.prm_weight_decay)
        ref = policy if cfg.reference == "policy" else load_for_training(model_path, cfg, device, mesh,
                                                                          trainable=False)
    return policy, prm, ref, models, optimizers


def sampling_memory(policy, cfg, device, rows):
    """rollout.generate's memory bounds for sampling `rows` rows with the FSDP2-sharded policy
    (memory.sampling_limits: the KV cache gets what the GPU has left under gpu_memory_utilization;
    prompts are prefilled micro_batch_tokens at a time; no bound on the CPU)."""
    return memory.sampling_limits(policy.config, device, rows, cfg.gpu_memory_utilization, cfg.micro_batch_tokens,
                                  memory.compute_dtype(cfg), sharded=True)


def clip_and_step(net, optimizer, max_norm):
    """Clip the gradient norm (over all ranks' shards), step, zero the gradients; returns the
    norm before clipping."""
    # Under FSDP2 every gradient is a DTensor shard; clip_grad_norm_ sums the squares over all
    # ranks' shards, so each rank scales by the same global norm. The norm itself comes back as a
    # DTensor too: full_tensor() makes it a plain number for the metrics.
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ==============================================================================================
# 4. Responses as packed sequences, and their token log-probs as [B, T] matrices.
# ==============================================================================================

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


def micro_batches(rows, lengths, budget, device):
    """Split `rows` (in order; lengths[i]: row i's packed tokens) into micro-batches of at most
    `budget` tokens (a longer sequence goes alone), as many on every rank: under FSDP each forward and backward is a
    collective, so all ranks must run as many. A rank that needs fewer splits its largest
    micro-batches further. Every rank holds as many rows (a step's quota, a mini-batch), and
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


def packed_logprobs(net, sequences, device, temperature=1.0):
    """log pi and the entropy of chosen tokens of several sequences, packed into one forward in
    the model's score mode. sequences: (token ids, the indices k of the tokens to score) each;
    packed position k-1 predicts token k. Returns (logp [M], entropy [M]) in that order. Every
    index is built here on the host, so the forward waits for nothing on the device."""
    # The packed token ids, the sequence boundaries (cu_seqlens), which packed positions to
    # score and the token each should predict.
    ids, cu, scored, targets = [], [0], [], []
    for seq, ks in sequences:
        scored += [cu[-1] + k - 1 for k in ks]
        targets += [seq[k] for k in ks]
        ids += seq
        cu.append(cu[-1] + len(seq))
    return net(torch.tensor(ids, device=device), torch.tensor(cu, dtype=torch.int32, device=device),
               max_seqlen=max(b - a for a, b in zip(cu, cu[1:])), scored=torch.tensor(scored, device=device),
               targets=torch.tensor(targets, device=device), temperature=temperature)


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
    logp, entropy = packed_logprobs(net, sequences, device, temperature)  # [M] each
    if not torch.is_grad_enabled() and isinstance(net, FSDPModule):
        # No backward follows: free the root unit's gathered embedding and head now. (fsdp_wrap
        # asks FSDP2 to do so after every forward; versions before 2.7 keep the root gathered.)
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


# ==============================================================================================
# 5. Collect: sample, verify, filter, refill (Alg. 1 lines 4-6).
# ==============================================================================================

class PromptStream:
    """This rank's prompts, forever: a seeded shuffle of the training problems per epoch (every
    rank the same order; rank r takes every world-th), and a buffer of prompts that were kept
    beyond a step's quota, served first (the official BufferedDataLoader, docs/notes.md §5)."""

    def __init__(self, n_problems, seed, rank, world):
        self.n, self.seed, self.rank, self.world = n_problems, seed, rank, world
        self.epoch, self.cursor, self.buffer = 0, 0, []

    def take(self, k):
        """The next k problem indices: buffered ones first, then this rank's slice of the
        epoch's shuffle, wrapping into the next epoch (a new shuffle) when it runs out."""
        out = self.buffer[:k]
        self.buffer = self.buffer[k:]
        while len(out) < k:
            # the epoch's order is a pure function of (seed, epoch): nothing to store but a cursor
            order = list(range(self.n))
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
            mine = order[self.rank::self.world]
            take = min(k - len(out), len(mine) - self.cursor)
            out += mine[self.cursor:self.cursor + take]
            self.cursor += take
            if self.cursor == len(mine):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state(self):  # what a checkpoint stores: enough to serve the same prompts after resume
        return {"epoch": self.epoch, "cursor": self.cursor, "buffer": self.buffer}

    def load(self, state):
        self.epoch, self.cursor, self.buffer = state["epoch"], state["cursor"], list(state["buffer"])


def kept_groups(scores, cfg):
    """Which prompts of a sampling round to keep, bool [G] from the outcomes [G * K]: the online
    accuracy filter (paper §3.3, Alg. 1 line 6), or every group with accuracy_filter off."""
    if not cfg.accuracy_filter:
        return torch.ones(len(scores) // cfg.samples_per_prompt, dtype=torch.bool)
    return rewards.accuracy_filter(scores, cfg.samples_per_prompt, cfg.filter_low, cfg.filter_high)


def collect(policy, problems, stream, tokenizer, cfg, step, device):
    """Sample until this rank holds cfg.prompts_per_step / world prompts whose K responses have
    a mean outcome in [filter_low, filter_high] (kept_groups). Every rank runs the same number of
    rounds (sampling under FSDP is collective); a rank with a full quota samples nothing in a round.
    Kept prompts beyond the quota go back to the stream's buffer as prompts (their responses are
    dropped), as in the official code.

    Each rank fills its own quota from its own prompts here; the official code samples the whole
    batch, filters it, and buffers or draws more prompts for the batch as a whole (docs/notes.md
    §5). The kept prompts are drawn by the same rule either way; only which rank holds a prompt,
    and so the batch's mix within a step, differs.

    Returns (Rollouts with rows in groups of K, counts): counts holds the step's totals before
    filtering, "sampled" responses, "correct" (the sum of their outcomes), "groups" and "kept"."""
    world, rank, K = dist.get_world_size(), dist.get_rank(), cfg.samples_per_prompt
    quota = cfg.prompts_per_step // world
    kept = []  # (problem index, [K responses], [K scores], [K truncated])
    counts = {"sampled": 0, "correct": 0.0, "groups": 0, "kept": 0}
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
        max_batch_tokens, max_prefill_tokens = sampling_memory(policy, cfg, device, len(rows))
        responses = rollout.generate(policy, [p.prompt_ids for p in rows], cfg.max_response_tokens, eos,
                                     cfg.temperature, cfg.top_p, seed=seed_for(cfg.seed, step, round_, rank),
                                     vocab_size=len(tokenizer), max_batch_tokens=max_batch_tokens,
                                     max_prefill_tokens=max_prefill_tokens, progress=bar)
        # Alg. 1 line 5: the outcome reward r_o of every response, [len(rows)] in [0, 1]
        scores = torch.tensor(evaluation.score_responses(tokenizer, rows, responses)[1], dtype=torch.float32)
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


# ==============================================================================================
# 6. The PRM step and the policy step (Alg. 1 lines 7-10).
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
    process = torch.zeros(B, T, device=device)  # r_t, filled in mini-batch by mini-batch
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
            process[rows] = rewards.implicit_process_rewards(prm_logp, ref_lp, mask[rows], cfg.beta)
        if update:  # one PRM optimizer step per mini-batch (4 per iteration in the recipe)
            clip_and_step(prm, optimizer, cfg.prm_grad_clip)
    if mode == "double":  # the second forward, on the same micro-batches, with the updated PRM
        with torch.no_grad():
            for rows_mini in mini_batches:
                for rows in micro_batches(rows_mini, rollouts.lengths, cfg.micro_batch_tokens, device):
                    prm_logp, _ = response_logprobs(prm, rollouts, rows, device)
                    process[rows] = rewards.implicit_process_rewards(prm_logp, ref_logp[rows], mask[rows], cfg.beta)
    return process, float(torch.stack(losses).sum()) / len(mini_batches)  # one read, at the end


def compute_advantages(process, outcome, mask, cfg):
    """Advantages [B, T] (Alg. 1 line 9) from the implicit process rewards [B, T] (None when
    process_rewards is off), the outcomes [B] and the response mask [B, T]:
    whiten(RLOO returns of process + outcome rewards), Eq. 5. With process=None it is the paper's
    baseline, outcome-only RLOO, Eq. 4 (whitened the same way): zero process rewards add nothing
    to the returns.

    Each response gets a return at every token: the sum of its remaining process rewards minus
    the other K-1 responses' baseline, plus its outcome minus theirs. Whitening over all tokens
    of all ranks then sets their scale, so that the PPO step's size does not depend on the
    rewards' units (beta, or the verifier's range). What it does not set is the weight of the
    process term against the outcome term: the official normaliser (process_norm=batch_norm)
    divides the process rewards by the batch's largest |process return|, so the most extreme
    response sets it; with process_norm=none beta does, as in Eq. 5."""
    if process is None:
        process = torch.zeros_like(mask)
    elif cfg.process_norm == "batch_norm":  # [PR]: per data-parallel shard, as here per rank
        process = rewards.normalize_process_rewards(process, mask)
    returns = rewards.rloo_returns(process, outcome, mask, cfg.samples_per_prompt, cfg.gamma)
    return rewards.whiten(returns, mask)  # over every valid token of every rank


def policy_step(policy, optimizer, rollouts, old_logp, advantages, cfg, step, device):
    """PPO clip updates over shuffled mini-batches (Eq. 6, [PR]'s sequence-mean of token-means),
    ppo_epochs passes. Returns averaged diagnostics.

    In words (rewards.ppo_clip_loss has the equation): each update raises the log-prob of the
    tokens whose advantage A is positive and lowers it where A is negative; a token whose ratio
    rho = pi_theta / pi_theta_old has already left [1 - eps, 1 + eps] in the direction A favours
    gets no more gradient, so the update has nothing to gain from moving the policy far from the
    one that drew the samples. With one epoch, the first mini-batch sees rho = 1 (up to rounding: its micro-batches
    are packed otherwise than the old log-probs' were); later ones see the drift made by the
    step's earlier mini-batch updates."""
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
    means = (totals / len(grad_norms)).tolist()
    return dict(zip(("loss", "clip_frac", "approx_kl", "entropy"), means), grad_norm=sum(grad_norms) / len(grad_norms))


# ==============================================================================================
# 7. Checkpoints: torch.distributed.checkpoint, complete-marker last, resume from the newest.
# ==============================================================================================

def checkpoint_dirs(root):
    """The complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    return [os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n, "COMPLETE"))]


def save_checkpoint(root, step, models, optimizers, trainer_state, keep, stream=None):
    """The models and optimizers (sharded, each rank its part), every rank's data stream (if
    given) and the trainer's counters, in root/step_NNNNNN; the oldest beyond `keep` go.
    COMPLETE is written last, after every rank finished: a kill mid-save leaves a folder
    without it, which resume ignores."""
    path = os.path.join(root, f"step_{step:06d}")
    # get_state_dict views each rank's shards (DTensors) with FSDP-independent names; DCP writes
    # every rank's part in parallel and can load them back onto another number of ranks.
    state = {}
    for name in models:  # e.g. "policy", "policy_optim", "prm", "prm_optim"
        state[name], state[name + "_optim"] = get_state_dict(models[name], optimizers[name])
    dcp.save(state, checkpoint_id=path)
    # Each rank's prompt stream is its own (its cursor and buffer), so each writes its own file.
    if stream is not None:
        with open(os.path.join(path, f"stream_rank{dist.get_rank()}.json"), "w") as f:
            json.dump(stream.state(), f)
    dist.barrier()  # every rank's files are on disk before the folder is marked complete
    if dist.get_rank() == 0:
        with open(os.path.join(path, "trainer.json"), "w") as f:
            json.dump({**trainer_state, "step": step}, f)
        open(os.path.join(path, "COMPLETE"), "w").close()
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def load_checkpoint(path, models, optimizers, stream=None):
    """Restore what save_checkpoint wrote into the live (sharded) models and optimizers; returns
    the trainer's counters."""
    # DCP loads in place: the state dict of the live objects is the template that says which
    # shard each rank reads, so the world size may differ from the saving run's.
    state = {}
    for name in models:
        state[name], state[name + "_optim"] = get_state_dict(models[name], optimizers[name])
    dcp.load(state, checkpoint_id=path)
    for name in models:
        set_state_dict(models[name], optimizers[name], model_state_dict=state[name],
                       optim_state_dict=state[name + "_optim"])
    if stream is not None:
        with open(os.path.join(path, f"stream_rank{dist.get_rank()}.json")) as f:
            stream.load(json.load(f))
    with open(os.path.join(path, "trainer.json")) as f:
        return json.load(f)


def resume_from(root, metrics_path, models, optimizers, stream=None):
    """The trainer's counters from the newest complete checkpoint under `root` (models,
    optimizers and, if given, every rank's data stream restored; the metrics file cut back to
    its step), or {"step": 0} for a fresh run (an old metrics file removed)."""
    complete = checkpoint_dirs(root)
    if not complete:
        if dist.get_rank() == 0 and os.path.exists(metrics_path):
            os.remove(metrics_path)
        return {"step": 0}
    trainer = load_checkpoint(complete[-1], models, optimizers, stream)
    log(f"resuming from {complete[-1]} (step {trainer['step']} done)")
    if dist.get_rank() == 0 and os.path.exists(metrics_path):  # drop lines of later steps, and a
        with open(metrics_path) as f:  # line cut short by a kill (it has no newline)
            lines = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= trainer["step"]]
        with open(metrics_path, "w") as f:
            f.writelines(lines)
    return trainer


def export(net, tokenizer, path, cfg):
    """The model as a Hugging Face folder with its tokenizer, ready for eval.py and transformers,
    in the compute dtype (bf16 under --bf16, as the released Eurus checkpoints are)."""
    M.save_model(net, path, dtype=torch.bfloat16 if cfg.bf16 else None)
    if dist.get_rank() == 0:
        tokenizer.save_pretrained(path)
    dist.barrier()


# ==============================================================================================
# 8. SFT: next-token cross-entropy on the assistant's tokens, with PRIME's machinery (FSDP2,
#    bf16, checkpoints and exact resume): Eurus-2-7B-SFT's recipe, or the toy's warm start.
# ==============================================================================================

def sft_chats(cfg, tokenizer):
    """The SFT data as (ids, loss) pairs (data.tokenize_chat): chats from --sft_files, longer
    ones than sft_max_tokens dropped and counted; or the toy's worked solutions."""
    stop_ids = set(data.stop_token_ids(tokenizer))
    if not cfg.sft_files:
        rows = data.toy_rows("train", cfg.sft_problems, seed=cfg.seed + 1, careless_share=cfg.toy_careless_share,
                             **evaluation.toy_row_args(dataclasses.asdict(cfg)))
        return [data.tokenize_chat(tokenizer, chat, stop_ids) for chat in data.toy_chats(rows)]
    max_tokens = cfg.sft_max_tokens or M.load_config(cfg.model_path).max_position_embeddings
    try:
        chats, dropped = data.load_sft_data(cfg.sft_files.split(","), tokenizer, max_tokens)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"train.py: {error}") from None
    log(f"SFT data: {len(chats)} chats ({dropped} longer than {max_tokens} tokens dropped)")
    return chats


def chat_nll(net, chats, rows, device):
    """-sum log p of the trained tokens of chats `rows`, packed into one forward (position k-1
    predicts token k), and how many there are."""
    sequences = []
    for i in rows:
        seq, loss = chats[i]
        sequences.append((seq, [k for k in range(1, len(seq)) if loss[k]]))  # the trained tokens
    logp, _ = packed_logprobs(net, sequences, device)  # [M]
    return -logp.sum(), len(logp)


def sft(cfg, tokenizer, out_path, device, mesh):
    """Fine-tune --model_path (or, for the toy, a fresh tiny model) on chats: next-token
    cross-entropy on the assistant's tokens only (the rest is context), the token mean over each
    rank's share of a batch of sft_batch chats, AdamW with linear warmup then cosine decay.
    Chats are packed into micro-batches of micro_batch_tokens. A checkpoint every
    sft_save_every steps (<out_dir>/sft_checkpoints) makes a re-run resume exactly; each step
    appends a line to <out_dir>/sft_metrics.jsonl. The model is exported to `out_path`."""
    rank, world = dist.get_rank(), mesh.size()
    torch.manual_seed(cfg.seed)
    if cfg.model_path:  # the base model: Qwen2.5-Math-7B-Base for Eurus-2-7B-SFT
        net = load_for_training(cfg.model_path, cfg, device, mesh, trainable=True)  # fp32 master, FSDP2
    else:  # the toy: a fresh model of the toy tokenizer's vocabulary
        config = data.toy_model_config(tokenizer, hidden_size=cfg.toy_hidden, num_layers=cfg.toy_layers,
                                       intermediate_size=3 * cfg.toy_hidden,
                                       max_position_embeddings=cfg.max_prompt_tokens + cfg.max_response_tokens)
        net = M.Qwen2ForCausalLM(config)
        M.init_weights(net)
        net.to(device)
        M.fsdp_wrap(net, mesh, mixed_precision=cfg.bf16, activation_checkpointing=cfg.activation_checkpointing)
    chats = sft_chats(cfg, tokenizer)  # [(token ids, 0/1 loss mask)] per chat
    lengths = [len(ids) for ids, _ in chats]  # packed tokens per chat, for micro_batches
    optimizer = adamw(net, cfg.sft_lr, 0.0)  # the SFT recipe names no weight decay (docs/notes.md §6)
    per_rank = cfg.sft_batch // world  # chats per rank in each batch
    steps_per_epoch = len(chats) // cfg.sft_batch  # a last partial batch is left out, every epoch
    if steps_per_epoch == 0:
        raise SystemExit(f"train.py: {len(chats)} SFT chats do not fill one batch of sft_batch={cfg.sft_batch}")
    total = steps_per_epoch * cfg.sft_epochs  # optimizer steps of the whole run
    warmup = max(1, int(cfg.sft_warmup * total))  # of them, the warmup's

    def lr_factor(s):  # linear warmup, then cosine decay to 0; s counts optimizer steps from 0
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    # Checkpoints of their own, apart from PRIME's: a run that goes on from SFT to PRIME in the
    # same out_dir resumes each stage from its own.
    root = os.path.join(cfg.out_dir, "sft_checkpoints")
    metrics_path = os.path.join(cfg.out_dir, "sft_metrics.jsonl")
    done = resume_from(root, metrics_path, {"model": net}, {"model": optimizer})["step"]
    log(f"SFT: {len(chats)} chats, {cfg.sft_epochs} epochs of {steps_per_epoch} steps, batch {cfg.sft_batch}, "
        f"lr {cfg.sft_lr}" + (f"; resuming after step {done}" if done else ""))
    bar = tqdm(total=total, initial=done, desc="SFT", disable=rank != 0)
    for step in range(done + 1, total + 1):
        start = time.time()
        epoch, s = divmod(step - 1, steps_per_epoch)  # step counts from 1; s: the batch within its epoch
        # The same shuffle on every rank, seeded by the epoch: a resumed run sees the same batches.
        order = torch.randperm(len(chats), generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        # The step's batch is the epoch order's s-th slice of sft_batch chats; rank r takes the r-th
        # equal share of it, so the ranks together cover the batch once.
        mine = order[s * cfg.sft_batch:(s + 1) * cfg.sft_batch][rank * per_rank:(rank + 1) * per_rank]
        for group in optimizer.param_groups:
            group["lr"] = cfg.sft_lr * lr_factor(step - 1)
        n_tokens = sum(sum(chats[i][1]) for i in mine)  # this rank's trained tokens in the batch
        loss_sum = torch.zeros((), device=device)
        # Packed micro-batches of this rank's chats, as many on every rank (each forward and
        # backward is an FSDP2 collective); their gradients add up to the share's token mean.
        for rows in micro_batches(mine, lengths, cfg.micro_batch_tokens, device):
            nll, _ = chat_nll(net, chats, rows, device)
            (nll / n_tokens).backward()  # gradients accumulate to the token mean of the share
            loss_sum += nll.detach()
        grad_norm = clip_and_step(net, optimizer, 1.0)  # the recipe names no clip either: 1.0, the policy's
        # the logged loss is the mean of the ranks' token means (each rank's share is its own mean)
        loss, tokens = all_sum([float(loss_sum) / n_tokens, n_tokens], device)
        row = {"step": step, "epoch": epoch + 1, "loss": loss / world, "lr": optimizer.param_groups[0]["lr"],
               "grad_norm": grad_norm, "tokens": int(tokens), "tokens_per_second": tokens / (time.time() - start)}
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if step % cfg.sft_save_every == 0 or step == total:
            save_checkpoint(root, step, {"model": net}, {"model": optimizer}, {"step": step}, cfg.keep_checkpoints)
    bar.close()
    export(net, tokenizer, out_path, cfg)
    log(f"SFT model saved to {out_path}")


# ==============================================================================================
# 9. Problems, the held-out accuracy, the memory plan.
# ==============================================================================================

def load_problems(cfg, tokenizer):
    """(training problems, held-out problems): Eurus-style parquet files, or the toy task.
    A missing file or a malformed row stops the run with data.py's message (file, row, field)."""
    try:
        train, held_out = _load_problems(cfg, tokenizer)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"train.py: {error}") from None
    if not train:
        raise SystemExit("train.py: no training prompts left after the length filter")
    return train, held_out


def _load_problems(cfg, tokenizer):
    if cfg.train_files:
        train, dropped = data.load_rl_data(cfg.train_files.split(","), tokenizer, cfg.max_prompt_tokens)
        log(f"train data: {len(train)} prompts ({dropped} longer than {cfg.max_prompt_tokens} tokens dropped)")
        held_out = data.load_rl_data(cfg.eval_files.split(","), tokenizer, cfg.max_prompt_tokens)[0] \
            if cfg.eval_files else []
        return train, held_out
    # The toy: a training pool seeded by the run's seed, and eval.py's held-out problems (seeded
    # by 0: the same for every run; the split is a hash of the problem text, so they never meet).
    settings = dataclasses.asdict(cfg)
    train, _ = data.rows_to_problems(data.toy_rows("train", cfg.toy_train_problems, seed=cfg.seed,
                                                   **evaluation.toy_row_args(settings)),
                                     tokenizer, cfg.max_prompt_tokens, source="toy-train")
    return train, evaluation.toy_problems(tokenizer, config=settings)


def held_out_accuracy(policy, tokenizer, problems, cfg, device):
    """Greedy pass@1 on the held-out problems (eval.py's own computation), sampled in chunks that
    fit beside the training state (sampling_memory)."""
    if not problems:
        return None
    rows = math.ceil(len(problems) / dist.get_world_size())  # evaluate() splits them over ranks
    max_batch_tokens, max_prefill_tokens = sampling_memory(policy, cfg, device, rows)
    result = evaluation.evaluate(policy, tokenizer, problems, cfg.max_response_tokens, temperature=0.0,
                                 max_batch_tokens=max_batch_tokens, max_prefill_tokens=max_prefill_tokens)
    return result["accuracy"]


def memory_plan(cfg):
    """--memory_plan=true: memory.py's per-GPU plan of this config, printed, on any machine.
    Returns the exit status: 0 if every phase fits, 1 if not."""
    if not cfg.model_path:
        raise SystemExit("train.py: --memory_plan needs --model_path (a folder with the model's config.json)")
    try:
        config = M.load_config(cfg.model_path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"train.py: {error}") from None
    cuda = torch.cuda.is_available()
    world = cfg.world_size or (torch.cuda.device_count() if cuda else 8)
    gib = cfg.gpu_memory_gib or (torch.cuda.get_device_properties(0).total_memory / memory.GIB if cuda else 80)
    check_batch_arithmetic(cfg, world)
    result = memory.plan(cfg, config, world, gib)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "memory_plan.json"), "w") as f:
        json.dump(memory.to_json(result), f, indent=2)
    print("\n".join(memory.report(result, cfg, config)), flush=True)
    return 0 if result.fits() else 1


# ==============================================================================================
# 10. The run: the SFT model, resume, each step's metrics, the end; then the loop itself.
# ==============================================================================================

def sft_model_path(cfg, device, mesh):
    """The SFT checkpoint PRIME starts from: --model_path, or <out_dir>/sft. The SFT stage makes
    the latter first when --stage=sft asks for it (fine-tuning --model_path on --sft_files, or
    the toy), and for the toy when it has none yet."""
    path = os.path.join(cfg.out_dir, "sft")
    # PRIME from a given checkpoint, from real data (which needs one), or from the toy's own
    # SFT model once it exists; everything else runs the SFT stage below first.
    if cfg.stage != "sft":
        if cfg.model_path:
            return cfg.model_path
        if cfg.train_files:
            raise SystemExit("train.py: --model_path (the SFT checkpoint) is required with --train_files")
        if os.path.exists(os.path.join(path, "config.json")):
            return path
    if cfg.model_path:  # the base model's own tokenizer and chat template
        try:
            tokenizer = evaluation.load_tokenizer(cfg.model_path)
        except (OSError, ValueError) as error:
            raise SystemExit(f"train.py: {error}") from None
    else:  # the toy's character tokenizer
        if dist.get_rank() == 0:
            data.build_toy_tokenizer(os.path.join(cfg.out_dir, "tokenizer"))
        dist.barrier()
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(cfg.out_dir, "tokenizer"))
    sft(cfg, tokenizer, path, device, mesh)
    return path


def set_learning_rates(optimizers, cfg, step):
    """The constant learning rates, or 0 in the first iteration with --official_first_iteration."""
    scale = 0.0 if cfg.official_first_iteration and step == 1 else 1.0
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = scale * (cfg.policy_lr if name == "policy" else cfg.prm_lr)


def step_metrics(step, rollouts, counts, process, prm_loss, advantages, ppo, seconds, cfg, device):
    """One metrics.jsonl row. Sums over the ranks travel in one all-reduce, keyed by name;
    per-rank means (losses, PRM accuracy, the PPO diagnostics) are averaged over the ranks. The
    PRM's metrics are null for outcome-only RLOO. A non-finite loss stops the run."""
    mask = rollouts.mask(device)  # [B, T]
    valid, lengths = mask.bool(), mask.sum(-1)  # [B, T] response tokens, [B] their counts
    scored = process if process is not None else torch.zeros_like(mask)  # [B, T] process rewards
    # The PRM's pairwise accuracy (the paper's Fig. 6): within each prompt's group, the share of
    # (right, wrong) response pairs whose summed process rewards order them as the verifier does.
    # Single-forward scores each response before the PRM trains on it, so this is a held-out
    # score (double-forward's is not: it scores after the update).
    prm_accuracy = 0.0 if process is None else float(
        rewards.prm_pairwise_accuracy(process, rollouts.outcome, mask, cfg.samples_per_prompt))
    names = dict(counts, tokens=float(lengths.sum()), truncated=sum(rollouts.truncated), rows=len(rollouts.truncated),
                 reward_sum=float(scored[valid].sum()), reward_sq=float((scored[valid] ** 2).sum()),
                 reward_n=float(valid.sum()), prm_loss=prm_loss or 0.0, prm_accuracy=prm_accuracy,
                 advantage_abs_mean=float(advantages.abs()[valid].mean()),
                 **{key: ppo[key] for key in ("loss", "clip_frac", "approx_kl", "entropy")})
    # One collective for every sum; a mean over ranks is the sum divided by the world size,
    # a ratio of sums (accuracy, lengths) is taken after summing, as if on one rank.
    total = dict(zip(names, all_sum(list(names.values()), device)))
    world, mean = dist.get_world_size(), total["reward_sum"] / total["reward_n"]
    elapsed = seconds["policy"] - seconds["start"]
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
        "policy_grad_norm": ppo["grad_norm"],
        "response_length_mean": total["tokens"] / total["rows"],
        "response_length_max": all_max(int(lengths.max()), device),
        "truncation_rate": total["truncated"] / total["rows"],
        "seconds_collect": seconds["collect"] - seconds["start"],
        "seconds_prm": seconds["prm"] - seconds["collect"],
        "seconds_policy": seconds["policy"] - seconds["prm"],
        "tokens_per_second": total["tokens"] / elapsed,
    }
    if process is None:  # no PRM: null, not a misleading 0, in the curves plot.py draws
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
    seconds = row["seconds_collect"] + row["seconds_prm"] + row["seconds_policy"]
    print(f"step {row['step']}/{cfg.steps} | acc {row['outcome_accuracy']:.3f} kept {row['kept_share']:.2f} | "
          f"{prm}pg loss {row['policy_loss']:+.4f} clip {row['clip_frac']:.3f} kl {row['approx_kl']:+.4f} | "
          f"len {row['response_length_mean']:.1f} | {seconds:.1f}s"
          + (f" | eval {row['eval_accuracy']:.3f}" if "eval_accuracy" in row else ""), flush=True)


def finish(cfg, policy, prm, tokenizer, held_out, trainer, model_path, start_time, device):
    """After the last step: the held-out accuracy, the policy (and PRM) as Hugging Face folders,
    summary.json."""
    eval_end = held_out_accuracy(policy, tokenizer, held_out, cfg, device)
    # Exports are for eval.py and transformers; the last checkpoint stays for a longer re-run.
    export(policy, tokenizer, os.path.join(cfg.out_dir, "policy"), cfg)
    prm_out = os.path.join(cfg.out_dir, "prm") if cfg.process_rewards else None
    if prm_out:  # the PRM as trained here: --prm_path of a later offline-PRM (prm_update=frozen) run
        export(prm, tokenizer, prm_out, cfg)
    if dist.get_rank() == 0:
        summary = {"eval_accuracy_start": trainer["eval_accuracy_start"], "eval_accuracy_end": eval_end,
                   "steps": max(trainer["step"], cfg.steps), "eval_problems": len(held_out),
                   "model_path": model_path, "policy_path": os.path.join(cfg.out_dir, "policy"),
                   "prm_path": prm_out, "world_size": dist.get_world_size(),
                   "train_seconds": time.time() - start_time}
        with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"held-out greedy accuracy: {summary['eval_accuracy_start']} -> {eval_end} after "
              f"{summary['steps']} steps", flush=True)


def main(argv):
    cfg = parse_config(argv)
    if cfg.memory_plan:
        raise SystemExit(memory_plan(cfg))
    rank, world, device, mesh = M.init_distributed(timedelta(minutes=cfg.dist_timeout_minutes))
    os.makedirs(cfg.out_dir, exist_ok=True)
    check_batch_arithmetic(cfg, world)
    # The resolved config, beside the run's outputs: eval.py reads it to rebuild the toy's
    # held-out problems, and a reader can see what produced the metrics.
    if rank == 0:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
    model_path = sft_model_path(cfg, device, mesh)  # given, or the toy's, trained here first
    if cfg.stage == "sft":
        dist.destroy_process_group()
        return
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_problems, held_out = load_problems(cfg, tokenizer)

    # Alg. 1 line 1: the policy pi_theta, the implicit PRM pi_phi and the reference pi_ref, all
    # from the SFT model (the reference frozen); AdamW for the two that learn.
    policy, prm, ref, models, optimizers = build_models(cfg, model_path, device, mesh)
    stream = PromptStream(len(train_problems), cfg.seed, rank, world)  # this rank's prompts
    # The trainer's counters: the step reached, the accuracy before training (measured once, so a
    # resumed run reports the true start) and the training seconds so far. A resumed run takes
    # them, the weights, the optimizer moments and every rank's prompt stream from its newest
    # complete checkpoint; a fresh run starts at step 0.
    trainer = {"eval_accuracy_start": None, "seconds": 0.0,
               **resume_from(os.path.join(cfg.out_dir, "checkpoints"), os.path.join(cfg.out_dir, "metrics.jsonl"),
                             models, optimizers, stream)}
    if trainer["eval_accuracy_start"] is None:
        trainer["eval_accuracy_start"] = held_out_accuracy(policy, tokenizer, held_out, cfg, device)
        log(f"held-out greedy accuracy before PRIME: {trainer['eval_accuracy_start']}")

    start_time = time.time() - trainer["seconds"]  # so the seconds of an interrupted run carry on
    for step in range(trainer["step"] + 1, cfg.steps + 1):  # Alg. 1 line 2: for each iteration
        seconds = {"start": time.time()}
        set_learning_rates(optimizers, cfg, step)

        # Alg. 1 lines 3-6: draw prompts, sample K responses to each (rollout.py), score every
        # response with the outcome verifier r_o (verify.py), keep the prompts whose mean score
        # lies in [0.2, 0.8]; repeat until this rank holds its share of the step's prompts.
        rollouts, counts = collect(policy, train_problems, stream, tokenizer, cfg, step, device)
        mask = rollouts.mask(device)  # [B, T]: 1 on each response's tokens
        # Validate the batch's values once, here where it is built (groups of K, no empty response,
        # outcomes in [0, 1]); the reward functions below check only shapes and settings.
        rewards.check_batch(mask, rollouts.outcome, cfg.samples_per_prompt)
        seconds["collect"] = time.time()

        # log pi_theta_old(y_t): the policy that sampled; the PPO ratio's denominator (Eq. 6)
        old_logp, _ = all_logprobs(policy, rollouts, cfg, device, cfg.temperature)  # [B, T]

        # Alg. 1 lines 7-8: implicit process rewards r_t = beta log pi_phi(y_t)/pi_ref(y_t), and the
        # PRM's cross-entropy update on the outcomes (each PRM mini-batch is scored by the very
        # forward that then trains it: the official "single-forward" order).
        process, prm_loss = (prm_step(prm, ref, optimizers.get("prm"), rollouts, cfg, device, cfg.prm_update)
                             if cfg.process_rewards else (None, None))  # [B, T], float
        seconds["prm"] = time.time()

        # Alg. 1 line 9: leave-one-out (RLOO) returns of process and outcome rewards, summed
        # and whitened into advantages (Eq. 5, as the official code computes it).
        advantages = compute_advantages(process, rollouts.outcome, mask, cfg)  # [B, T]

        # Alg. 1 line 10: PPO clip updates of the policy over shuffled mini-batches (Eq. 6).
        ppo = policy_step(policy, optimizers["policy"], rollouts, old_logp, advantages, cfg, step, device)
        seconds["policy"] = time.time()

        # Bookkeeping: one metrics.jsonl line per step, a held-out eval now and then, and a checkpoint
        # every save_every steps (the last step's too), from which a re-run resumes exactly.
        row = step_metrics(step, rollouts, counts, process, prm_loss, advantages, ppo, seconds, cfg, device)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            row["eval_accuracy"] = held_out_accuracy(policy, tokenizer, held_out, cfg, device)
        log_step(row, cfg)
        trainer["seconds"] = time.time() - start_time
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(os.path.join(cfg.out_dir, "checkpoints"), step, models, optimizers,
                            {**trainer, "step": step}, cfg.keep_checkpoints, stream)

    finish(cfg, policy, prm, tokenizer, held_out, trainer, model_path, start_time, device)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
