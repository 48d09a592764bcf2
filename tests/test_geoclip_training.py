"""geoloc's GeoCLIP trainer against the `geoclip` package's own model and `train()`, and its resumption."""

import numpy as np
import pytest
import torch
from torch import nn

from geoloc.geoclip.model import GeoClipModel
from geoloc.geoclip.training import (
    TrainSettings,
    epoch_batches,
    load_checkpoint,
    new_state,
    save_checkpoint,
    train_epochs,
)

SETTINGS = TrainSettings(epochs=2, batch_size=16, queue_size=24, learning_rate=1e-3, seed=5)
"""40 photos in batches of 16 (a short last batch) and a queue of 24 that wraps around: every branch of the
package's queue update runs."""


class FeaturesIn(nn.Module):
    """Stands in for CLIP: the package's image encoder gets the stored features as its 'pixels'."""

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values


def photos(count: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(count, 768)).astype(np.float32)
    coordinates = np.column_stack([rng.uniform(-80, 80, count), rng.uniform(-180, 180, count)]).astype(np.float32)
    return features, coordinates


def package_model(ours: GeoClipModel, tiny_clip):
    """The package's GeoCLIP with our initial weights and queue, CLIP replaced by the features."""
    from geoclip import GeoCLIP
    from geoclip.model._hub import load_geoclip_weights

    model = GeoCLIP(from_pretrained=False, queue_size=SETTINGS.queue_size, clip_path=str(tiny_clip))
    model.image_encoder.CLIP = FeaturesIn()
    load_geoclip_weights(model, ours.package_state())
    model.gps_queue.copy_(ours.gps_queue)
    model.gps_queue_ptr.copy_(ours.gps_queue_ptr)
    return model


def test_two_epochs_equal_the_package_train_loop_on_every_weight(tiny_clip):
    from geoclip.train import train

    features, coordinates = photos()
    ours = new_state(SETTINGS)
    package = package_model(ours.model, tiny_clip)
    trainable = [parameter for parameter in package.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=SETTINGS.learning_rate, weight_decay=SETTINGS.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=SETTINGS.lr_gamma)
    for epoch in range(SETTINGS.epochs):
        batches = [(torch.from_numpy(features[rows.numpy()]), torch.from_numpy(coordinates[rows.numpy()]))
                   for rows in epoch_batches(len(features), SETTINGS.batch_size, SETTINGS.seed, epoch)]
        train(batches, package, optimizer, epoch, SETTINGS.batch_size, "cpu", scheduler=schedule)

    trained = train_epochs(ours, features, coordinates, SETTINGS).model
    expected = {"logit_scale": package.logit_scale.detach()}
    expected.update({f"image_encoder.mlp.{k}": v for k, v in package.image_encoder.mlp.state_dict().items()})
    expected.update({f"location_encoder.{k}": v for k, v in package.location_encoder.state_dict().items()})
    got = trained.package_state()
    assert got.keys() == expected.keys()
    moved = 0
    initial = new_state(SETTINGS).model.package_state()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=0, msg=key)
        moved += not torch.equal(initial[key], value)
    assert moved >= 10  # the weights trained: equality is not of two untouched copies
    torch.testing.assert_close(trained.gps_queue, package.gps_queue, atol=0, rtol=0)
    assert int(trained.gps_queue_ptr) == int(package.gps_queue_ptr) == (2 * 40) % SETTINGS.queue_size


def test_a_run_resumed_after_its_first_epoch_ends_where_an_uninterrupted_one_does(tmp_path):
    features, coordinates = photos()
    settings = TrainSettings(**{**SETTINGS.__dict__, "sigmas": (1.0,)})  # one capsule: a third of the work
    straight = train_epochs(new_state(settings), features, coordinates, settings)
    first = TrainSettings(**{**settings.__dict__, "epochs": 1})
    train_epochs(new_state(first), features, coordinates, first,
                 after_epoch=lambda state: save_checkpoint(tmp_path, state, first))
    resumed = load_checkpoint(tmp_path, settings)
    assert resumed.epochs_done == 1
    resumed = train_epochs(resumed, features, coordinates, settings)

    assert resumed.losses == pytest.approx(straight.losses, abs=0)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=0, rtol=0, msg=key)

    other = TrainSettings(**{**settings.__dict__, "learning_rate": 1.0})
    with pytest.raises(ValueError, match="other settings .*learning_rate"):
        load_checkpoint(tmp_path, other)


def test_augmented_views_are_taken_one_per_epoch():
    features, coordinates = photos(20)
    views = np.stack([features, np.random.default_rng(1).normal(size=features.shape).astype(np.float32)], axis=1)
    settings = TrainSettings(**{**SETTINGS.__dict__, "sigmas": (1.0,), "epochs": 1})
    first = train_epochs(new_state(settings), features, coordinates, settings).model.package_state()
    first_of_views = train_epochs(new_state(settings), views, coordinates, settings).model.package_state()
    for key, value in first.items():
        torch.testing.assert_close(first_of_views[key], value, atol=0, rtol=0, msg=key)  # epoch 0: view 0

    two = TrainSettings(**{**settings.__dict__, "epochs": 2})
    plain = train_epochs(new_state(two), features, coordinates, two).model.package_state()
    augmented = train_epochs(new_state(two), views, coordinates, two).model.package_state()
    assert not torch.equal(plain["image_encoder.mlp.0.weight"], augmented["image_encoder.mlp.0.weight"])
