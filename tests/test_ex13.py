"""ex3: the class-mean and interpolation pictures."""
from __future__ import annotations

import torch

import ex3_classifier_decoding as ex3
from common.data import TensorData
from common.models import AutoEncoder


def test_latent_pictures_decode_class_means_and_straight_lines():
    torch.manual_seed(0)
    model = AutoEncoder(channels=(4, 8)).eval()
    y = torch.arange(20) % 10
    z = torch.randn(20, 12)                                                    # (N, d) test codes
    test = TensorData(torch.rand(20, 1, 28, 28), y)
    means, lines = ex3.latent_pictures({"ae": model}, {"ae": (z, z)}, test, torch.device("cpu"))
    with torch.no_grad():
        want_means = model.decoder(torch.stack([z[y == c].mean(0) for c in range(10)]))
        a, b = ex3.INTERPOLATE[0]
        want_ends = model.decoder(torch.stack([z[a], z[b]]))                  # first test image of digit a, b
        midpoint = model.decoder(((z[a] + z[b]) / 2)[None])
    assert torch.allclose(means[ex3.ENCODERS["ae"]], want_means, atol=1e-6)
    line = lines[f"AE {a}→{b}"]
    assert line.shape == (ex3.INTERP_STEPS, 1, 28, 28) and len(lines) == len(ex3.INTERPOLATE)
    assert torch.allclose(line[[0, -1]], want_ends, atol=1e-6)
    if ex3.INTERP_STEPS % 2:
        assert torch.allclose(line[ex3.INTERP_STEPS // 2], midpoint[0], atol=1e-6)
    assert not torch.allclose(line[1], line[0])  # the line moves
