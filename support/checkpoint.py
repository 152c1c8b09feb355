"""support/checkpoint.py: checkpoints with exact resume, and Hugging Face exports.

A checkpoint is everything a run needs to go on as if never stopped: every model and optimizer
that trains (sharded: each rank writes its own part, with torch.distributed.checkpoint, DCP),
every rank's prompt stream, and the trainer's counters. COMPLETE is written last, after every
rank finished, so a kill mid-save leaves a folder without it, which resume ignores (and the next
save deletes); the oldest checkpoints beyond `keep` are deleted only after a new one is complete,
so keep + 1 exist during a save. A save first checks that the disk has room for the new one and
stops the run, with the numbers, if not: a disk filling up mid-save is the classic way to lose a
run (the recipe's checkpoint is about 170 GiB: two models' fp32 weights and AdamW moments).
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
from support.distributed import all_max, all_sum, local_bytes, log

GIB = 2 ** 30
# DCP stores each tensor's bytes plus its entry in the metadata: about 2 KiB per tensor per rank
# (measured at 108 and 204 tensors: 2.08 and 2.00 KiB); 4 KiB bounds it. The stream and trainer
# JSON files are kilobytes; 1 MiB per rank bounds them.
DCP_BYTES_PER_TENSOR = 4096
JSON_BYTES_PER_RANK = 2 ** 20


def checkpoint_dirs(root):
    """The complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    return [os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n, "COMPLETE"))]


def save_checkpoint(root, step, models, optimizers, trainer_state, keep, stream=None):
    """The models and optimizers (sharded, each rank its part), every rank's data stream (if
    given) and the trainer's counters, in root/step_NNNNNN; the oldest beyond `keep` go. Stops
    the run (SystemExit, every rank) before writing anything when the disk lacks the room."""
    path = os.path.join(root, f"step_{step:06d}")
    # get_state_dict views each rank's shards (DTensors) with FSDP-independent names; DCP writes
    # every rank's part in parallel and can load them back onto another number of ranks.
    state = {}
    for name in models:  # e.g. "policy", "policy_optim", "prm", "prm_optim"
        state[name], state[name + "_optim"] = get_state_dict(models[name], optimizers[name])
    if dist.get_rank() == 0:  # what a kill mid-save left: never taken as complete, so only in the way
        os.makedirs(root, exist_ok=True)
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if name.startswith("step_") and not os.path.exists(os.path.join(folder, "COMPLETE")):
                shutil.rmtree(folder)
    dist.barrier()
    device = next(next(iter(models.values())).parameters()).device  # where this rank's collectives run
    check_free_space(root, path, checkpoint_bytes(state, device), keep, device)
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


def checkpoint_bytes(state, device):
    """The bytes a checkpoint of `state` (get_state_dict's views) takes on disk, all ranks
    together: every rank's shards of every tensor, DCP's metadata and the JSON files (a
    collective on `device`)."""
    tensors = list(_tensors(state))
    mine = local_bytes(tensors) + DCP_BYTES_PER_TENSOR * len(tensors) + JSON_BYTES_PER_RANK
    return int(all_sum([mine], device)[0])


def _tensors(tree):
    """Every tensor in a nested state dict (optimizer states nest dicts and lists)."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def check_free_space(root, path, needed, keep, device):
    """Stop every rank (SystemExit) unless the disk under `root` has `needed` bytes free for the
    checkpoint about to be written to `path`. The older checkpoints already take their space and
    stay until the new one is complete, so the new one needs only its own (a collective: every
    rank checks its own view of the disk and all stop if any is short)."""
    free = shutil.disk_usage(root).free
    short = all_max(int(free < needed), device)
    if short:
        complete = checkpoint_dirs(root)
        raise SystemExit(
            f"checkpoint {path}: not enough disk space: it needs about {needed / GIB:.2f} GiB and {root} has "
            f"{free / GIB:.2f} GiB free. During a save keep_checkpoints + 1 = {keep + 1} checkpoints are on disk "
            f"(the oldest goes only once the new one is complete), about {(keep + 1) * needed / GIB:.1f} GiB. Free "
            f"space, lower --keep_checkpoints or use another --out_dir; nothing was written, and a re-run resumes "
            f"from {complete[-1] if complete else 'the start (no complete checkpoint yet)'}.")


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
