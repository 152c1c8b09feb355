"""support/memory.py: the memory plan against the memory the real code uses, the recipe's plan, and the
GPU acceptance script (support/gpu_check.py) run on the CPU, on a "bare image".

The plan simulates each phase of a step on fake tensors (memory.py). gpu_check.py's memory check
runs train.py's own functions on real tensors at the same sizes and measures their peaks; with
--smoke it does so on the CPU (MemTracker) at a small scale, where the two must agree within 15%.
Then the recipe: the README's 8-GPU command fits H100 80GB GPUs with a margin, and 2 GPUs are
refused with the reason. Also the torch-version check gpu_check.py and train.py start with.
"""

import json
import subprocess
import sys

import pytest
import torch

import model as M
import train
from support import gpu_check, memory
from support.distributed import require_torch
from test_train import run_train
from tiny import tiny_config

# What a bare CUDA image lacks: importing any of these fails in the subprocesses below.
BARE_IMAGE_MISSING = ("datasets", "math_verify", "pyarrow", "pandas")

TIMEOUT = 900  # seconds per subprocess


def bare_image(tmp_path, monkeypatch):
    """Make BARE_IMAGE_MISSING unimportable for every subprocess started from here on (torchrun's
    workers inherit PYTHONPATH), as on an image with only torch, transformers and tqdm."""
    stubs = tmp_path / "bare_image"
    stubs.mkdir()
    for name in BARE_IMAGE_MISSING:
        (stubs / f"{name}.py").write_text(f"raise ImportError('bare image: no {name}')\n")
    monkeypatch.setenv("PYTHONPATH", str(stubs))
    for name in BARE_IMAGE_MISSING:  # the stubs do shadow the installed packages
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        assert probe.returncode != 0 and "bare image" in probe.stderr, name


def test_gpu_check_smoke_on_a_bare_image_plan_matches_the_measured_peaks(tmp_path, monkeypatch):
    """gpu_check.py --smoke: every check of the GPU acceptance script on the CPU at tiny sizes
    (two gloo ranks), with datasets, math_verify, pyarrow and pandas unimportable. Its memory
    check compares the plan (fake tensors, memory.py's simulation of each phase) with MemTracker's
    peaks while train.py's own functions (rollout.generate, all_logprobs, prm_step, policy_step)
    run the phases on real tensors at the worst-case lengths, the sampler chunked by the plan's
    sizing: within 15% either way. Its prime check runs train.py in bf16 with activation
    checkpointing on one and two ranks: exact-zero process rewards at step 1, finite losses,
    resume, a bf16 export. The JSON report holds the same verdicts as the console."""
    bare_image(tmp_path, monkeypatch)
    report = tmp_path / "report.json"
    smoke = run_train(["--smoke", f"--report={report}"], tmp_path, timeout=TIMEOUT, script="support/gpu_check.py")
    out = smoke.stdout
    assert smoke.returncode == 0, out + smoke.stderr
    last = out.strip().splitlines()[-1]
    assert last == f"support/gpu_check.py: 4 passed, 0 failed, 2 skipped (report: {report})", out
    written = json.loads(report.read_text())
    assert written["counts"] == {"PASS": 4, "FAIL": 0, "SKIP": 2}
    verdicts = [line for line in out.splitlines() if line.split("] ", 1)[-1].split(":")[0] in ("PASS", "FAIL", "SKIP")]
    assert [f"[{v['check']}] {v['verdict']}: {v['text']}" for v in written["verdicts"]] == verdicts
    assert [f"[{line['check']}] {line['text']}" for line in written["lines"]] == \
        [line for line in out.splitlines() if line.startswith("[")]
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


def test_recipe_fits_eight_h100s_and_two_are_refused(tmp_path):
    """The README's command (preset eurus2-7b-prime, Qwen2.5-Math-7B's shapes) planned from this
    CPU: 8 GPUs of an H100 80GB's 79.1 GiB, the flash path this machine has; every phase, load and
    held-out eval included, at or under the limit (0.9 x 79.1 GiB), and under the capacity with
    FSDP2's stream caches held too; the load phase with its host memory. On 2 GPUs the model
    states alone overflow."""
    ckpt = tmp_path / "qwen7b"
    gpu_check.qwen2_config(gpu_check.QWEN25_MATH_7B).save_pretrained(ckpt)
    base = ["--preset=eurus2-7b-prime", f"--model_path={ckpt}", "--memory_plan=true"]
    fits = run_train([*base, "--world_size=8", f"--out_dir={tmp_path / 'w8'}"], tmp_path, timeout=TIMEOUT)
    assert fits.returncode == 0, fits.stdout + fits.stderr
    last = fits.stdout.strip().splitlines()[-1]
    assert last.startswith("memory plan: peak ") and " GiB of 79.1 GiB per GPU (phase " in last, last
    assert last.endswith(": fits"), last
    peak = float(last.split("peak ")[1].split(" GiB")[0])
    assert peak <= 0.9 * 79.1, last
    with open(tmp_path / "w8" / "memory_plan.json") as f:
        plan = json.load(f)
    assert plan["attention"] == (M.installed_flash_path(128) or "sdpa")
    names = [p["name"] for p in plan["phases"]]
    for phase in ("load", "sampling: prefill", "sampling: decode", "sampling: batch shrink", "old log-probs",
                  "reference log-probs", "PRM update", "policy update", "held-out eval: prefill",
                  "checkpoint save", "export"):
        assert phase in names, names
    worst_held = max(p["peak_bytes"] + p["cached_bytes"] for p in plan["phases"]) + plan["non_torch_bytes"]
    assert worst_held <= plan["gpu_bytes"], plan
    load = next(p for p in plan["phases"] if p["name"] == "load")
    config = gpu_check.qwen2_config(gpu_check.QWEN25_MATH_7B)
    shards = memory.n_params(config) * (4 + 4 + 2) // 8  # policy and PRM in fp32, the reference in bf16 (the recipe's)
    assert shards <= load["peak_bytes"] <= shards + 2 ** 30, load  # plus one weight's rows in flight
    assert any(key.startswith("load: host memory per rank") for key in plan["sizes"]), plan["sizes"]

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


def test_units_and_stream_caches_add_up_to_the_network():
    """unit_bytes: the root (embedding, head, norm) and one layer, whose sum over the layers is the
    network; a model's stream caches: root + layer in its compute dtype, plus the root's fp32
    gradient shard for a trained model."""
    for tie in (False, True):
        config = tiny_config(tie=tie, layers=3)
        root, layer = memory.unit_bytes(config, torch.bfloat16)
        net = M.Qwen2ForCausalLM(config)
        assert root + 3 * layer == 2 * sum(p.numel() for p in net.parameters())
        assert layer == 2 * sum(p.numel() for p in net.model.layers[0].parameters())
        assert memory.stream_cache_bytes(config, torch.bfloat16, 4, trained=False) == root + layer
        assert memory.stream_cache_bytes(config, torch.bfloat16, 4, trained=True) == root + layer + 2 * root // 4


def test_planned_backend_and_gpu(monkeypatch):
    """--plan_attention: a named backend is planned as named, a wrong name stops with the choices;
    auto, planned from a CPU, is this machine's flash path (else SDPA). Without GPUs the plan is for
    8 H100 80GB at 79.1 GiB each."""
    config = tiny_config(hidden_size=64, heads=4)  # head dim 16
    assert memory.planned_backend("sdpa", config, torch.bfloat16) == "sdpa"
    with pytest.raises(SystemExit, match="--plan_attention must be one of auto, flash, varlen, sdpa, got 'fast'"):
        train.settings(["--plan_attention=fast"])
    monkeypatch.setattr(M, "flash_attn_varlen_func", None)
    monkeypatch.setattr(M, "varlen_attn", None)
    assert memory.planned_backend("auto", config, torch.bfloat16) == "sdpa"
    monkeypatch.setattr(M, "varlen_attn", lambda *args, **kwargs: None)
    assert memory.planned_backend("auto", config, torch.bfloat16) == "varlen"
    plan_cfg = memory.PlanConfig()
    assert memory.machine(plan_cfg) == (8, memory.GPU(79.1, "auto"))


@pytest.mark.parametrize("version, stops", [("2.7.1+cu126", True), ("2.6.0", True), ("1.13.1", True),
                                            ("2.8.0", False), ("2.8.0a0+git1234", False), ("2.13.0+cpu", False),
                                            ("10.0.0", False)])
def test_require_torch_stops_older_torch_with_the_reason(version, stops):
    if stops:
        with pytest.raises(SystemExit, match=r"needs torch >= 2\.8 .*set_reshard_after_forward"):
            require_torch(version)
    else:
        require_torch(version)
