"""Small shared library for the experiment scripts.

Modules (flat on purpose, one concern each):
    utils   - paths, seeding, device selection, CLI helpers and validators, atomic writes, the entry point
    data    - MNIST as checked in-memory tensors, index batching, the first-n subset; the labs' photos:
              image decoding, uint8 -> float (to_float), Imagenette's folder and classes
    models  - Encoder / Decoder / MLP and their composites, lab baselines, the ex1 autoencoder and ex2
              classifier recipes
    train   - the one training loop (train_epoch: a batch sampler + a loss callable; fit drives it),
              evaluation, batched inference (predict), checkpoints with recipes, seeds, TensorBoard logging
    stats   - mean / std / confidence intervals over seeds, paired tests and verdicts (scipy.stats)
    fewshot - the few-label setting of ex4 and ex5: data, recipe, seeds, semi-supervised self-training
    plots   - matplotlib figures (curves, image grids)
    bench   - `python -m common.bench`: training speed of our data path vs a DataLoader baseline

Lab code (one module per lab script, holding its models, data, metrics and figures):
    dbvae   - lab_dbvae.py: the DB-VAE and the standard face detector (MIT 6.S191 Lab 2); the lab's data
              split, batch sampler and loss callables, metrics, paired seed comparison, results, figures
    cam     - lab_cam.py: the GAP + linear CNN, class activation maps and Grad-CAM (LAB01 2.3); the lab's
              evaluation, example picks, CAM vs Grad-CAM comparison, results dict and figures
"""
