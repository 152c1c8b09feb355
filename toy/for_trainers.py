"""toy/for_trainers.py: the toy for another trainer (TRL's RLOOTrainer or GRPOTrainer, OpenRLHF, ...).

    from toy.for_trainers import dataset, reward
    train = dataset("train", 20000)            # datasets.Dataset: prompt (a chat), ground_truth, id
    scores = reward(completions, ground_truth)   # TRL's reward-function signature

The same problems train.py samples from (toy/task.py: the train split, seeded by the run's seed)
and the same reward it trains on (verify.score_batch on the text a reader sees). A model that
train.py exported (e.g. <out_dir>/sft, the toy's SFT model) generates in transformers as it does
in our sampler: its generation_config.json names both end-of-turn ids and suppresses the
embedding's padding ids (support/checkpoint.py's export). Run from the repository root, or put it
on sys.path.
"""

import datasets

import verify
from toy import task


def dataset(split="train", n=20000, seed=0, toy=None):
    """n toy problems of `split` ("train" or "test": the held-out split train.py measures, seed 0)
    as a datasets.Dataset with columns "prompt" (the conversation, [{"role": "user", "content":
    question}], which a trainer renders with the tokenizer's chat template, as train.py does),
    "ground_truth" (the answer) and "id". toy: a task.ToyConfig (default: the toy preset's task)."""
    toy = toy or task.ToyConfig()
    rows = task.toy_rows(split, n, seed=seed, **toy.row_args())
    return datasets.Dataset.from_dict({"prompt": [row["prompt"] for row in rows],
                                       "ground_truth": [row["reward_model"]["ground_truth"] for row in rows],
                                       "id": [f"toy-{split}:{row['extra_info']['index']}" for row in rows]})


def reward(completions, ground_truth, **kwargs):
    """The outcome reward r_o of each completion, 1.0 or 0.0, as train.py scores the toy. A
    completion is the decoded text without special tokens, or a conversation whose last message
    is the model's (TRL's conversational format). Other keyword arguments (TRL passes the prompts
    and the dataset's other columns) are not used."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return verify.score_batch([{"ability": "math", "response": text, "ground_truth": truth}
                               for text, truth in zip(texts, ground_truth)])
