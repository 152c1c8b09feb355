"""support/sft.py: the SFT stage that makes the checkpoint PRIME starts from (Alg. 1 line 1).

PRIME starts from Eurus-2-7B-SFT, which the paper fine-tuned from Qwen2.5-Math-7B-Base on ~230K
chats (docs/notes.md §6); the toy starts from a tiny model fine-tuned on worked solutions
(toy/task.py). Both run here, on PRIME's machinery (FSDP2, bf16, activation checkpointing,
flash-attn, checkpoints with exact resume):

    python train.py --stage=sft --model_path=BASE --sft_files=F[,F...] --out_dir=DIR   # -> DIR/sft
    python train.py --preset=eurus2-7b-sft --model_path=BASE --sft_files=...          # the recipe
    python train.py                       # the toy: SFT first when <out_dir>/sft does not exist

Next-token cross-entropy on the assistant's tokens only (the rest is context), the token mean over
each rank's share of a batch of sft_batch chats, AdamW with linear warmup then cosine decay.
"""

import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoTokenizer

import data
import model as M
from support.checkpoint import export, resume_from, save_checkpoint
from support.cli import knob, out_of
from support.batches import micro_batches
from support.distributed import adamw, all_sum, clip_and_step, load_for_training, log
from toy import task as toy


@dataclass
class SFTConfig:
    """the SFT stage (--stage=sft; the toy's warm start). Defaults: Eurus-2-7B-SFT's recipe."""
    stage: str = knob("prime", "prime: the RL loop (after SFT if the toy has no SFT model yet); sft: SFT only")
    sft_files: str = knob("", "comma-separated chat files (parquet / JSON / JSONL; `messages` role/content or "
                              "`conversations` from/value) to fine-tune --model_path on; empty: the toy's solutions")
    sft_max_tokens: int = knob(0, "drop (and count) longer chats; 0: the model's context length")
    sft_epochs: int = knob(3, "SFT epochs")
    sft_batch: int = knob(96, "SFT chats per optimizer step, all ranks")
    sft_lr: float = knob(1e-5, "SFT peak learning rate, cosine decay")
    sft_warmup: float = knob(0.1, "SFT warmup share of the steps")
    sft_save_every: int = knob(250, "SFT: checkpoint every this many steps (and at the end)")

    def problems(self):
        return [p for p in [out_of("stage", self.stage, ("prime", "sft"))] if p]


# Eurus-2-7B-SFT's recipe (docs/notes.md §6): from Qwen2.5-Math-7B-Base, AdamW lr 1e-5, cosine,
# warmup 0.1, batch 96, 3 epochs, seed 42 (with Config's recipe defaults: bf16, activation
# checkpointing, 16384-token micro-batches).
PRESET = dict(stage="sft", out_dir="runs/eurus2-7b-sft", seed=42)


# ==============================================================================================
# 1. Chats: conversations -> token ids with an assistant-only loss mask.
# ==============================================================================================
# Eurus-2-7B-SFT was fine-tuned from Qwen2.5-Math-7B-Base on ~230K chats (docs/notes.md §6).
# `train.py --stage=sft --sft_files=...` reads chat files in the ecosystem's two conventions:
# `messages`, a list of {role, content} (TRL's SFT trainer reads this), or ShareGPT's
# `conversations`, a list of {from, value} (from: system / human / gpt, or user / assistant);
# either may come with a `system` column. Each chat goes through the model's own chat template,
# and only the assistant's tokens carry loss: its content and the end-of-turn token that closes
# it, so that the model learns to stop where the sampler stops.

CHAT_COLUMNS = ("messages", "conversations")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}


def chat_messages(row, where):
    """The row's chat as [{role, content}], checked: a known role, a non-empty string content,
    the first turn system or user, at least one assistant turn. `where` names file and row."""
    def bad(field, why):
        return ValueError(f"{where}, field {field!r}: {why}")

    column = next((c for c in CHAT_COLUMNS if row.get(c) is not None), None)
    if column is None:
        raise ValueError(f"{where}: no chat column (expected one of {CHAT_COLUMNS})")
    turns = row[column]
    if not isinstance(turns, list) or not turns:
        raise bad(column, f"expected a non-empty list of turns, got {type(turns).__name__}")
    role_key, text_key = ("role", "content") if column == "messages" else ("from", "value")
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise bad(column, f"turn {k} must be a dict with {role_key!r} and {text_key!r}, got {turn!r:.100}")
        role = turn.get(role_key) if column == "messages" else SHAREGPT_ROLES.get(turn.get(role_key))
        if role not in data.ROLES:
            raise bad(column, f"turn {k} has an unknown role {turn.get(role_key)!r}")
        content = turn.get(text_key)
        if not isinstance(content, str) or not content.strip():
            raise bad(column, f"turn {k} ({role}) has empty content")
        messages.append({"role": role, "content": content})
    system = row.get("system")
    if system is not None and messages[0]["role"] != "system":
        if not isinstance(system, str) or not system.strip():
            raise bad("system", f"expected a non-empty string, got {system!r:.100}")
        messages.insert(0, {"role": "system", "content": system})
    if messages[0]["role"] not in ("system", "user"):
        raise bad(column, "the chat must open with a system or user turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise bad(column, "no assistant turn: nothing to train on")
    return messages


def tokenize_chat(tokenizer, messages, stop_ids):
    """(ids, loss): the chat's token ids through the tokenizer's chat template and, per token,
    1 where it is trained (an assistant's content and the end-of-turn that closes it), else 0.

    The template renders the chat turn by turn: before assistant turn i, the chat up to it with
    the generation prompt (what the sampler is given), then with turn i (what it should write).
    The two texts' difference is the assistant's part; each piece is tokenized on its own, as at
    inference, where the prompt is tokenized alone and the model writes the rest. Tokens after
    the last trained one (the template's trailing newline) are dropped: they train nothing.
    Raises ValueError if the template does not render the chat as a growing prefix."""
    ids, loss, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (head.startswith(done) and full.startswith(head)):
            raise ValueError("the chat template does not render this chat turn by turn (each rendering a "
                             "prefix of the next), so the assistant's tokens cannot be found")
        context = tokenizer(head[len(done):], add_special_tokens=False)["input_ids"]
        reply = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        end = next((k + 1 for k, t in enumerate(reply) if t in stop_ids), len(reply))  # through the stop id
        ids += context + reply
        loss += [0] * len(context) + [1] * end + [0] * (len(reply) - end)
        done = full
    last = max(k for k, trained in enumerate(loss) if trained)
    return ids[:last + 1], loss[:last + 1]


def load_sft_data(paths, tokenizer, max_tokens):
    """Chats from local parquet / JSON / JSON Lines files as (ids, loss) pairs (tokenize_chat).
    A chat longer than max_tokens is dropped and counted; nothing else is skipped: a malformed
    row raises ValueError naming its file, row and field. Returns (chats, n_dropped)."""
    stop_ids = set(data.stop_token_ids(tokenizer))
    chats, dropped = [], 0
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SFT file {path!r} does not exist")
        for i, row in enumerate(data.read_records(path)):
            where = f"{path}: row {i}"
            messages = chat_messages(row, where)  # its errors name the file, row and field
            try:
                ids, loss = tokenize_chat(tokenizer, messages, stop_ids)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            if len(ids) > max_tokens:
                dropped += 1
                continue
            chats.append((ids, loss))
    if not chats:
        raise ValueError(f"no SFT chats in {paths} within {max_tokens} tokens ({dropped} longer dropped)")
    return chats, dropped



# ==============================================================================================
# 2. The stage.
# ==============================================================================================

def sft_model_path(cfg, sft_cfg, toy_cfg, device, mesh):
    """The SFT checkpoint PRIME starts from: --model_path, or <out_dir>/sft, which this stage makes
    first when --stage=sft asks for it (fine-tuning --model_path on --sft_files, or the toy) and,
    for the toy, when it has none yet. cfg is train.Config (the run's shared settings)."""
    path = os.path.join(cfg.out_dir, "sft")
    # PRIME from a given checkpoint, from real data (which needs one), or from the toy's own
    # SFT model once it exists; everything else runs the SFT stage below first.
    if sft_cfg.stage != "sft":
        if cfg.model_path:
            return cfg.model_path
        if cfg.train_files:
            raise SystemExit("train.py: --model_path (the SFT checkpoint) is required with --train_files")
        if os.path.exists(os.path.join(path, "config.json")):
            return path
    if cfg.model_path:  # the base model's own tokenizer and chat template
        try:
            tokenizer = data.load_tokenizer(cfg.model_path)
        except (OSError, ValueError) as error:
            raise SystemExit(f"train.py: {error}") from None
    else:  # the toy's character tokenizer
        if dist.get_rank() == 0:
            toy.build_toy_tokenizer(os.path.join(cfg.out_dir, "tokenizer"))
        dist.barrier()
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(cfg.out_dir, "tokenizer"))
    sft(cfg, sft_cfg, toy_cfg, tokenizer, path, device, mesh)
    return path


def sft_chats(cfg, sft_cfg, toy_cfg, tokenizer):
    """The SFT data as (ids, loss) pairs (tokenize_chat): chats from --sft_files, longer ones than
    sft_max_tokens dropped and counted; or the toy's worked solutions."""
    stop_ids = set(data.stop_token_ids(tokenizer))
    if not sft_cfg.sft_files:
        rows = toy.toy_rows("train", toy_cfg.sft_problems, seed=cfg.seed + 1,
                            careless_share=toy_cfg.toy_careless_share, **toy_cfg.row_args())
        return [tokenize_chat(tokenizer, chat, stop_ids) for chat in toy.toy_chats(rows)]
    max_tokens = sft_cfg.sft_max_tokens or M.load_config(cfg.model_path).max_position_embeddings
    try:
        chats, dropped = load_sft_data(sft_cfg.sft_files.split(","), tokenizer, max_tokens)
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
    logp, _ = M.packed_logprobs(net, sequences, device)  # [M]
    return -logp.sum(), len(logp)


def sft(cfg, sft_cfg, toy_cfg, tokenizer, out_path, device, mesh):
    """Fine-tune --model_path (or, for the toy, a fresh tiny model) on chats. Chats are packed into
    micro-batches of micro_batch_tokens. A checkpoint every sft_save_every steps
    (<out_dir>/sft_checkpoints) makes a re-run resume exactly; each step appends a line to
    <out_dir>/sft_metrics.jsonl. The model is exported to `out_path`."""
    rank, world = dist.get_rank(), mesh.size()
    if sft_cfg.sft_batch % world:
        raise SystemExit(f"train.py: sft_batch={sft_cfg.sft_batch} is not divisible by {world} ranks")
    torch.manual_seed(cfg.seed)
    if cfg.model_path:  # the base model: Qwen2.5-Math-7B-Base for Eurus-2-7B-SFT
        net = load_for_training(cfg.model_path, device, mesh, True, cfg.bf16, cfg.activation_checkpointing)
    else:  # the toy: a fresh model of the toy tokenizer's vocabulary
        config = toy.toy_model_config(tokenizer, hidden_size=toy_cfg.toy_hidden, num_layers=toy_cfg.toy_layers,
                                      intermediate_size=3 * toy_cfg.toy_hidden,
                                      max_position_embeddings=cfg.max_prompt_tokens + cfg.max_response_tokens)
        net = M.Qwen2ForCausalLM(config)
        M.init_weights(net)
        net.to(device)
        M.fsdp_wrap(net, mesh, mixed_precision=cfg.bf16, activation_checkpointing=cfg.activation_checkpointing)
    chats = sft_chats(cfg, sft_cfg, toy_cfg, tokenizer)  # [(token ids, 0/1 loss mask)] per chat
    lengths = [len(ids) for ids, _ in chats]  # packed tokens per chat, for micro_batches
    optimizer = adamw(net, sft_cfg.sft_lr, 0.0)  # the SFT recipe names no weight decay (docs/notes.md §6)
    per_rank = sft_cfg.sft_batch // world  # chats per rank in each batch
    steps_per_epoch = len(chats) // sft_cfg.sft_batch  # a last partial batch is left out, every epoch
    if steps_per_epoch == 0:
        raise SystemExit(f"train.py: {len(chats)} SFT chats do not fill one batch of sft_batch={sft_cfg.sft_batch}")
    total = steps_per_epoch * sft_cfg.sft_epochs  # optimizer steps of the whole run
    warmup = max(1, int(sft_cfg.sft_warmup * total))  # of them, the warmup's

    def lr_factor(s):  # linear warmup, then cosine decay to 0; s counts optimizer steps from 0
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    # Checkpoints of their own, apart from PRIME's: a run that goes on from SFT to PRIME in the
    # same out_dir resumes each stage from its own.
    root = os.path.join(cfg.out_dir, "sft_checkpoints")
    metrics_path = os.path.join(cfg.out_dir, "sft_metrics.jsonl")
    done = resume_from(root, metrics_path, {"model": net}, {"model": optimizer})["step"]
    log(f"SFT: {len(chats)} chats, {sft_cfg.sft_epochs} epochs of {steps_per_epoch} steps, batch "
        f"{sft_cfg.sft_batch}, lr {sft_cfg.sft_lr}" + (f"; resuming after step {done}" if done else ""))
    bar = tqdm(total=total, initial=done, desc="SFT", disable=rank != 0)
    for step in range(done + 1, total + 1):
        start = time.time()
        epoch, s = divmod(step - 1, steps_per_epoch)  # step counts from 1; s: the batch within its epoch
        # The same shuffle on every rank, seeded by the epoch: a resumed run sees the same batches.
        order = torch.randperm(len(chats), generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        # The step's batch is the epoch order's s-th slice of sft_batch chats; rank r takes the r-th
        # equal share of it, so the ranks together cover the batch once.
        mine = order[s * sft_cfg.sft_batch:(s + 1) * sft_cfg.sft_batch][rank * per_rank:(rank + 1) * per_rank]
        for group in optimizer.param_groups:
            group["lr"] = sft_cfg.sft_lr * lr_factor(step - 1)
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
        if step % sft_cfg.sft_save_every == 0 or step == total:
            save_checkpoint(root, step, {"model": net}, {"model": optimizer}, {"step": step}, cfg.keep_checkpoints)
    bar.close()
    export(net, tokenizer, out_path, cfg.bf16)
    log(f"SFT model saved to {out_path}")
