"""PLONK: samples and exact log-likelihoods for many photos, geoloc batched against PLONK's own pipeline.

Both sides run the same random-weight network (PLONK's published sizes by default) on the same
embeddings and starting noise. geoloc draws every photo's K samples and measures their
likelihoods in passes of `--batch-photos` photos; the authors' `PlonkPipeline` (diff-plonk,
installed without its dependencies) does one photo at a time, as its API takes one image: K
samples, then `compute_likelihood` of them. PLONK's side is timed on `--their-photos` photos and
scaled to the same count. Prints geoloc's time as soon as it is known, then one JSON object:
seconds, photos per second, the ratio, peak device memory, and the largest difference between
the two sides' samples and likelihoods.

    python benchmarks/plonk.py --photos 1000 --samples 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _network(folder: str, args: argparse.Namespace) -> None:
    from plonk.models.pretrained_models import Plonk

    torch.manual_seed(0)
    network = Plonk(input_dim=3, dim=args.dim, depth=args.depth, expansion=4, cond_dim=args.cond_dim)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    network.save_pretrained(folder)


def _ours(folder: str, embeddings, noise, args, device) -> tuple[float, torch.Tensor, torch.Tensor]:
    from geoloc.plonk.model import PlonkSettings, load_plonk
    from geoloc.plonk.sampling import log_likelihood, sample_points

    model = load_plonk(folder, device, PlonkSettings("riemannian_flow", "plonk-dinov2"))
    rows = args.batch_photos * args.samples
    conditions = embeddings.repeat_interleave(args.samples, dim=0)
    _reset(device)
    _sync(device)
    start = time.perf_counter()
    points, densities = [], []
    for begin in range(0, len(noise), rows):
        part = slice(begin, begin + rows)
        sampled = sample_points(model.network, "riemannian_flow", model.settings.schedule, conditions[part],
                                noise[part], args.steps)
        points.append(sampled)
        densities.append(log_likelihood(model.network, model.settings.schedule, conditions[part], sampled))
    _sync(device)
    return time.perf_counter() - start, torch.cat(points), torch.cat(densities)


def _theirs(folder: str, embeddings, noise, args, device) -> tuple[float, torch.Tensor, torch.Tensor]:
    import plonk.pipe as pipe

    pipe.MODELS[folder] = {"emb_name": "dinov2", "sampler": pipe.riemannian_flow_sampler}
    pipe.load_prepocessing = lambda model_name: lambda batch: {**batch, "emb": torch.stack(batch["img"])}
    authors = pipe.PlonkPipeline(folder, device=device)
    k = args.samples
    _reset(device)
    _sync(device)
    start = time.perf_counter()
    points, densities = [], []
    for photo in range(args.their_photos):
        rows = slice(photo * k, (photo + 1) * k)
        degrees = authors([embeddings[photo]] * k, x_N=noise[rows], num_steps=args.steps)
        densities.append(authors.compute_likelihood(emb=embeddings[photo:photo + 1], coordinates=degrees,
                                                    normalize_logp=False))
        points.append(torch.from_numpy(degrees))
    _sync(device)
    return time.perf_counter() - start, torch.cat(points), torch.cat(densities)


def main() -> None:
    # This file's own name would hide the authors' `plonk` package: drop its folder from the search path.
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).parent.resolve()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--their-photos", type=int, default=50, help="photos PLONK's pipeline is timed on")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-photos", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--cond-dim", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(args.photos, args.cond_dim, generator=generator).to(device)
    noise = torch.randn(args.photos * args.samples, 3, generator=generator).to(device)
    from geoloc.plonk.sampling import to_degrees

    with tempfile.TemporaryDirectory() as folder:
        _network(folder, args)
        ours_s, points, densities = _ours(folder, embeddings, noise, args, device)
        ours_peak = _peak_mb(device)
        # geoloc's figures first, so that a run stopped during the slow side still reports them.
        print(json.dumps({"geoloc_s": round(ours_s, 2), "geoloc_peak_device_mb": ours_peak}), flush=True)
        theirs_s, their_degrees, their_densities = _theirs(folder, embeddings, noise, args, device)
        theirs_peak = _peak_mb(device)
    compared = len(their_densities)
    ours_degrees = to_degrees(points[:compared]).cpu()
    theirs_scaled = theirs_s * args.photos / args.their_photos
    print(json.dumps({
        "photos": args.photos, "samples_per_photo": args.samples, "steps": args.steps, "device": str(device),
        "network": {"dim": args.dim, "depth": args.depth, "cond_dim": args.cond_dim},
        "geoloc_s": round(ours_s, 2), "geoloc_photos_per_s": round(args.photos / ours_s, 2),
        "plonk_pipeline_s_measured": round(theirs_s, 2), "plonk_pipeline_photos_measured": args.their_photos,
        "plonk_pipeline_s_scaled": round(theirs_scaled, 2), "ratio": round(theirs_scaled / ours_s, 1),
        "geoloc_peak_device_mb": ours_peak, "plonk_pipeline_peak_device_mb": theirs_peak,
        "max_abs_lat_lon_diff_deg": float(np.nanmax(np.abs(ours_degrees.numpy() - their_degrees.numpy()))),
        "max_abs_log_likelihood_diff": float((densities[:compared].cpu() - their_densities.cpu()).abs().max()),
    }))


if __name__ == "__main__":
    main()
