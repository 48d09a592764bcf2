"""The one short question to the model hub before a load: is it there at all?

Without network, the hub client retries each file for about half a minute before the
load fails. One request with a short timeout tells sooner: when the hub does not answer
and the user has not chosen offline mode, the load runs in offline mode (the local cache
only), so it succeeds from the cache or fails at once with the missing-files message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PROBE_TIMEOUT_S = 3.0


def hub_answers(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub (HF_ENDPOINT, else the default one) answers one request within `timeout_s`."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


@contextlib.contextmanager
def offline_unless_reachable(name: str) -> Iterator[None]:
    """Load `name` in offline mode when it is a hub id and the hub does not answer; else as asked."""
    from huggingface_hub import constants

    if Path(name).exists() or constants.HF_HUB_OFFLINE or hub_answers():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextlib.contextmanager
def load_report_silenced() -> Iterator[None]:
    """transformers' warnings silenced for one load whose report lists weights skipped on purpose (a CLIP
    text tower, a language-modelling head); the verbosity the user set is back after it, whatever happens."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
