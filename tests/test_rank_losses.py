"""The multi-order distance loss against a computation by hand."""

import math

import pytest
import torch

from geoloc.rank.losses import multi_order_distance_loss, plackett_luce_loss, second_order_plackett_luce_loss

# Candidates 0, 1, 2 at 30, 10 and 20 km: the true order is 1, 2, 0 with rewards 3, 2, 1.
REWARDS = torch.tensor([[1.0, 3.0, 2.0]])
DISTANCES = torch.tensor([[30.0, 10.0, 20.0]])


def log_softmax_first(*scores: float) -> float:
    return scores[0] - math.log(sum(math.exp(s) for s in scores))


def test_first_order_matches_hand_computation():
    by_hand = -(log_softmax_first(3, 2, 1) + log_softmax_first(2, 1) + 0.0) / 3
    assert plackett_luce_loss(REWARDS, DISTANCES).item() == pytest.approx(by_hand, abs=1e-6)
    top_one = -log_softmax_first(3, 2, 1)
    assert plackett_luce_loss(REWARDS, DISTANCES, top_k=1).item() == pytest.approx(top_one, abs=1e-6)


def test_second_order_matches_hand_computation():
    # Pairs in the true order: (1,2) gap 1 at -10 km, (1,0) gap 2 at -20 km, (2,0) gap 1 at -10 km;
    # sorted by distance gap (stable): 2 (-20), 1 (-10, pair (1,2)), 1 (-10, pair (2,0)).
    by_hand = -(log_softmax_first(2, 1, 1) + log_softmax_first(1, 1) + 0.0) / 3
    assert second_order_plackett_luce_loss(REWARDS, DISTANCES).item() == pytest.approx(by_hand, abs=1e-6)
    # top_k=1 keeps the pairs of the nearest candidate only: gaps 2 (-20 km) then 1 (-10 km).
    top_one = -(log_softmax_first(2, 1) + 0.0) / 2
    assert second_order_plackett_luce_loss(REWARDS, DISTANCES, top_k=1).item() == pytest.approx(top_one, abs=1e-6)


def test_multi_order_weights_the_two_losses_and_averages_the_batch():
    rewards = torch.cat([REWARDS, torch.tensor([[0.5, -1.0, 2.0]])])
    distances = torch.cat([DISTANCES, torch.tensor([[5.0, 1.0, 500.0]])])
    first = (plackett_luce_loss(rewards[:1], distances[:1]) + plackett_luce_loss(rewards[1:], distances[1:])) / 2
    second = (second_order_plackett_luce_loss(rewards[:1], distances[:1])
              + second_order_plackett_luce_loss(rewards[1:], distances[1:])) / 2
    combined = multi_order_distance_loss(rewards, distances, first_order_weight=0.7)
    assert combined.item() == pytest.approx(0.7 * first.item() + 0.3 * second.item(), abs=1e-6)


def test_loss_is_lower_when_rewards_follow_the_true_order():
    right = torch.tensor([[1.0, 3.0, 2.0]])
    wrong = torch.tensor([[3.0, 1.0, 2.0]])
    assert multi_order_distance_loss(right, DISTANCES) < multi_order_distance_loss(wrong, DISTANCES)


def test_ties_keep_input_order():
    # Equal distances: the stable sort keeps candidate 0 before candidate 1.
    rewards = torch.tensor([[2.0, 0.0]])
    tied = torch.tensor([[7.0, 7.0]])
    assert plackett_luce_loss(rewards, tied).item() == pytest.approx(-log_softmax_first(2, 0) / 2, abs=1e-6)


@pytest.mark.parametrize("scale", [300.0, -300.0])
def test_finite_values_and_gradients_for_huge_rewards(scale):
    rewards = (scale * torch.tensor([[1.0, -1.0, 0.5, -0.25]])).requires_grad_()
    distances = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    loss = multi_order_distance_loss(rewards, distances, top_k=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(rewards.grad).all()
    if scale > 0:  # rewards in the reverse of the true order: a huge loss with a real gradient
        assert loss.item() > 100 and rewards.grad.abs().sum() > 0
    else:  # rewards in the true order by wide margins: only the tied pair gaps cost anything
        assert 0.0 < loss.item() < 1.0


def test_bad_shapes_and_top_k_are_refused():
    with pytest.raises(ValueError, match="batch, group"):
        plackett_luce_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="top_k"):
        second_order_plackett_luce_loss(REWARDS, DISTANCES, top_k=4)
