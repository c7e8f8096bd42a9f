"""PCA round trip, normalisation range and the cosine-to-text shortcut."""

import pytest
import torch

from distillnerf_core.teachers.pca import FeaturePCA


def _low_rank(n=2000, d=40, rank=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g) + torch.randn(d, generator=g)


def test_round_trip_exact_on_rank_k_data():
    x = _low_rank()
    pca, explained = FeaturePCA.fit(x, 8)
    y = pca.project(x)
    assert y.shape == (2000, 8)
    assert float(y.min()) == pytest.approx(0.0, abs=1e-5) and float(y.max()) == pytest.approx(1.0, abs=1e-5)
    err = (pca.reconstruct(y) - x).abs().max()
    assert err < 1e-3, f"rank-6 data must survive a 8-d PCA, max error {err}"
    assert float(explained.sum()) == pytest.approx(1.0, abs=1e-5)


def test_round_trip_drops_only_small_components():
    g = torch.Generator().manual_seed(1)
    x = _low_rank(rank=4) + 0.01 * torch.randn(2000, 40, generator=g)
    pca, explained = FeaturePCA.fit(x, 4)
    recon = pca.reconstruct(pca.project(x))
    assert float((recon - x).pow(2).mean()) < 2e-4
    assert 0.99 < float(explained.sum()) < 1.0


def test_channel_dim_and_state_dict_round_trip():
    x = _low_rank(d=16)
    pca, _ = FeaturePCA.fit(x, 5)
    images = x[:60].T.reshape(1, 16, 6, 10)  # (B, D, h, w)
    y = pca.project(images, channel_dim=1)
    assert y.shape == (1, 5, 6, 10)
    torch.testing.assert_close(y[0, :, 0, 0], pca.project(x[0]))
    copy = FeaturePCA(16, 5)
    copy.load_state_dict(pca.state_dict())
    torch.testing.assert_close(copy.reconstruct(y, channel_dim=1), pca.reconstruct(y, channel_dim=1))


def test_cosine_to_text_matches_explicit_reconstruction():
    x = _low_rank(d=24, rank=10)
    pca, _ = FeaturePCA.fit(x, 6)
    y = pca.project(x[:50])
    text = torch.randn(3, 24)
    explicit = torch.nn.functional.cosine_similarity(pca.reconstruct(y)[:, None], text[None], dim=-1)
    torch.testing.assert_close(pca.cosine_to_text(y, text), explicit, atol=1e-4, rtol=1e-4)


def test_more_dims_than_teacher_is_an_error():
    with pytest.raises(ValueError, match="at least that many channels"):
        FeaturePCA.fit(torch.randn(100, 4), 8)
