"""Distance-aware listwise losses: rewards should order candidates the way true distances do.

Plackett-Luce is the likelihood of drawing the candidates in their true order (nearest
first) when each draw picks among the remaining ones with probability softmax(reward).
Written with log-sum-exp so that rewards of any size (±300 and beyond) give finite
values and gradients; sorts are stable so tied distances keep their input order.
"""

from __future__ import annotations

import torch


def _plackett_luce(ordered_scores: torch.Tensor, positions: int | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the order given by the columns, over the first `positions` draws."""
    # log sum_{j >= p} exp(s_j): a log-cumulative-sum-exp taken from the right.
    tail_log_sum = torch.logcumsumexp(ordered_scores.flip(-1), dim=-1).flip(-1)
    log_probabilities = ordered_scores - tail_log_sum
    if positions is not None:
        log_probabilities = log_probabilities[:, :positions]
    return -log_probabilities.mean(dim=-1).mean()


def _check(rewards: torch.Tensor, distances: torch.Tensor, top_k: int | None) -> None:
    if rewards.ndim != 2 or rewards.shape != distances.shape:
        raise ValueError(f"rewards and distances must both be (batch, group); got {tuple(rewards.shape)} "
                         f"and {tuple(distances.shape)}")
    if top_k is not None and not 1 <= top_k <= rewards.shape[1]:
        raise ValueError(f"top_k must be between 1 and the group size {rewards.shape[1]}; got {top_k}")


def _sorted_by_distance(rewards: torch.Tensor, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sorted_distances, order = torch.sort(distances, dim=1, stable=True)
    return torch.gather(rewards, 1, order), sorted_distances


def plackett_luce_loss(rewards: torch.Tensor, distances: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """First order: candidates sorted by true distance, nearest first; PL loss over the first `top_k` positions."""
    _check(rewards, distances, top_k)
    ordered_rewards, _ = _sorted_by_distance(rewards, distances)
    return _plackett_luce(ordered_rewards, top_k)


def second_order_plackett_luce_loss(
    rewards: torch.Tensor, distances: torch.Tensor, top_k: int | None = None
) -> torch.Tensor:
    """Second order: PL over pairwise reward differences, ordered by their distance differences.

    For every pair (i, j) with i nearer than j and i among the `top_k` nearest, the reward
    gap r_i - r_j should be largest where the distance gap d_i - d_j is most negative.
    """
    _check(rewards, distances, top_k)
    group = rewards.shape[1]
    if group < 2:
        raise ValueError("the second-order loss needs groups of at least two candidates")
    ordered_rewards, ordered_distances = _sorted_by_distance(rewards, distances)
    nearer, farther = torch.triu_indices(group, group, offset=1, device=rewards.device)
    if top_k is not None:
        keep = nearer < top_k
        nearer, farther = nearer[keep], farther[keep]
    reward_gaps = ordered_rewards[:, nearer] - ordered_rewards[:, farther]
    distance_gaps = ordered_distances[:, nearer] - ordered_distances[:, farther]
    _, pair_order = torch.sort(distance_gaps, dim=1, stable=True)
    return _plackett_luce(torch.gather(reward_gaps, 1, pair_order))


def multi_order_distance_loss(
    rewards: torch.Tensor,
    distances: torch.Tensor,
    top_k: int | None = None,
    first_order_weight: float = 0.5,
) -> torch.Tensor:
    """GeoRanker's multi-order distance loss: w * first order + (1 - w) * second order."""
    if not 0.0 <= first_order_weight <= 1.0:
        raise ValueError(f"first_order_weight must be in [0, 1]; got {first_order_weight}")
    first = plackett_luce_loss(rewards, distances, top_k)
    second = second_order_plackett_luce_loss(rewards, distances, top_k)
    return first_order_weight * first + (1.0 - first_order_weight) * second
