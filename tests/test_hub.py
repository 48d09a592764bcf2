"""Without network, loading a hub model says so after one short request, not after the client's retries."""

import socket
import time

import pytest
from huggingface_hub import constants

from geoloc import hub
from geoloc.encode.backbone import BackboneUnavailable
from geoloc.encode.loading import load_image_processor


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """A hub endpoint on a loopback port nobody listens on, and an empty model cache."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    real = hub.hub_answers
    monkeypatch.setattr(hub, "hub_answers", lambda **options: calls.append(time.monotonic()) or real(**options))
    return calls


def test_an_unreachable_hub_is_asked_once_and_the_load_fails_in_offline_mode(unreachable_hub, monkeypatch):
    seen = []
    import transformers

    def record_mode(*args, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not in the local cache")

    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", record_mode)
    with pytest.raises(BackboneUnavailable):
        load_image_processor("openai/clip-vit-large-patch14")
    assert len(unreachable_hub) == 1 and seen == [True]
    assert constants.HF_HUB_OFFLINE is False  # the user's setting is back once the load is over


def test_a_local_folder_never_asks_the_hub(unreachable_hub, tmp_path):
    with hub.offline_unless_reachable(str(tmp_path)):
        assert constants.HF_HUB_OFFLINE is False
    assert unreachable_hub == []


def test_the_probe_gives_up_quickly_on_a_closed_port(unreachable_hub):
    assert hub.hub_answers(timeout_s=1.0) is False
