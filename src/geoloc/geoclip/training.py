"""GeoCLIP's training over features embedded once: the package's step, under `accelerate`, resumable by epoch.

One step is the package's `train()` step with CLIP's forward replaced by the stored features:
the batch's coordinates are joined by the queue's (a copy taken before the update), the
batch is enqueued, each photo's logits over those locations go through cross-entropy against
its own coordinates, and Adam steps. The learning rate decays once per epoch (StepLR), as the
package's loop steps its scheduler once per call. Under `accelerate launch` every process
draws the same shuffled global batches, trains on its share of each, and enqueues the whole
global batch, so the queues stay equal without communication; with one process the steps
are the package's exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from geoloc.errors import InputError
from geoloc.geoclip.model import GEOCLIP_SIGMAS, IMAGE_DIM, QUEUE_SIZE, GeoClipModel
from geoloc.tables import replace_durably, write_text

CHECKPOINT_FOLDER = "checkpoint"


@dataclass(frozen=True)
class TrainSettings:
    """GeoCLIP's published training (paper, section 4; package defaults for the queue and the sigmas)."""

    epochs: int = 10
    batch_size: int = 512
    """The global batch: under `accelerate launch` each process trains on its share of it."""
    learning_rate: float = 3e-5
    """Adam's, as its weight decay below."""
    weight_decay: float = 1e-6
    lr_gamma: float = 0.87
    """StepLR's factor, applied once per epoch."""
    queue_size: int = QUEUE_SIZE
    sigmas: tuple[float, ...] = GEOCLIP_SIGMAS
    seed: int = 0
    init: str = "scratch"
    """scratch, published (GeoCLIP's released weights) or the folder of another release."""
    image_dim: int = IMAGE_DIM

    def resumable_with(self) -> dict:
        """What a resumed run must share with the checkpoint (more epochs may be asked)."""
        return {key: value for key, value in json.loads(json.dumps(asdict(self))).items() if key != "epochs"}


@dataclass
class TrainState:
    """Where a run stands after its last finished epoch."""

    model: GeoClipModel
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.StepLR
    epochs_done: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)


def new_state(settings: TrainSettings, initial: dict[str, torch.Tensor] | None = None) -> TrainState:
    """A fresh model (seeded; from `initial` weights when given), Adam and the per-epoch decay."""
    torch.manual_seed(settings.seed)
    model = GeoClipModel(settings.sigmas, settings.queue_size, settings.image_dim)
    if initial is not None:
        model.load_package_state(initial)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=settings.lr_gamma)
    return TrainState(model, optimizer, schedule)


def epoch_batches(rows: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The global batches of one epoch: a permutation drawn from (seed, epoch) alone, so a resumed run draws the
    same ones; the last batch may be short, as the package's loop allows."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return list(order.split(batch_size))


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                  coordinates: torch.Tensor, enqueued: torch.Tensor,
                  backward: Callable[[torch.Tensor], None] = torch.Tensor.backward) -> torch.Tensor:
    """One step of the package's loop on a batch of features; `enqueued` is the global batch's coordinates."""
    core = getattr(model, "module", model)
    optimizer.zero_grad()
    negatives = core.queued_coordinates()
    core.enqueue(enqueued)
    logits = model(features, torch.cat([coordinates, negatives]))
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(features), device=logits.device))
    backward(loss)
    optimizer.step()
    return loss.detach()


def train_epochs(
    state: TrainState,
    features: np.ndarray,
    coordinates: np.ndarray,
    settings: TrainSettings,
    after_epoch: Callable[[TrainState], None] = lambda state: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> TrainState:
    """Train from `state.epochs_done` to `settings.epochs`; `after_epoch` saves each finished epoch.

    `features` (photos, dim), or (photos, views, dim): augmented views embedded once, epoch e training on
    view e mod views, so the model sees each photo augmented anew without running CLIP again.
    """
    from accelerate import Accelerator

    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(state.model, state.optimizer)
    features_t = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    coordinates_t = torch.from_numpy(np.ascontiguousarray(coordinates, dtype=np.float32))
    rank, processes = accelerator.process_index, accelerator.num_processes
    steps = -(-len(features) // settings.batch_size)
    done = state.epochs_done * steps
    model.train()
    for epoch in range(state.epochs_done, settings.epochs):
        total = torch.zeros((), device=accelerator.device)
        for batch in epoch_batches(len(features), settings.batch_size, settings.seed, epoch):
            mine = batch[rank::processes]
            images = features_t[mine] if features_t.ndim == 2 else features_t[mine, epoch % features_t.shape[1]]
            total += training_step(model, optimizer, images.to(accelerator.device),
                                   coordinates_t[mine].to(accelerator.device),
                                   coordinates_t[batch].to(accelerator.device), accelerator.backward)
            done += 1
            progress(done, settings.epochs * steps)
        state.schedule.step()
        state.epochs_done = epoch + 1
        state.losses.append(float(accelerator.reduce(total, reduction="mean")) / steps)
        state.model = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            after_epoch(state)
        accelerator.wait_for_everyone()
    state.model.eval()
    return state


def save_checkpoint(folder: Path, state: TrainState, settings: TrainSettings) -> None:
    """The model (queue included), Adam's moments and the schedule after an epoch, in safetensors and JSON.

    The tensors go to a file named by the epoch and state.json, written last, names it: a run
    killed while saving resumes from the previous epoch.
    """
    tensors = {f"model.{key}": value.detach().cpu().contiguous() for key, value in state.model.state_dict().items()}
    optimizer = state.optimizer.state_dict()
    for index, moments in optimizer["state"].items():
        tensors.update({f"optimizer.{index}.{key}": torch.as_tensor(value).cpu().contiguous()
                        for key, value in moments.items()})
    name = f"state-{state.epochs_done:04d}.safetensors"
    replace_durably(folder / name, lambda temporary: save_file(tensors, str(temporary)))
    record = {"tensors": name, "epochs_done": state.epochs_done, "losses": state.losses,
              "validation": state.validation, "settings": settings.resumable_with(),
              "param_groups": optimizer["param_groups"], "schedule": state.schedule.state_dict()}
    write_text(folder / "state.json", json.dumps(record, indent=2))
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink()


def load_checkpoint(folder: Path, settings: TrainSettings) -> TrainState | None:
    """The state a previous run saved in `folder`, or None when there is none; another run's is refused."""
    record_path = folder / "state.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    changed = sorted(key for key, value in settings.resumable_with().items() if record["settings"].get(key) != value)
    if changed:
        raise InputError(f"{folder} holds a run with other settings (different {', '.join(changed)}); "
                         "delete it to start over, or write to another --out")
    tensors = load_file(str(folder / record["tensors"]))
    state = new_state(settings)
    state.model.load_state_dict({key[len("model."):]: value for key, value in tensors.items()
                                 if key.startswith("model.")})
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    state.optimizer.load_state_dict({"state": moments, "param_groups": record["param_groups"]})
    state.schedule.load_state_dict(record["schedule"])
    state.epochs_done, state.losses, state.validation = record["epochs_done"], record["losses"], record["validation"]
    return state
