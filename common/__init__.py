"""Small shared library for the experiment scripts.

Modules (flat on purpose, one concern each):
    utils   - paths, seeding, device/threads, CLI helpers, atomic JSON
    data    - MNIST as in-memory tensors, index batching, the first-n subset
    models  - Encoder / Decoder / MLP and their composites, lab baselines
    train   - the one training/evaluation loop every script uses, checkpoints
    plots   - matplotlib figures (curves, image grids)
"""
