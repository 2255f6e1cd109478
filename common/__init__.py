"""Reusable parts of the experiment scripts: models, data, the training loop, statistics and figures."""
