"""Tiny random Qwen2 checkpoints for tests, made with transformers' own implementation; tiny
networks of ours for the toy tokenizer; and a network of ours with Qwen2.5-7B's attention geometry."""

import copy
import dataclasses

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import model as M
import train
from toy import task as toy


def tiny_config(vocab_size=97, hidden_size=64, layers=2, heads=4, kv_heads=2, tie=False, intermediate_size=None,
                **extra):
    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size,
                       intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=256, rope_theta=500.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=tie, **extra)


def random_hf_model(config, seed=0):
    """transformers' Qwen2ForCausalLM with every weight random, norms and biases included
    (its own init leaves norms at 1 and biases at 0, which would hide a misplaced one)."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.1 * torch.randn_like(param))
    return model


def random_checkpoint(path, seed=0, **config_kwargs):
    """Write a random tiny Qwen2 checkpoint folder at `path`; return the transformers model."""
    model = random_hf_model(tiny_config(**config_kwargs), seed)
    model.save_pretrained(path)
    return model


def toy_network(tokenizer, max_position_embeddings, seed=0, heads=2, kv_heads=1, std=0.5):
    """Our network for the toy tokenizer (toy.task.toy_model_config): hidden 32, one layer, MLP 64,
    `heads` query and `kv_heads` KV heads, normal(0, std) weights (model.init_weights) drawn
    after torch.manual_seed(seed)."""
    config = toy.toy_model_config(tokenizer, hidden_size=32, num_layers=1, num_heads=heads, num_kv_heads=kv_heads,
                                   intermediate_size=64, max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    network = M.Qwen2ForCausalLM(config)
    M.init_weights(network, std=std)
    return network


def save_toy_checkpoint(path, network, tokenizer=None):
    """Save as train.py saves a checkpoint: the model folder first (save_model replaces the
    folder), then the tokenizer, when given, into it. Returns the folder as a string."""
    M.save_model(network, str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return str(path)


def seven_b_attention():
    """A network with Qwen2.5-7B's attention geometry (hidden 3584, 28 query heads and 4 KV heads
    of dim 128; a small MLP and vocabulary keep it fast): random weights, norms and biases
    (gpu_check.random_model, which the GPU check uses at the same geometry), fp32.
    Returns (fp32 network, the same in bf16)."""
    from support import gpu_check
    config = tiny_config(vocab_size=128, hidden_size=3584, layers=2, heads=28, kv_heads=4,
                         intermediate_size=256)
    net = gpu_check.random_model(config, "cpu", torch.float32)
    return net, copy.deepcopy(net).to(torch.bfloat16)


def toy_config(**overrides):
    """train.Config as `python train.py` resolves it (the toy preset), with `overrides`."""
    return dataclasses.replace(train.settings([])[0], **overrides)
