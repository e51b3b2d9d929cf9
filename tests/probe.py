"""Run under torchrun by tests/test_scale.py: set a training run up exactly as the pretrain stage does, then
record what each rank sees (its random streams, its evaluation of the test split) in <out>/rank-<r>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline import config
from pipeline.training import distributed, train
from pipeline.training.recipe import evaluate


def main(params: str, data: str, out: str) -> None:
    run = config.load_pretrain(params, "n12", "linear", 0)
    state = train._setup(run, Path(data), Path(out) / "resume", None)
    env = state.env
    record = {
        "world_size": env.world_size,
        "torch": torch.rand(4).tolist(),
        "numpy": np.random.rand(4).tolist(),
        "test": evaluate(state.model, state.loaders.test, env, amp=None),
        "diagnostic": torch.cat([x for x, _ in state.loaders.diagnostic])[:8].sum().item(),
        "same_rank": distributed.same_everywhere(env, env.rank),
        "same_seed": distributed.same_everywhere(env, run.seed),
    }
    for buffer in state.model.buffers():  # each rank's own running statistics, then rank 0's on every rank
        buffer.fill_(env.rank)
    distributed.broadcast_buffers(env, state.model)
    record["buffers"] = sum(b.float().sum().item() for b in state.model.buffers())
    Path(out, f"rank-{state.env.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
