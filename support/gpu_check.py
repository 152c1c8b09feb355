"""support/gpu_check.py: the GPU acceptance check. One command, about ten minutes, nothing downloaded.

    python support/gpu_check.py          # on a machine with one or more CUDA GPUs
    python support/gpu_check.py --smoke  # the same code on the CPU at tiny sizes (the test suite runs it)

It needs only torch (2.8 or newer), transformers and tqdm: a bare CUDA image runs it as it comes
(nothing it imports needs datasets or math-verify). flash-attn (requirements-gpu.txt) is used
when installed; torch's own varlen_attn (torch 2.12 or newer) otherwise.

Weights are random, at the shapes that matter (Qwen2.5-0.5B's and Qwen2.5-Math-7B's). Each check
prints lines tagged with its name and a verdict (PASS, FAIL or SKIP with the reason); the last
line counts them and the exit status is 1 if any check failed. The same lines and verdicts go
to a JSON report (--report, default gpu_check.json in the current folder).

  env      torch, CUDA, the GPUs, the flash paths installed and the attention backend the model
           will run; the memory a process holds outside PyTorch's allocator (CUDA context, cuBLAS
           workspace), which memory.py assumes to be at most memory.NON_TORCH_BYTES
  flash    each flash path installed (flash-attn's, torch's varlen_attn) against PyTorch's SDPA
           at Qwen2.5-7B's attention geometry (28 query and 4 KV heads of 128) in bf16: a packed
           forward and backward with activation checkpointing, and prefill + cached decode +
           batch shrink; each backend's error against the same network in fp32 (a flash path
           must be about as accurate as SDPA)
  sampler  rollout.generate against transformers' generate, greedy, bf16, Qwen2.5-0.5B's shapes,
           64 and 128 prompts: how many rows agree token for token, and each sampler's tokens/s
  prime    train.py itself: two bf16 PRIME steps with activation checkpointing on a 0.5B-shaped
           model (the toy task and tokenizer), on one GPU and then FSDP2 over all of them: losses
           finite, every process reward exactly 0 at step 1 (one PRM mini-batch: the PRM is the
           reference), and a resumed third step
  memory   memory.py's plan (for the attention backend that runs) beside the measured peak
           (torch.cuda.max_memory_allocated, the largest over the ranks) of each phase of a step,
           run by train.py's own functions with the recipe's lengths: Qwen2.5-Math-7B when there
           are 8 or more GPUs of 79 GiB or more (the README's command), else Qwen2.5-0.5B's shapes
           on the GPUs there are. A phase passes when its measured peak is within 10% of the plan
           or under it; its peak reserved memory (caches included, each phase started with the
           caches emptied) must stay within the plan's peak and FSDP2 stream caches, +10%.
"""

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import Qwen2Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py's folder
if not __package__:  # run as `python support/gpu_check.py`: it starts in support/, the modules are one up
    sys.path[0] = ROOT

from support.distributed import require_torch  # noqa: E402  (after the path)

require_torch()  # before anything that needs the newer torch

import model as M  # noqa: E402
import rollout  # noqa: E402
import train  # noqa: E402
from support import memory  # noqa: E402
from support.batches import Rollouts, all_logprobs  # noqa: E402
from support.distributed import adamw, sharded_skeleton  # noqa: E402
from toy import task as toy  # noqa: E402

# Public configs of the two models whose shapes are checked (their config.json, the fields that
# matter here). Qwen2.5-Math-7B is Eurus-2-7B-SFT's base; Qwen2.5-0.5B fits any GPU.
QWEN25_MATH_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                      max_position_embeddings=4096, rope_theta=10000.0)
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=32768, rope_theta=1000000.0)
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False, max_position_embeddings=512,
            rope_theta=10000.0)
# --smoke plans for "GPUs" of 2 GiB + 12 MiB: 12 MiB beside the 2 GiB memory.py assumes outside
# PyTorch, so that the tiny model's sampling must chunk its 16 rows.
SMOKE_GPU_GIB = 2 + 12 / 1024


def qwen2_config(shape):
    return Qwen2Config(**shape, rms_norm_eps=1e-6, use_sliding_window=False, hidden_act="silu")


class Report:
    """Collects every line and verdict; prints each as it comes; `write` saves them as JSON."""

    def __init__(self):
        self.verdicts = []  # (check, PASS / FAIL / SKIP, text)
        self.lines = []  # (check, text), verdicts included, in order

    def line(self, check, text):
        self.lines.append((check, text))
        print(f"[{check}] {text}", flush=True)

    def verdict(self, check, ok, text):
        self._record(check, "PASS" if ok else "FAIL", text)

    def skip(self, check, why):
        self._record(check, "SKIP", why)

    def _record(self, check, word, text):
        self.verdicts.append((check, word, text))
        self.line(check, f"{word}: {text}")

    def counts(self):
        return {word: sum(v[1] == word for v in self.verdicts) for word in ("PASS", "FAIL", "SKIP")}

    def write(self, path, device):
        """The report as JSON: where it ran, the counts, every verdict and every line."""
        with open(path, "w") as f:
            json.dump({"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                       "counts": self.counts(),
                       "verdicts": [dict(check=c, verdict=w, text=t) for c, w, t in self.verdicts],
                       "lines": [dict(check=c, text=t) for c, t in self.lines]}, f, indent=2)


def random_model(config, device, dtype, seed=0, head_scale=1.0):
    """Our network with random weights: normal(0, 0.02) matrices, biases and norms jittered
    (so a misplaced one would show), the LM head scaled by head_scale (a larger scale makes the
    next-token distributions peaked, so that greedy decoding is not decided by rounding)."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        net = M.Qwen2ForCausalLM(config)
    net.to_empty(device=device)
    if config.tie_word_embeddings:  # to_empty gave the head a Parameter of its own: tie it again
        net.lm_head.weight = net.model.embed_tokens.weight
    M.init_weights(net, std=0.02)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
        net.lm_head.weight.mul_(head_scale)  # (tied: the embedding is scaled too, harmless here)
    return net.to(dtype)


def relative_error(x, reference):
    return float((x.detach().float() - reference.detach().float()).abs().max() / reference.detach().abs().max())


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ==============================================================================================
# env
# ==============================================================================================

def check_env(report, device):
    report.line("env", f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {sys.version.split()[0]}")
    flash = sys.modules.get("flash_attn")
    report.line("env", f"flash-attn {getattr(flash, '__version__', 'not installed')}; torch's varlen_attn "
                       f"{'available' if M.varlen_attn is not None else 'not in this torch (2.12 or newer has it)'}")
    if device.type != "cuda":
        report.skip("env", "no CUDA device")
        return
    report.line("env", f"attention backend at Qwen2.5's shapes (bf16, head dim 128): "
                       f"{M.attention_backend(device, torch.bfloat16, 128)}")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        report.line("env", f"GPU {i}: {props.name}, compute capability {props.major}.{props.minor}, "
                           f"{props.total_memory / memory.GIB:.1f} GiB")
    x = torch.randn(1024, 1024, device=device)
    (x @ x).sum().item()  # a CUDA context and a cuBLAS handle exist now
    outside = memory.outside_bytes(device)
    report.line("env", f"{outside / memory.GIB:.2f} GiB outside PyTorch's allocator in a process without NCCL "
                f"(the memory check measures it with NCCL)")


# ==============================================================================================
# flash
# ==============================================================================================

FLASH_PATHS = {"flash": "flash-attn (flash_attn_varlen_func, flash_attn_with_kvcache)",
               "varlen": "torch's varlen_attn"}


def check_flash(report, device):
    if device.type != "cuda":
        report.skip("flash", "no CUDA device")
        return
    if torch.cuda.get_device_capability(device)[0] < 8:
        report.skip("flash", "FlashAttention-2 needs an Ampere or newer GPU (compute capability 8.0+); the model "
                             "runs SDPA here")
        return
    paths = [p for p, installed in (("flash", M.flash_attn_varlen_func), ("varlen", M.varlen_attn)) if installed]
    if not paths:
        report.skip("flash", "no flash path: neither flash-attn (pip install -r requirements-gpu.txt) nor torch's "
                             "varlen_attn (torch 2.12 or newer); the model runs SDPA")
        return
    shape = dict(QWEN25_MATH_7B, num_hidden_layers=2, intermediate_size=1024, vocab_size=1024)
    config = qwen2_config(shape)
    reference = random_model(config, device, torch.float32)
    net = M.Qwen2ForCausalLM(config).to(device)
    net.load_state_dict(reference.state_dict())
    net = net.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    backends = ("sdpa", *paths)
    errors = flash_packed_errors(reference, net, device, [700, 3, 1200, 1, 2000], g, backends)
    report.line("flash", "packed forward + backward, relative error vs fp32 (logits, log-probs, q_proj gradient): " +
                ", ".join(f"{b} " + " / ".join(f"{x:.4f}" for x in e.values()) for b, e in errors.items()))
    # Prefill (in two forwards) + decode + a finished row dropped, against a full fp32 recompute.
    worst = {b: e["worst"] for b, e in flash_decode_errors(reference, net, device, [40, 300, 1, 77], 6, [0, 2, 3],
                                                             g, backends).items()}
    report.line("flash", "prefill + decode + batch shrink, worst relative error vs fp32: " +
                ", ".join(f"{b} {e:.4f}" for b, e in worst.items()))
    for path in paths:
        ok = all(as_accurate_as_sdpa(error, errors["sdpa"][what]) for what, error in errors[path].items())
        report.verdict("flash", ok, f"{FLASH_PATHS[path]}: packed forward and backward as accurate as SDPA")
        report.verdict("flash", as_accurate_as_sdpa(worst[path], worst["sdpa"]),
                       f"{FLASH_PATHS[path]}: cached decode as accurate as SDPA")


def as_accurate_as_sdpa(flash, sdpa):
    """The flash check's pass rule for one relative error of a flash path against SDPA's."""
    return flash <= 2 * sdpa + 0.01


def flash_packed_errors(reference, net, device, lengths, generator, backends=("sdpa", "flash")):
    """Packed forward (no grad) and forward + backward in score mode, activation checkpointing
    on, of `net` (bf16) through each of `backends` (model.attention's "sdpa", "flash", "varlen"),
    over random sequences of `lengths` with every token but each sequence's last scored, against
    `reference` (the same weights in fp32, SDPA). Returns {backend: {"logits", "log-probs",
    "q_proj gradient"}} of relative errors."""
    V = net.config.vocab_size
    ids = torch.randint(0, V, (sum(lengths),), generator=generator).to(device)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
    scored = torch.cat([torch.arange(a, b - 1) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]).to(device)
    kw = dict(max_seqlen=max(lengths), scored=scored, targets=ids[scored + 1])
    reference.attn_backend = "sdpa"
    with torch.no_grad():
        logits_exact = reference(ids, cu, max_seqlen=max(lengths))
    logp_exact, _ = reference(ids, cu, **kw)
    logp_exact.sum().backward()
    grad_exact = reference.model.layers[0].self_attn.q_proj.weight.grad
    errors = {}
    for backend in backends:
        net.attn_backend, net.activation_checkpointing = backend, True
        net.zero_grad()
        with torch.no_grad():
            logits = net(ids, cu, max_seqlen=max(lengths))
        logp, _ = net(ids, cu, **kw)
        logp.sum().backward()
        grad = net.model.layers[0].self_attn.q_proj.weight.grad
        errors[backend] = {"logits": relative_error(logits, logits_exact),
                           "log-probs": relative_error(logp, logp_exact),
                           "q_proj gradient": relative_error(grad, grad_exact)}
    return errors


def flash_decode_errors(reference, net, device, prompt_lengths, steps, keep, generator, backends=("sdpa", "flash")):
    """Sampling's cache path in `net` (bf16) through each of `backends`: random prompts of
    `prompt_lengths` prefilled in two packed forwards (rollout.prefill) into one KVCache, `steps`
    decode steps, and after the third the rows not in `keep` finish (the cache compacts). Each
    step's logits against a full fp32 recompute by `reference` (the same weights, SDPA).
    Returns {backend: {"worst": the worst relative error over rows and steps, "prefilled": the
    cache's (filled, lengths) after the prefill, "compacted in place": whether the compacted cache
    holds len(keep) rows in its own storage}}."""
    V, rows, half = net.config.vocab_size, len(prompt_lengths), len(prompt_lengths) // 2
    prompts = [torch.randint(0, V, (n,), generator=generator).to(device) for n in prompt_lengths]
    new = torch.randint(0, V, (rows, steps), generator=generator).to(device)
    reference.attn_backend = "sdpa"
    results = {}
    with torch.no_grad():
        fulls = [reference(torch.cat([prompt, new[b]])[None])[0] for b, prompt in enumerate(prompts)]
        for backend in backends:
            net.attn_backend = backend
            cache = M.KVCache(rows=rows, max_len=max(prompt_lengths) + steps)
            step_logits = [torch.cat([rollout.prefill(net, [p.tolist() for p in prompts[:half]], cache, device),
                                      rollout.prefill(net, [p.tolist() for p in prompts[half:]], cache, device)])]
            result = {"prefilled": (cache.filled, cache.lengths.tolist())}
            for t in range(steps):
                if t == 3:
                    storage = cache.k[0].untyped_storage().data_ptr()
                    cache.keep(torch.tensor(keep, device=device))
                    result["compacted in place"] = (cache.k[0].untyped_storage().data_ptr() == storage
                                                    and cache.k[0].shape[0] == len(keep))
                step_logits.append(net(new[list(range(rows)) if t < 3 else keep, t], cache=cache))
            result["worst"] = max(relative_error(logits[b if t <= 3 else keep.index(b)], full[len(prompt) - 1 + t])
                                  for b, (prompt, full) in enumerate(zip(prompts, fulls))
                                  for t, logits in enumerate(step_logits) if t <= 3 or b in keep)
            results[backend] = result
    return results


# ==============================================================================================
# sampler
# ==============================================================================================

def check_sampler(report, device, shape, rows_list, new_tokens, workdir):
    from transformers import AutoModelForCausalLM
    config = qwen2_config(shape)
    V = config.vocab_size
    ours = random_model(config, device, torch.bfloat16, head_scale=20.0)
    folder = os.path.join(workdir, "sampler_model")
    M.save_model(ours, folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").to(device)
    theirs.eval()
    # Neither sampler may stop early or pick the last id: ours masks it (vocab_size=V-1) and
    # stops on it, transformers suppresses it until new_tokens are out (min_new_tokens).
    theirs.generation_config.eos_token_id = V - 1
    theirs.generation_config.pad_token_id = 0
    g = torch.Generator().manual_seed(1)
    for rows in rows_list:
        prompts = torch.randint(0, V - 1, (rows, 32), generator=g)
        times = {}
        for name in ("ours", "transformers", "ours", "transformers"):  # the second round is timed
            synchronize(device)
            start = time.perf_counter()
            if name == "ours":
                got = rollout.generate(ours, prompts.tolist(), new_tokens, [V - 1], temperature=0, vocab_size=V - 1)
            else:
                with torch.no_grad():
                    out = theirs.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device),
                                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                want = out[:, prompts.shape[1]:].tolist()
            synchronize(device)
            times[name] = time.perf_counter() - start
        same_rows = sum(a == b for a, b in zip(got, want))
        first = sum(a[0] == b[0] for a, b in zip(got, want))
        prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(got, want))
        tps = {name: rows * new_tokens / t for name, t in times.items()}
        report.line("sampler", f"{rows} rows x {new_tokens} tokens: tokens/s ours {tps['ours']:.0f}, transformers "
                    f"{tps['transformers']:.0f} ({tps['ours'] / tps['transformers']:.2f}x); rows identical "
                    f"{same_rows}/{rows}, mean agreeing prefix {prefix / rows:.1f} tokens")
        report.verdict("sampler", first >= 0.9 * rows,
                       f"first greedy token agrees with transformers in {first}/{rows} rows")


# ==============================================================================================
# prime: train.py end to end
# ==============================================================================================

def run_train(args, ranks, env, timeout=1200):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check_prime(report, world, shape, workdir, env):
    """Two bf16 PRIME steps + a resumed third with train.py on one rank, then on `world`."""
    folder = os.path.join(workdir, "prime_model")
    tokenizer = toy.build_toy_tokenizer(folder)
    config = toy.toy_model_config(tokenizer, hidden_size=shape["hidden_size"], num_layers=shape["num_hidden_layers"],
                                   num_heads=shape["num_attention_heads"], num_kv_heads=shape["num_key_value_heads"],
                                   intermediate_size=shape["intermediate_size"], max_position_embeddings=256)
    M.save_model(random_model(config, "cpu", torch.float32), folder)
    tokenizer.save_pretrained(folder)
    for ranks in sorted({1, world}):
        # 4 prompts x 4 samples per rank; one PRM mini-batch of all the step's responses
        args = [f"--model_path={folder}", "--bf16=true", "--activation_checkpointing=true", "--filter_low=0",
                "--filter_high=1", f"--prompts_per_step={4 * ranks}", f"--prm_mini_batch={16 * ranks}",
                f"--policy_mini_batch={8 * ranks}", "--max_prompt_tokens=64", "--max_response_tokens=64",
                "--eval_problems=32", "--save_every=2", "--keep_checkpoints=1", "--toy_train_problems=500"]
        out = os.path.join(workdir, f"prime_{ranks}")
        runs = [run_train([*args, f"--out_dir={out}", "--steps=2"], ranks, env)]
        if runs[0].returncode == 0:
            runs.append(run_train([*args, f"--out_dir={out}", "--steps=3"], ranks, env))
        if any(r.returncode for r in runs):
            report.verdict("prime", False, f"train.py on {ranks} rank(s) failed:\n{runs[-1].stdout[-3000:]}\n"
                                           f"{runs[-1].stderr[-3000:]}")
            continue
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        from safetensors.torch import load_file
        finite = all(math.isfinite(r[k]) for r in rows for k in ("prm_loss", "policy_loss", "policy_grad_norm"))
        # step 1: the PRM is the reference, bit for bit; step 2: it has learned and scores apart
        zero = rows[0]["process_reward_mean"] == 0.0 and rows[0]["process_reward_std"] == 0.0
        learned = rows[1]["process_reward_std"] > 0
        steps = [r["step"] for r in rows]
        resumed = steps == [1, 2, 3] and "(step 2 done)" in runs[1].stdout
        exported = load_file(os.path.join(out, "policy", "model.safetensors"))["lm_head.weight"].dtype == torch.bfloat16
        seconds = [round(r["seconds_collect"] + r["seconds_prm"] + r["seconds_policy"], 1) for r in rows]
        report.line("prime", f"{ranks} rank(s): steps {steps}, step 1 prm loss {rows[0]['prm_loss']:.6f} "
                    f"(log 2 = {math.log(2):.6f}), seconds per step {seconds}")
        report.verdict("prime", finite and zero and learned and resumed and exported,
                       f"{ranks} rank(s): finite losses {finite}, step-1 process rewards exactly 0 {zero}, "
                       f"step-2 rewards spread {learned}, resumed at step 3 {resumed}, bf16 export {exported}")
        shutil.rmtree(out)  # its checkpoints are GBs


# ==============================================================================================
# memory: the plan beside the measured peaks
# ==============================================================================================

def recipe_overrides(world, smoke):
    """The recipe (preset eurus2-7b-prime) with 32 prompts per GPU, 128 responses per rank as
    on 8 GPUs, and mini-batches of 32 responses per GPU (4 optimizer steps per iteration, as the
    recipe); the smoke test shrinks the lengths and micro-batches to the tiny model."""
    overrides = dict(prompts_per_step=32 * world, prm_mini_batch=32 * world, policy_mini_batch=32 * world)
    if smoke:
        overrides.update(max_prompt_tokens=32, max_response_tokens=96, micro_batch_tokens=512, prompts_per_step=8,
                         prm_mini_batch=16, policy_mini_batch=16, gpu_memory_utilization=1.0)
    return overrides


def _measure(rank, world, folder, overrides, init_file, out, smoke, gpu_gib):
    """One rank: the three models and two optimizers as train.py builds them (random weights),
    one warm-up step (AdamW's moments exist from step 2 on, as the plan assumes), then each phase
    with train.py's own functions at the worst-case lengths; writes {phase: peak bytes}."""
    cuda = not smoke
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                device_id=device)
    else:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(device.type, (world,))
    cfg = train.Config(**{**train.PRESETS["eurus2-7b-prime"], **overrides})
    config = M.load_config(folder)
    compute = memory.compute_dtype(cfg)
    torch.manual_seed(rank)
    policy, prm = (sharded_skeleton(config, mesh, True, cfg.bf16, cfg.activation_checkpointing) for _ in range(2))
    ref = sharded_skeleton(config, mesh, False, cfg.bf16, cfg.activation_checkpointing)
    for net in (policy, prm, ref):  # attention as model.attention_backend picks it, as in train.py
        net.to_empty(device=device)
        with torch.no_grad():
            M.init_weights(net)
    opts = {"policy": adamw(policy, cfg.policy_lr, 0.01), "prm": adamw(prm, cfg.prm_lr, 0.0)}
    V = config.vocab_size
    rows = cfg.prompts_per_step * cfg.samples_per_prompt // world
    mini = cfg.prm_mini_batch // world  # the peak of a training phase comes within one mini-batch

    def rollouts(n, prompt, response):
        return Rollouts(prompts=[[5] * prompt] * n, responses=[[6] * response] * n,
                              outcome=torch.tensor([1.0, 0.0] * (n // 2), device=device), truncated=[True] * n)

    small, worst = rollouts(mini, 8, 8), rollouts(mini, cfg.max_prompt_tokens, cfg.max_response_tokens)
    reserved = {}
    if cuda:
        def measure(phase, name=None):
            synchronize(device)
            torch.cuda.empty_cache()  # the phase's own caches only, as the plan's stream caches count them
            torch.cuda.reset_peak_memory_stats(device)
            phase()
            synchronize(device)
            reserved[name] = torch.cuda.max_memory_reserved(device)
            return torch.cuda.max_memory_allocated(device)
    else:
        meter = memory._Meter(policy, prm, ref, *opts.values())

        def measure(phase, name=None):
            peak = {}
            with meter.measure(peak):
                phase()
            return peak["peak"]

    measure(lambda: (train.prm_step(prm, ref, opts["prm"], small, cfg, device),
                     train.policy_step(policy, opts["policy"], small, torch.zeros(mini, 8, device=device),
                                       torch.zeros(mini, 8, device=device), cfg, 0, device)))
    # Sampling: prompts of max_prompt_tokens; at temperature 1 about a tenth of the vocabulary
    # ends a row, so rows stop early and the batch shrinks, while the cache is allocated full-size.
    if cuda:
        max_batch_tokens, max_prefill_tokens = train.sampling_bounds(policy, cfg, device, rows)
    else:  # the CPU has no free-memory reading: the plan's own limit
        limit = int(gpu_gib * memory.GIB * cfg.gpu_memory_utilization)
        max_batch_tokens = int(memory.planned_cache_slots(limit, meter.now(), config, compute,
                                                          cfg.micro_batch_tokens, rows))
        max_prefill_tokens = cfg.micro_batch_tokens
    eos = list(range(0, V, 10))
    prompts = [[5] * cfg.max_prompt_tokens] * rows
    old = {}
    peaks = {
        "sampling": measure(lambda: rollout.generate(policy, prompts, cfg.max_response_tokens, eos, seed=rank,
                                                     max_batch_tokens=max_batch_tokens,
                                                     max_prefill_tokens=max_prefill_tokens), "sampling"),
        "old log-probs": measure(lambda: old.update(lp=all_logprobs(policy, worst, cfg, device)[0]), "old log-probs"),
        "PRM update": measure(lambda: train.prm_step(prm, ref, opts["prm"], worst, cfg, device), "PRM update"),
        "policy update": measure(lambda: train.policy_step(policy, opts["policy"], worst, old["lp"],
                                                           torch.randn_like(old["lp"]), cfg, 1, device),
                                 "policy update"),
        "export": measure(lambda: M.save_model(policy, os.path.join(out, "export"), dtype=compute), "export"),
        "rows per chunk": min(rows, max_batch_tokens // (cfg.max_prompt_tokens + cfg.max_response_tokens)),
    }
    if cuda:
        peaks["outside PyTorch"] = memory.outside_bytes(device)
        peaks["reserved"] = reserved
    with open(os.path.join(out, f"peaks{rank}.json"), "w") as f:
        json.dump(peaks, f)
    dist.destroy_process_group()


PLANNED = {  # measured phase -> the plan's phases it covers (prm_step runs the reference too)
    "sampling": ("sampling: prefill", "sampling: decode", "sampling: batch shrink"),
    "old log-probs": ("old log-probs",),
    "PRM update": ("reference log-probs", "PRM update"),
    "policy update": ("policy update",),
    "export": ("export",),
}


def check_memory(report, world, gpu_gib, shape, workdir, env, smoke, device):
    folder = os.path.join(workdir, "memory_model")
    config = qwen2_config(shape)
    config.save_pretrained(folder)  # the plan and the ranks need only config.json
    overrides = recipe_overrides(world, smoke)
    plan_dir = os.path.join(workdir, "memory_plan")
    args = [f"--{k}={v}" for k, v in overrides.items()]
    backend = M.attention_backend(device, torch.bfloat16, M.head_dim(config))  # what the ranks will run
    planned_run = subprocess.run(
        [sys.executable, "train.py", "--preset=eurus2-7b-prime", f"--model_path={folder}", "--memory_plan=true",
         f"--world_size={world}", f"--gpu_memory_gib={gpu_gib}", f"--plan_attention={backend}",
         f"--out_dir={plan_dir}", *args],
        cwd=ROOT, env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=1200)
    plan_file = os.path.join(plan_dir, "memory_plan.json")
    if planned_run.returncode not in (0, 1) or not os.path.exists(plan_file):
        report.verdict("memory", False, f"the memory plan failed:\n{planned_run.stdout[-2000:]}\n"
                                        f"{planned_run.stderr[-3000:]}")
        return None
    with open(plan_file) as f:
        plan = json.load(f)
    report.line("memory", f"plan (world {world}, {gpu_gib:.1f} GiB per GPU, {shape['num_hidden_layers']} layers x "
                f"{shape['hidden_size']}, attention {backend}): " + planned_run.stdout.strip().splitlines()[-1])
    if not plan["fits"] and not smoke:
        report.verdict("memory", False, "the plan says this machine cannot run the recipe; nothing measured")
        return None
    # What this process itself holds on GPU 0 (its CUDA context; main() freed what earlier checks
    # left): rank 0 shares that GPU, and its reading of the memory outside PyTorch would count it too.
    parent_bytes = 0
    if not smoke:
        free, total = torch.cuda.mem_get_info(0)
        parent_bytes = total - free
    mp.spawn(_measure, args=(world, folder, overrides, os.path.join(workdir, "init"), workdir, smoke, gpu_gib),
             nprocs=world, join=True)
    shutil.rmtree(os.path.join(workdir, "export"), ignore_errors=True)
    ranks = []
    for r in range(world):
        with open(os.path.join(workdir, f"peaks{r}.json")) as f:
            ranks.append(json.load(f))
    peak_of = {p["name"]: p["peak_bytes"] for p in plan["phases"]}
    ratios = {}
    unit, size = ("MiB", 2 ** 20) if smoke else ("GiB", memory.GIB)
    report.line("memory", f"| phase | planned {unit} | measured {unit} (largest rank) | measured / planned |")
    for phase, names in PLANNED.items():
        if smoke and phase == "export":  # on the CPU the export's host copies are counted too
            continue
        planned = max(peak_of[n] for n in names)
        measured = max(r[phase] for r in ranks)
        ratios[phase] = measured / planned
        report.line("memory", f"| {phase} | {planned / size:.2f} | {measured / size:.2f} | {ratios[phase]:.3f} |")
    rows_key = next(k for k in plan["sizes"] if k.startswith("sampling: rows per chunk"))
    report.line("memory", f"sampling rows per chunk: planned {plan['sizes'][rows_key]}, run "
                f"{[r['rows per chunk'] for r in ranks]}")
    low = [phase for phase, ratio in ratios.items() if ratio < 0.8]
    if low:
        report.line("memory", f"the plan is more than 20% above the measurement in: {', '.join(low)}")
    report.verdict("memory", all(ratio <= 1.10 for ratio in ratios.values()),
                   "every phase's measured peak within 10% of the plan or under it")
    if "reserved" in ranks[0]:  # the CUDA caching allocator's view: the plan's peak and stream caches
        cached_of = {p["name"]: p["peak_bytes"] + p["cached_bytes"] for p in plan["phases"]}
        held = {phase: max(r["reserved"][phase] for r in ranks) / max(cached_of[n] for n in names)
                for phase, names in PLANNED.items()}
        report.line("memory", "peak reserved / (planned peak + FSDP2 stream caches): " +
                    ", ".join(f"{phase} {ratio:.3f}" for phase, ratio in held.items()))
        report.verdict("memory", all(ratio <= 1.10 for ratio in held.values()),
                       "every phase's reserved memory within 10% of the plan's peak with its stream caches, or under")
    if "outside PyTorch" in ranks[0]:  # with NCCL's buffers, in every rank; less this process's on GPU 0
        outside = max(r["outside PyTorch"] - (parent_bytes if i == 0 else 0) for i, r in enumerate(ranks))
        report.verdict("memory", outside <= memory.NON_TORCH_BYTES,
                       f"{outside / memory.GIB:.2f} GiB outside PyTorch's allocator with NCCL (the plan assumes "
                       f"{memory.NON_TORCH_BYTES / memory.GIB:.1f} GiB)")
    return ratios


# ==============================================================================================
# main
# ==============================================================================================

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run every check on the CPU at tiny sizes")
    parser.add_argument("--only", nargs="+", choices=["env", "flash", "sampler", "prime", "memory"],
                        help="run only these checks")
    parser.add_argument("--workdir", help="where the checks write (checkpoints, exports: up to ~25 GB at 7B; "
                                          "default: the system's temporary folder)")
    parser.add_argument("--report", default="gpu_check.json", help="the JSON report (default: gpu_check.json here)")
    args = parser.parse_args(argv)
    checks = args.only or ["env", "flash", "sampler", "prime", "memory"]
    report = Report()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("support/gpu_check.py: no CUDA device here: nothing to check (--smoke runs the checks on the CPU "
              "at tiny sizes)")
        return 0
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    world = torch.cuda.device_count() if cuda else 2
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / memory.GIB if cuda else SMOKE_GPU_GIB
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if not cuda:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    big = cuda and world >= 8 and gpu_gib >= 79
    runs = {
        "env": lambda: check_env(report, device),
        "flash": lambda: check_flash(report, device),
        "sampler": lambda: check_sampler(report, device, TINY if args.smoke else QWEN25_05B,
                                         (8,) if args.smoke else (64, 128), 16 if args.smoke else 128, workdir),
        "prime": lambda: check_prime(report, world, TINY if args.smoke else QWEN25_05B, workdir, env),
        "memory": lambda: check_memory(report, world, gpu_gib,
                                       TINY if args.smoke else QWEN25_MATH_7B if big else QWEN25_05B,
                                       workdir, env, args.smoke, device),
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check-", dir=args.workdir) as workdir:
        for name in checks:
            try:
                runs[name]()
            except Exception as error:  # a crashed check is a failed one; the others still run
                report.verdict(name, False, f"crashed: {type(error).__name__}: {error}")
            if cuda:  # what a check left cached must not count against the next one's ranks
                gc.collect()
                torch.cuda.empty_cache()
    counts = report.counts()
    report.write(args.report, device)
    print(f"support/gpu_check.py: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"(report: {os.path.abspath(args.report)})", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
