"""support/memory.py: the memory plan against the memory the real code uses, the recipe's plan, and the
GPU acceptance script (support/gpu_check.py) run on the CPU.

The plan simulates each phase of a step on fake tensors (memory.py). gpu_check.py's memory check
runs train.py's own functions on real tensors at the same sizes and measures their peaks; with
--smoke it does so on the CPU (MemTracker) at a small scale, where the two must agree within 15%.
Then the recipe: the README's 8-GPU command fits 80 GiB GPUs with a margin, and 2 GPUs are
refused with the reason.
"""

import json

import torch

import model as M
from support import gpu_check, memory
from test_train import run_train
from tiny import tiny_config

TIMEOUT = 900  # seconds per subprocess


def test_gpu_check_smoke_plan_matches_the_measured_peaks_of_the_real_phases(tmp_path):
    """gpu_check.py --smoke: every check of the GPU acceptance script on the CPU at tiny sizes
    (two gloo ranks). Its memory check compares the plan (fake tensors, memory.py's simulation of
    each phase) with MemTracker's peaks while train.py's own functions (rollout.generate,
    all_logprobs, prm_step, policy_step) run the phases on real tensors at the worst-case lengths,
    the sampler chunked by the plan's sizing: within 15% either way. Its prime check runs train.py
    in bf16 with activation checkpointing on one and two ranks: exact-zero process rewards at
    step 1, finite losses, resume, a bf16 export."""
    smoke = run_train(["--smoke"], tmp_path, timeout=TIMEOUT, script="support/gpu_check.py")
    out = smoke.stdout
    assert smoke.returncode == 0, out + smoke.stderr
    assert out.strip().splitlines()[-1] == "support/gpu_check.py: 4 passed, 0 failed, 2 skipped", out
    ratios = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if line.startswith("[memory] |") and cells[1] not in ("phase",):
            ratios[cells[1]] = float(cells[4])
    assert set(ratios) == {"sampling", "old log-probs", "PRM update", "policy update"}, out
    assert all(abs(ratio - 1) <= 0.15 for ratio in ratios.values()), out
    chunk = next(line for line in out.splitlines() if "rows per chunk" in line)
    planned = int(chunk.split("planned ")[1].split(",")[0])
    assert 1 < planned < 16 and chunk.endswith(f"run [{planned}, {planned}]"), chunk
    assert out.count("[prime] PASS") == 2, out

    nothing = run_train([], tmp_path, timeout=TIMEOUT, script="support/gpu_check.py")
    assert nothing.returncode == 0 and "no CUDA device here: nothing to check" in nothing.stdout


def test_recipe_fits_eight_80_gib_gpus_and_two_are_refused(tmp_path):
    """The README's command (preset eurus2-7b-prime, Qwen2.5-Math-7B's shapes) on 8 x 80 GiB: every
    phase, held-out eval included, at or under 72 GiB. On 2 GPUs the model states alone overflow."""
    ckpt = tmp_path / "qwen7b"
    gpu_check.qwen2_config(gpu_check.QWEN25_MATH_7B).save_pretrained(ckpt)
    base = ["--preset=eurus2-7b-prime", f"--model_path={ckpt}", "--memory_plan=true", "--gpu_memory_gib=80"]
    fits = run_train([*base, "--world_size=8", f"--out_dir={tmp_path / 'w8'}"], tmp_path, timeout=TIMEOUT)
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

    refused = run_train([*base, "--world_size=2", f"--out_dir={tmp_path / 'w2'}"], tmp_path, timeout=TIMEOUT)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    last = refused.stdout.strip().splitlines()[-1]
    assert "does not fit" in last and "model states" in last and "use more GPUs" in last, last


def test_sizes_from_shapes():
    """The arithmetic memory.py sizes sampling with, against the network it describes."""
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


def test_sampling_limits_give_the_cache_what_the_gpu_has_left(monkeypatch):
    """On a GPU: the free bytes under the utilization, less the weights (gathered when sharded,
    only the fused q/k/v copies when loaded already) and the reserve, in KV-cache slots; on the
    CPU no bound."""
    config = tiny_config()
    monkeypatch.setattr(memory, "available_bytes", lambda device, utilization: int(utilization * 10 ** 8))
    cuda, dtype = torch.device("cuda"), torch.bfloat16
    per_slot, reserve = memory.kv_bytes_per_slot(config, dtype), memory.sampling_reserve(config, dtype, 512, 8)
    sharded = memory.sampling_limits(config, cuda, 8, 0.5, 512, dtype, sharded=True)
    loaded = memory.sampling_limits(config, cuda, 8, 0.5, 512, dtype, sharded=False)
    assert sharded == ((5 * 10 ** 7 - memory.gathered_bytes(config, dtype) - reserve) // per_slot, 512)
    assert loaded == ((5 * 10 ** 7 - memory.fused_qkv_bytes(config, dtype) - reserve) // per_slot, 512)
    assert memory.sampling_limits(config, cuda, 8, 10 ** -6, 512, dtype, sharded=True) == (1, 512)  # not one row
    assert memory.sampling_limits(config, torch.device("cpu"), 8, 0.5, 512, dtype, sharded=True) == (None, None)
