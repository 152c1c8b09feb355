"""support/checkpoint.py: checkpoints with exact resume, and Hugging Face exports.

A checkpoint is everything a run needs to go on as if never stopped: every model and optimizer
that trains (sharded: each rank writes its own part, with torch.distributed.checkpoint, DCP),
every rank's prompt stream, and the trainer's counters. COMPLETE is written last, after every
rank finished, so a kill mid-save leaves a folder without it, which resume ignores; the oldest
checkpoints beyond `keep` are deleted only after a new one is complete.
"""

import json
import os
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from transformers import GenerationConfig

import data
import model as M
from support.distributed import log


def checkpoint_dirs(root):
    """The complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    return [os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n, "COMPLETE"))]


def save_checkpoint(root, step, models, optimizers, trainer_state, keep, stream=None):
    """The models and optimizers (sharded, each rank its part), every rank's data stream (if
    given) and the trainer's counters, in root/step_NNNNNN; the oldest beyond `keep` go."""
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


def export(net, tokenizer, path, bf16):
    """The model as a Hugging Face folder with its tokenizer, ready for eval.py and transformers,
    in the compute dtype (bf16 under --bf16, as the released Eurus checkpoints are).

    Its generation_config.json makes transformers' `generate` sample as rollout.generate does:
    every id that ends a response (data.stop_token_ids: <|im_end|> and <|endoftext|>) as EOS, and
    the ids past the tokenizer's vocabulary suppressed. Qwen pads its embedding matrix to a
    multiple of 64 (151,665 tokens in 152,064 rows; the toy: 99 in 128); those rows were never
    trained towards 0 probability, so a sampler that does not mask them draws them now and then."""
    M.save_model(net, path, dtype=torch.bfloat16 if bf16 else None)
    if dist.get_rank() == 0:
        tokenizer.save_pretrained(path)
        GenerationConfig(eos_token_id=data.stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         suppress_tokens=list(range(len(tokenizer), net.config.vocab_size)) or None
                         ).save_pretrained(path)
    dist.barrier()
