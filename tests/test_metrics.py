"""FID, KID and IS math against scipy and direct float64 formulas."""

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from tritonsagan.metrics import feature_statistics, frechet_distance, inception_score, kernel_inception_distance


def _random_stats(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of n samples of a correlated d-dim Gaussian: rank min(n - 1, d)."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
    samples = torch.randn(n, d, generator=gen, dtype=torch.float64) @ mixing + torch.randn(
        d, generator=gen, dtype=torch.float64
    )
    return feature_statistics(samples)


def _fid_scipy(mu1, s1, mu2, s2) -> float:
    """The formula of the TTUR / pytorch-fid code: tr sqrtm(S1 S2), real part."""
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    return float(
        np.sum((mu1.numpy() - mu2.numpy()) ** 2)
        + np.trace(s1.numpy())
        + np.trace(s2.numpy())
        - 2 * np.trace(covmean).real
    )


@pytest.mark.parametrize("d", [7, 64, 200])
def test_frechet_distance_matches_scipy_sqrtm(d):
    mu1, s1 = _random_stats(4 * d, d, seed=d)
    mu2, s2 = _random_stats(4 * d, d, seed=d + 1)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _fid_scipy(mu1, s1, mu2, s2)
    assert abs(ours - ref) / abs(ref) < 1e-9, (ours, ref)


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 48), (10, 200, 64)])
def test_frechet_distance_rank_deficient(n1, n2, d):
    mu1, s1 = _random_stats(n1, d, seed=n1)
    mu2, s2 = _random_stats(n2, d, seed=n2)
    assert torch.linalg.matrix_rank(s1) < d
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _fid_scipy(mu1, s1, mu2, s2)
    assert abs(ours - ref) / abs(ref) < 1e-6, (ours, ref)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_it_is_symmetric():
    mu1, s1 = _random_stats(50, 40, seed=1)  # rank deficient too
    mu2, s2 = _random_stats(300, 40, seed=2)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * float(s1.trace())
    assert abs(frechet_distance(mu1, s1, mu2, s2) - frechet_distance(mu2, s2, mu1, s1)) < 1e-9 * float(
        s1.trace() + s2.trace()
    )


def test_frechet_distance_shape_errors():
    mu, s = _random_stats(30, 8, seed=0)
    with pytest.raises(ValueError, match=r"sigma2 has shape \(7, 7\)"):
        frechet_distance(mu, s, mu, s[:7, :7])


def test_feature_statistics_match_numpy():
    x = torch.randn(40, 6, dtype=torch.float64)
    mu, sigma = feature_statistics(x.float())
    assert torch.allclose(mu, x.mean(0), atol=1e-6)
    assert np.allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False), atol=1e-6)


def _mmd2_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed pair by pair."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_matches_the_direct_formula():
    real, fake = torch.randn(15, 5, dtype=torch.float64), torch.randn(15, 5, dtype=torch.float64) + 0.3
    kid, std = kernel_inception_distance(real, fake, num_subsets=3, subset_size=15)  # subsets = the whole sets
    ref = _mmd2_direct(real.numpy(), fake.numpy())
    assert abs(kid - ref) / abs(ref) < 1e-12 and std < 1e-12 * abs(ref)


def test_kid_subsets_are_seeded_and_mean_of_subset_values():
    real, fake = torch.randn(40, 4), torch.randn(50, 4) * 1.5
    a = kernel_inception_distance(real, fake, num_subsets=5, subset_size=10, seed=3)
    assert a == kernel_inception_distance(real, fake, num_subsets=5, subset_size=10, seed=3)
    assert a != kernel_inception_distance(real, fake, num_subsets=5, subset_size=10, seed=4)
    assert a[1] > 0
    with pytest.raises(ValueError, match="same d"):
        kernel_inception_distance(real, fake[:, :3])


def test_inception_score_direct():
    logits = torch.randn(30, 6, dtype=torch.float64) * 3
    score, _ = inception_score(logits, splits=3)
    expected = []
    for chunk in np.split(torch.softmax(logits, 1).numpy(), 3):
        marginal = chunk.mean(0)
        expected.append(np.exp(np.mean(np.sum(chunk * (np.log(chunk) - np.log(marginal)), 1))))
    assert abs(score - np.mean(expected)) / np.mean(expected) < 1e-12
    uniform, _ = inception_score(torch.zeros(20, 5), splits=2)
    assert abs(uniform - 1) < 1e-12
    confident, _ = inception_score(torch.eye(5).repeat(4, 1) * 100, splits=2)
    assert abs(confident - 5) < 1e-6
