"""FSDP2 on two gloo ranks (CPU) against the same step in one process; sharded loading, each rank
reading only its rows."""

import json
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import model as M
from tests.tiny import random_checkpoint

LENGTHS = [[7, 5], [6, 6]]  # rank 0's and rank 1's sequences: 10 scored tokens each


def shard_batch(rank):
    """Rank `rank`'s packed sequences, every token but each sequence's last scored against
    its successor: (ids, cu_seqlens, scored positions)."""
    g = torch.Generator().manual_seed(1234 + rank)
    seqs = [torch.randint(0, 97, (n,), generator=g) for n in LENGTHS[rank]]
    ids = torch.cat(seqs)
    cu = torch.tensor([0] + torch.tensor(LENGTHS[rank]).cumsum(0).tolist(), dtype=torch.int32)
    scored = torch.cat([torch.arange(a, b - 1) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    return ids, cu, scored


def sgd_step(model, ids, cu, scored):
    """Mean negative log-likelihood over the scored tokens, one SGD step; returns the loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    logp, _ = model(ids, cu, scored=scored, targets=ids[scored + 1])
    loss = -logp.sum() / len(scored)
    loss.backward()
    opt.step()
    return loss.item()


def _worker(rank, init_file, ckpt, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = M.fsdp_wrap(M.load_model(ckpt), init_device_mesh("cpu", (2,)), mixed_precision=False)
    ids, cu, scored = shard_batch(rank)
    loss = sgd_step(model, ids, cu, scored)

    q_proj = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        outside = model(ids, cu)
        with M.gathered_params(model):
            inside = [model(ids, cu) for _ in range(2)]
            gathered = not isinstance(q_proj.weight, DTensor)
    resharded = isinstance(q_proj.weight, DTensor) and q_proj.weight.to_local().shape[0] == 32

    M.save_model(model, f"{out}/saved")
    M.save_model(model, f"{out}/saved_bf16", dtype=torch.bfloat16, max_shard_bytes=20_000)  # streamed, sharded
    torch.save({"loss": loss, "gathered": gathered, "resharded": resharded,
                "same_inside": all(torch.equal(outside, x) for x in inside)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_fsdp_step_equals_single_process_step(tmp_path):
    ckpt = tmp_path / "ckpt"
    random_checkpoint(ckpt, hidden_size=64, heads=4, kv_heads=2)
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(ckpt), str(tmp_path)), nprocs=2, join=True)

    # The same step in one process, on both shards at once. FSDP averages the two ranks'
    # gradients; each rank's loss is a mean over 10 tokens, so that average is the 20-token mean.
    single = M.load_model(ckpt)
    batches = [shard_batch(r) for r in range(2)]
    ids = torch.cat([b[0] for b in batches])
    cu = torch.cat([batches[0][1], batches[1][1][1:] + batches[0][1][-1]])
    scored = torch.cat([batches[0][2], batches[1][2] + batches[0][1][-1]])
    loss = sgd_step(single, ids, cu, scored)

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert abs((ranks[0]["loss"] + ranks[1]["loss"]) / 2 - loss) < 1e-5
    assert all(r["gathered"] and r["resharded"] and r["same_inside"] for r in ranks)
    saved = M.load_model(tmp_path / "saved").state_dict()
    for name, tensor in single.state_dict().items():
        assert torch.allclose(saved[name], tensor, atol=1e-5), name
    assert any(not torch.allclose(saved[n], t) for n, t in M.load_model(ckpt).state_dict().items())
    # the bf16 export: the same weights rounded once, in several safetensors files with an index
    from safetensors.torch import load_file
    index = json.loads((tmp_path / "saved_bf16" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3, files
    shards = {}
    for file in files:
        shards.update(load_file(tmp_path / "saved_bf16" / file))
    assert set(shards) == set(saved) and all(t.dtype == torch.bfloat16 for t in shards.values())
    assert all(torch.equal(shards[n], saved[n].to(torch.bfloat16)) for n in saved)
    assert M.load_model(tmp_path / "saved_bf16").config.vocab_size == 97


def _load_and_save_worker(rank, init_file, folder):
    """One spawn for two tests. Load each checkpoint with load_for_training, recording every read
    from its files; then, with the untied model, save two checkpoints normally (the second over a
    half-written leftover) and one with the disk reported short on rank 1 only."""
    import os
    import shutil

    from support import checkpoint
    from support.distributed import adamw, load_for_training
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    reads, real_open = [], M.safe_open

    class Recorder:  # a safetensors file handle that notes how many elements of which weight are read
        def __init__(self, f):
            self.f = f

        def keys(self):
            return self.f.keys()

        def get_tensor(self, name):
            reads.append((name, "whole"))
            return self.f.get_tensor(name)

        def get_slice(self, name):
            stored = self.f.get_slice(name)
            return type("Slice", (), {"get_shape": lambda _: stored.get_shape(),
                                      "__getitem__": lambda _, rows: reads.append((name, stored[rows].numel()))
                                      or stored[rows]})()

    @contextmanager
    def recording_open(file, framework):
        with real_open(file, framework=framework) as f:
            yield Recorder(f)

    M.safe_open = recording_open
    loads = {}
    for name in ("untied", "tied"):
        reads.clear()
        net = load_for_training(f"{folder}/{name}", "cpu", mesh, trainable=True, bf16=False,
                                activation_checkpointing=False)
        ids, cu, _ = shard_batch(0)
        with torch.no_grad():
            logits = net(ids, cu)
        loads[name] = {"shards": {n: (t.to_local().clone(), t.shape) for n, t in net.state_dict().items()},
                       "reads": list(reads), "logits": logits,
                       "tied": net.lm_head.weight is net.model.embed_tokens.weight}
        if name == "untied":
            untied = net
    M.safe_open = real_open

    net, root = untied, f"{folder}/run/checkpoints"
    optimizer = adamw(net, 1e-3, 0.0)
    sgd_step(net, *shard_batch(rank))  # gradients, for AdamW's moments to exist
    optimizer.step()
    estimates = []
    real_bytes = checkpoint.checkpoint_bytes
    checkpoint.checkpoint_bytes = lambda state, device: estimates.append(real_bytes(state, device)) or estimates[-1]
    checkpoint.save_checkpoint(root, 1, {"policy": net}, {"policy": optimizer}, {}, keep=1)
    if rank == 0:  # a save killed midway: a folder without COMPLETE
        os.makedirs(f"{root}/step_000002")
        open(f"{root}/step_000002/__0_0.distcp", "w").close()
    dist.barrier()
    checkpoint.save_checkpoint(root, 3, {"policy": net}, {"policy": optimizer}, {}, keep=1)
    real_usage = shutil.disk_usage
    shutil.disk_usage = lambda path: real_usage(path)._replace(free=estimates[-1] - 1 if rank == 1 else 10 ** 15)
    try:
        checkpoint.save_checkpoint(root, 4, {"policy": net}, {"policy": optimizer}, {}, keep=1)
        stopped = None
    except SystemExit as stop:
        stopped = str(stop)
    torch.save({"loads": loads, "estimates": estimates, "stopped": stopped}, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def loaded_and_saved(tmp_path_factory):
    """(folder, what each of two ranks recorded) of one _load_and_save_worker run."""
    folder = tmp_path_factory.mktemp("load_and_save")
    random_checkpoint(folder / "untied", hidden_size=64, heads=4, kv_heads=2)
    random_checkpoint(folder / "tied", hidden_size=64, heads=4, kv_heads=2, tie=True, seed=1)
    mp.spawn(_load_and_save_worker, args=(str(folder / "init"), str(folder)), nprocs=2, join=True)
    return folder, [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def test_sharded_load_reads_each_ranks_rows_only(loaded_and_saved):
    """load_for_training on two ranks: each rank's shards equal its rows of the full model (rows
    split as torch.chunk splits them: 97 vocabulary rows are 49 + 48), the tied head stays tied,
    the sharded model computes what the whole one computes, and each rank read from the files
    exactly the elements of its own shards, never a whole weight: no rank held the full model."""
    folder, ranks = loaded_and_saved
    for name in ("untied", "tied"):
        full = M.load_model(folder / name)
        whole = full.state_dict()
        with torch.no_grad():
            expected = full(*shard_batch(0)[:2])
        for rank, r in enumerate(ranks):
            loaded = r["loads"][name]
            assert loaded["tied"] == (name == "tied")
            torch.testing.assert_close(loaded["logits"], expected, rtol=0, atol=1e-6)
            shards = loaded["shards"]
            assert set(shards) == set(whole)
            for key, (local, shape) in shards.items():
                rows = -(-shape[0] // 2)
                assert torch.equal(local, whole[key][rank * rows:(rank + 1) * rows]), (name, key, rank)
            assert shards["model.embed_tokens.weight"][0].shape[0] == (49, 48)[rank]
            read = loaded["reads"]
            assert all(isinstance(n, int) for _, n in read), read  # slices only, never get_tensor
            stored = [k for k in shards if not (name == "tied" and k == "lm_head.weight")]
            assert sorted(k for k, _ in read) == sorted(stored)  # each weight read once
            assert sum(n for _, n in read) == sum(shards[k][0].numel() for k in stored)


def test_save_stops_when_the_disk_lacks_room_and_never_leaves_half_a_checkpoint(loaded_and_saved):
    """The checkpoint's size estimate covers what DCP writes; a leftover of a killed save is
    removed by the next save; a save with too little room (here on one rank of two) stops both
    ranks with the numbers before writing anything, and the last complete checkpoint stays."""
    import os

    from support.checkpoint import checkpoint_dirs
    folder, ranks = loaded_and_saved
    root = folder / "run" / "checkpoints"
    written = sum(os.path.getsize(root / "step_000003" / f) for f in os.listdir(root / "step_000003"))
    estimate = ranks[0]["estimates"][1]
    assert all(r["estimates"] == ranks[0]["estimates"] for r in ranks)
    assert written <= estimate <= 1.5 * written + 2 * 2 ** 21, (written, estimate)  # covers it; 2 MiB JSON allowance
    assert sorted(os.listdir(root)) == ["step_000003"]  # step 1 rotated out (keep=1), the leftover gone, no step 4
    assert checkpoint_dirs(str(root)) == [str(root / "step_000003")]
    for r in ranks:
        assert r["stopped"] is not None and "not enough disk space" in r["stopped"], r
        assert "keep_checkpoints + 1 = 2" in r["stopped"], r
        assert "resumes from" in r["stopped"] and "step_000003" in r["stopped"], r
