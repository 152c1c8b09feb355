"""memory.py: the memory plan against the memory the real code uses, and the recipe's plan.

The plan simulates each phase of a step on fake tensors (memory.py). Here, at a small scale on
the CPU, train.py's own functions (rollout.generate, all_logprobs, prm_step, policy_step) run the
same phases on real tensors on two gloo ranks, with the worst-case lengths the plan assumes, and
torch's MemTracker measures their peaks: each must be within 15% of the plan's. Then the recipe:
the README's 8-GPU command fits 80 GiB GPUs with a margin, and 2 GPUs are refused with the reason.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import memory
import model as M
import train
from tiny import random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30

# A small bf16 recipe: 8 prompts x 4 samples on 2 ranks (16 rows each), prompts of 32 tokens,
# responses of 96, micro-batches of 512 tokens, activation checkpointing. The GPU is sized so that
# only 12 MiB are left beyond the 2 GiB assumed outside PyTorch: the sampler must chunk its rows.
SMALL = dict(bf16=True, activation_checkpointing=True, max_prompt_tokens=32, max_response_tokens=96,
             prompts_per_step=8, samples_per_prompt=4, prm_mini_batch=16, policy_mini_batch=16,
             micro_batch_tokens=512, gpu_memory_utilization=1.0, gpu_memory_gib=2 + 12 / 1024)
SHAPE = dict(vocab_size=1024, hidden_size=128, layers=2, heads=4, kv_heads=2)


def run(args, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def small_plan(ckpt, out):
    args = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL.items()]
    result = run([*args, f"--model_path={ckpt}", "--memory_plan=true", "--world_size=2", f"--out_dir={out}"])
    assert result.returncode in (0, 1), result.stdout + result.stderr
    with open(os.path.join(out, "memory_plan.json")) as f:
        return json.load(f), result.stdout


def _measure(rank, init_file, ckpt, out):
    """Rank `rank` of 2: the models as train.py builds them, one warm-up step (AdamW's moments
    exist from step 2 on, as the plan assumes), then each phase under the plan's meter."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    torch.manual_seed(rank)
    cfg = train.Config(**SMALL)
    device = torch.device("cpu")
    policy, prm, ref, models, opts = train.build_models(cfg, ckpt, device, init_device_mesh("cpu", (2,)))
    V = policy.config.vocab_size
    rows = cfg.prompts_per_step * cfg.samples_per_prompt // 2
    rollouts = train.Rollouts(prompts=[[5] * cfg.max_prompt_tokens] * rows,
                              responses=[[6] * cfg.max_response_tokens] * rows,
                              outcome=torch.tensor([1.0, 0.0] * (rows // 2)), truncated=[True] * rows)
    meter = memory._Meter(policy, prm, ref, *opts.values())
    peaks = {}
    with meter.measure({}):  # the warm-up step
        train.prm_step(prm, ref, opts["prm"], rollouts, cfg, device)
        old, _ = train.all_logprobs(policy, rollouts, cfg, device)
        train.policy_step(policy, opts["policy"], rollouts, old, torch.zeros(rows, cfg.max_response_tokens),
                          cfg, 0, device)
    # Sampling: every prompt max_prompt_tokens long, no response ends early (the only stop id
    # lies past vocab_size, so it is never drawn), chunked as the plan sizes it.
    compute = torch.bfloat16
    available = int(cfg.gpu_memory_gib * GIB * cfg.gpu_memory_utilization) - memory.NON_TORCH_BYTES \
        - meter.now() - memory.gathered_bytes(policy.config, compute)
    slots = memory.cache_slots(available, policy.config, compute, cfg.micro_batch_tokens, rows)
    out_peak = {}
    with meter.measure(out_peak):
        responses = train.rollout.generate(policy, rollouts.prompts, cfg.max_response_tokens, [V - 1],
                                           vocab_size=V - 1, seed=rank, max_batch_tokens=int(slots),
                                           max_prefill_tokens=cfg.micro_batch_tokens)
    assert all(len(r) == cfg.max_response_tokens for r in responses)
    peaks["sampling"] = out_peak["peak"]
    for name, phase in (
            ("old log-probs", lambda: train.all_logprobs(policy, rollouts, cfg, device)),
            ("PRM update", lambda: train.prm_step(prm, ref, opts["prm"], rollouts, cfg, device)),
            ("policy update", lambda: train.policy_step(policy, opts["policy"], rollouts, old,
                                                        torch.randn(rows, cfg.max_response_tokens), cfg, 1, device))):
        out_peak = {}
        with meter.measure(out_peak):
            phase()
        peaks[name] = out_peak["peak"]
    peaks["chunk rows"] = int(slots) // (cfg.max_prompt_tokens + cfg.max_response_tokens)
    torch.save(peaks, f"{out}/peaks{rank}.pt")
    dist.destroy_process_group()


def test_plan_matches_the_measured_peaks_of_the_real_phases(tmp_path):
    ckpt = tmp_path / "ckpt"
    random_checkpoint(ckpt, max_position_embeddings=256, intermediate_size=256, **SHAPE)
    plan, stdout = small_plan(ckpt, tmp_path / "plan")
    mp.spawn(_measure, args=(str(tmp_path / "init"), str(ckpt), str(tmp_path)), nprocs=2, join=True)
    measured = torch.load(tmp_path / "peaks0.pt")

    by_name = {p["name"]: p["peak_bytes"] for p in plan["phases"]}
    planned = {
        "sampling": max(by_name[f"sampling: {n}"] for n in ("prefill", "decode", "batch shrink")),
        "old log-probs": by_name["old log-probs"],
        "PRM update": max(by_name["reference log-probs"], by_name["PRM update"]),  # prm_step runs both
        "policy update": by_name["policy update"],
    }
    rows_key = next(k for k in plan["sizes"] if k.startswith("sampling: rows per chunk"))
    assert 1 < plan["sizes"][rows_key] < 16, "the sampler must chunk at this size: " + stdout
    assert measured["chunk rows"] == plan["sizes"][rows_key]
    table = "\n".join(f"{k}: planned {planned[k] / 2**20:.2f} MiB, measured {measured[k] / 2**20:.2f} MiB "
                      f"({measured[k] / planned[k]:.3f})" for k in planned)
    print(table)
    for key in planned:
        assert abs(measured[key] / planned[key] - 1) <= 0.15, table + "\n" + stdout


def test_recipe_fits_eight_80_gib_gpus_and_two_are_refused(tmp_path):
    """The README's command (preset eurus2-7b-prime, Qwen2.5-Math-7B's shapes) on 8 x 80 GiB: every
    phase, held-out eval included, at or under 72 GiB. On 2 GPUs the model states alone overflow."""
    ckpt = tmp_path / "qwen7b"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(QWEN25_MATH_7B))
    base = ["--preset=eurus2-7b-prime", f"--model_path={ckpt}", "--memory_plan=true", "--gpu_memory_gib=80"]
    fits = run([*base, "--world_size=8", f"--out_dir={tmp_path / 'w8'}"])
    assert fits.returncode == 0, fits.stdout + fits.stderr
    last = fits.stdout.strip().splitlines()[-1]
    assert last.startswith("memory plan: peak ") and last.endswith(": fits"), last
    peak = float(last.split("peak ")[1].split(" GiB")[0])
    assert peak <= 72.0, last
    with open(tmp_path / "w8" / "memory_plan.json") as f:
        names = [p["name"] for p in json.load(f)["phases"]]
    for phase in ("sampling: prefill", "sampling: decode", "sampling: batch shrink", "old log-probs",
                  "reference log-probs", "PRM update", "policy update", "held-out eval: prefill",
                  "checkpoint save", "export"):
        assert phase in names, names

    refused = run([*base, "--world_size=2", f"--out_dir={tmp_path / 'w2'}"])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    last = refused.stdout.strip().splitlines()[-1]
    assert "does not fit" in last and "model states" in last and "use more GPUs" in last, last


def test_sizes_from_shapes():
    """The arithmetic memory.py sizes sampling with, against the network it describes."""
    from tiny import tiny_config
    for tie in (False, True):
        config = tiny_config(tie=tie)
        net = M.Qwen2ForCausalLM(config)
        assert memory.n_params(config) == sum(p.numel() for p in net.parameters())
    config = tiny_config(layers=3, kv_heads=2, hidden_size=64, heads=4)  # head dim 16
    assert memory.kv_bytes_per_slot(config, torch.bfloat16) == 2 * 3 * 2 * 16 * 2
    cache = M.KVCache(rows=5, max_len=7)
    net = M.Qwen2ForCausalLM(config)
    with torch.no_grad():
        net(torch.zeros(7, dtype=torch.long), torch.tensor([0, 7], dtype=torch.int32), cache=M.KVCache(1, 7))
        cache_net = net(torch.zeros(35, dtype=torch.long), torch.arange(0, 36, 7, dtype=torch.int32), cache=cache)
    assert cache_net.shape[0] == 5
    assert cache.nbytes() == 5 * 7 * memory.kv_bytes_per_slot(config, torch.float32)
    assert memory.fused_qkv_bytes(config, torch.float32) == sum(
        w.numel() * 4 + b.numel() * 4 for w, b in cache.qkv)
    assert memory.cache_slots(10 ** 9, config, torch.float32, 16, 4) == \
        (10 ** 9 - memory.sampling_reserve(config, torch.float32, 16, 4)) // memory.kv_bytes_per_slot(
            config, torch.float32)


QWEN25_MATH_7B = {  # Qwen/Qwen2.5-Math-7B's config.json (Eurus-2-7B-SFT's base), the fields that matter
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 3584,
    "intermediate_size": 18944, "max_position_embeddings": 4096, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "sliding_window": 4096, "use_sliding_window": False, "tie_word_embeddings": False, "vocab_size": 152064,
    "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}
