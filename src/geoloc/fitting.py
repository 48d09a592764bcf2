"""One small training loop for the models that train on a CPU (classifier, light ranker), through `accelerate`.

The same code runs on a laptop, one GPU, or several under `accelerate launch`: the
Accelerator places the model, shards the batches across processes and averages the
gradients; the effective batch size (per-process batch x processes x accumulation) is
reported so that runs on different machines can be compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from geoloc.errors import InputError


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    gradient_accumulation_steps: int = 1
    seed: int = 0


def fit(
    model: torch.nn.Module,
    rows: int,
    loss_of: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    settings: FitSettings,
    say: Callable[[str], None] = lambda line: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train `model` on `rows` examples: `loss_of(model, row_indices)` gives a batch's loss.

    Returns the trained model (unwrapped from any distributed wrapper) and the mean loss of
    each epoch. AdamW with a cosine learning-rate decay; `progress(done, total)` after each step.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if rows == 0:
        raise InputError("nothing to train on: no examples")
    set_seed(settings.seed)
    accelerator = Accelerator(gradient_accumulation_steps=settings.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(torch.arange(rows), batch_size=settings.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(settings.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps = settings.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    effective = settings.batch_size * accelerator.num_processes * settings.gradient_accumulation_steps
    say(f"training on {rows:,} examples, {settings.epochs} epoch(s), effective batch size {effective} "
        f"({settings.batch_size} x {accelerator.num_processes} process(es) x "
        f"{settings.gradient_accumulation_steps} accumulation step(s)), device {accelerator.device}")
    losses, done = [], 0
    model.train()
    for epoch in range(settings.epochs):
        total = torch.zeros((), device=accelerator.device)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = loss_of(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            total += loss.detach()
            done += 1
            progress(done, steps)
        losses.append(float(accelerator.reduce(total, reduction="mean")) / len(loader))
        say(f"epoch {epoch + 1}: mean loss {losses[-1]:.4f}")
    model.eval()
    return accelerator.unwrap_model(model), losses
