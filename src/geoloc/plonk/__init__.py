"""PLONK ("Around the World in 80 Timesteps", CVPR 2025): a generative geolocator.

It turns random points into samples of where a photo was taken, conditioned on a frozen
image embedding, and gives an exact log-likelihood for any coordinate. `network` holds the
denoiser and its noise schedule, `sampling` the samplers and the likelihood, `model` the
checkpoints (hub id or folder, the files `diff-plonk` writes), `candidates` the modes of a
photo's samples and its confidence region.
"""
