"""Shared-prefix scoring against the plain path (GeoRanker's) on one CPU.

A random-weight Qwen2-VL scaled down from Qwen2-VL-7B (widths / 8, depths / 4, so the
vision tower and the language model keep their relative cost), 224 px photos, and
GeoRanker's default group: 10 retrieval candidates with gallery photos and 5 zero-shot
candidates without, 5 negatives named in every prompt. The shared-prefix path also runs
the last decoder layer's MLP on the reward token alone; with 7 layers that is worth about
an eighth of the decoder's work, with the 7B's 28 (`--full-depth`) about a thirtieth.
Both paths score the same queries with the same batches; each is timed end to end (prompt building, image
processing, model), query by query with the paths alternating, best of `--repeats`. Prints one JSON line:
{"candidates", "plain_s", "shared_prefix_s", "speedup", "max_abs_diff"} (seconds per query).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch

from geoloc.rank.dryrun import TinySize, build_tiny_qwen2_vl, toy_query_group
from geoloc.rank.model import LoraSettings, load_processor, new_reward_model
from geoloc.rank.scoring import RewardScorer

SCALED_QWEN2_VL_7B = TinySize(
    hidden=448, layers=7, heads=7, kv_heads=1, intermediate=2368,
    vision_dim=160, vision_depth=8, vision_heads=2, vision_mlp_ratio=4, vocab=1024,
)


def timed_rewards(scorer: RewardScorer, group) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    rewards = scorer.rewards(group)
    return time.perf_counter() - start, rewards


def interleaved_seconds(plain: RewardScorer, shared: RewardScorer, groups, repeats: int):
    """Seconds per query for each path, the best of `repeats` per query, the paths alternating.

    The machine is shared: alternating query by query (and which path goes first) exposes
    both paths to the same background load; the minimum is the least disturbed run.
    """
    best = {"plain": np.full(len(groups), np.inf), "shared": np.full(len(groups), np.inf)}
    rewards = {}
    for repeat in range(repeats):
        for index, group in enumerate(groups):
            order = [("plain", plain), ("shared", shared)][:: 1 if (repeat + index) % 2 == 0 else -1]
            for name, scorer in order:
                seconds, rewards[name, index] = timed_rewards(scorer, group)
                best[name][index] = min(best[name][index], seconds)
    difference = max(float(np.abs(rewards["plain", i] - rewards["shared", i]).max()) for i in range(len(groups)))
    return float(best["plain"].mean()), float(best["shared"].mean()), difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-depth", action="store_true", help="the 7B's 28 decoder layers and 32 vision blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = SCALED_QWEN2_VL_7B
    if args.full_depth:
        size = dataclasses.replace(size, layers=28, vision_depth=32)
    with tempfile.TemporaryDirectory() as folder:
        base = str(build_tiny_qwen2_vl(folder, size))
        torch.manual_seed(0)
        model = new_reward_model(base, LoraSettings()).eval()
        processor = load_processor(base)
    with torch.no_grad():  # trained-looking adapters: LoRA B is zero when fresh
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    rng = np.random.default_rng(0)
    groups = [toy_query_group(rng, retrieval=10, zeroshot=5, photo_size=224) for _ in range(args.queries)]
    plain = RewardScorer(model, processor, batch_size=args.batch_size, shared_prefix=False)
    shared = RewardScorer(model, processor, batch_size=args.batch_size, shared_prefix=True)
    timed_rewards(shared, groups[0])  # warm-up
    plain_s, shared_s, difference = interleaved_seconds(plain, shared, groups, args.repeats)
    print(json.dumps({
        "candidates": len(groups[0].candidates),
        "plain_s": round(plain_s, 4),
        "shared_prefix_s": round(shared_s, 4),
        "speedup": round(plain_s / shared_s, 3),
        "max_abs_diff": difference,
    }))


if __name__ == "__main__":
    main()
