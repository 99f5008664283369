"""FID, KID, Inception Score, precision, recall, density and coverage from feature vectors, in float64
torch (no scipy at run time).

FID  = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1^1/2 S2 S1^1/2)   (Heusel et al. 2017)
KID  = unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets
       (Binkowski et al. 2018)
IS   = exp E_x KL(p(y|x) || p(y)), averaged over splits (Salimans et al. 2016)
Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020) compare
the sets through k-nearest-neighbour balls: B(x, r_k(x)), r_k(x) the distance from x to its k-th
nearest neighbour in its own set (itself not counted). With real x_i (N of them) and fake y_j (M):
  precision = share of y_j inside some real ball      recall   = share of x_i inside some fake ball
  density   = sum_j #{i: y_j in B(x_i)} / (k M)       coverage = share of x_i whose ball holds some y_j

tr sqrt(S1 S2), the term of the usual formula, equals tr sqrt(S1^1/2 S2 S1^1/2): the two matrices are
similar. The second one is symmetric positive semi-definite, so two `eigh` calls give it exactly,
also for rank-deficient covariances where scipy.linalg.sqrtm returns complex noise.
"""

from __future__ import annotations

import torch


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (ddof 1, as numpy.cov) of (n, d) features, in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature statistics need an (n >= 2, d) matrix, got shape {tuple(features.shape)}")
    x = features.to(torch.float64)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """The Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2)."""
    d = mu1.shape[-1]
    for name, t, shape in (
        ("mu1", mu1, (d,)),
        ("mu2", mu2, (d,)),
        ("sigma1", sigma1, (d, d)),
        ("sigma2", sigma2, (d, d)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"frechet_distance: {name} has shape {tuple(t.shape)}, expected {shape} (feature dim {d})")
    mu1, mu2, sigma1, sigma2 = (t.detach().to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d, m = x.shape[1], x.shape[0]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    off_diagonal = m * (m - 1)
    return (k_xx.sum() - k_xx.trace()) / off_diagonal + (k_yy.sum() - k_yy.trace()) / off_diagonal - 2 * k_xy.mean()


def kernel_inception_distance(
    real: torch.Tensor, fake: torch.Tensor, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation over `num_subsets` random subsets of min(subset_size, n) each."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"KID needs two (n, d) feature matrices of the same d, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {real.shape[0]} real and {fake.shape[0]} fake")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be positive, got {num_subsets}")
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [
            _mmd2_unbiased(
                real[torch.randperm(real.shape[0], generator=gen)[:m]],
                fake[torch.randperm(fake.shape[0], generator=gen)[:m]],
            )
            for _ in range(num_subsets)
        ]
    )
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score from (n, classes) logits: mean and standard deviation over `splits` chunks."""
    if logits.ndim != 2 or logits.shape[0] < splits:
        raise ValueError(
            f"inception_score needs (n >= splits={splits}, classes) logits, got shape {tuple(logits.shape)}"
        )
    log_p = torch.log_softmax(logits.to(torch.float64), dim=1)
    scores = []
    for chunk in log_p.tensor_split(splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - torch.log(
            torch.tensor(float(chunk.shape[0]), dtype=torch.float64)
        )
        scores.append(torch.exp((chunk.exp() * (chunk - log_marginal)).sum(1).mean()))
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(unbiased=False))


MANIFOLD_K = 5  # the k of precision, recall, density and coverage, as StudioGAN and the prdc package use
DISTANCE_ROWS = 1024  # rows of a distance matrix held at once: 1024 x 50,000 float64 is 400 MB


def _row_blocks(x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    return [(start, x[start : start + DISTANCE_ROWS]) for start in range(0, x.shape[0], DISTANCE_ROWS)]


def nearest_neighbour_radii(features: torch.Tensor, k: int = MANIFOLD_K) -> torch.Tensor:
    """The distance from each row to its k-th nearest other row (float64)."""
    x = features.to(torch.float64)
    if x.shape[0] <= k:
        raise ValueError(f"k-nearest-neighbour radii need more than k={k} feature vectors, got {x.shape[0]}")
    # The (k+1)-th smallest distance of a row: the smallest is the row's distance to itself.
    return torch.cat([torch.cdist(block, x).kthvalue(k + 1, dim=1).values for _, block in _row_blocks(x)])


def manifold_metrics(real: torch.Tensor, fake: torch.Tensor, k: int = MANIFOLD_K) -> dict[str, float]:
    """Precision, recall, density and coverage of fake features against real ones (see the module doc)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"precision and recall need two (n, d) feature matrices of the same d, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    real_radii, fake_radii = nearest_neighbour_radii(real, k), nearest_neighbour_radii(fake, k)
    fake_in_real_balls = torch.zeros(fake.shape[0], dtype=torch.long)  # per fake: how many real balls hold it
    real_in_fake_ball = torch.zeros(real.shape[0], dtype=torch.bool)
    nearest_fake = torch.full((real.shape[0],), torch.inf, dtype=torch.float64)  # per real: its nearest fake
    for start, block in _row_blocks(fake):
        distances = torch.cdist(block, real)  # (fake rows, real)
        fake_in_real_balls[start : start + block.shape[0]] = (distances <= real_radii).sum(1)
        real_in_fake_ball |= (distances <= fake_radii[start : start + block.shape[0], None]).any(0)
        nearest_fake = torch.minimum(nearest_fake, distances.min(0).values)
    return {
        "precision": float((fake_in_real_balls > 0).double().mean()),
        "recall": float(real_in_fake_ball.double().mean()),
        "density": float(fake_in_real_balls.double().sum() / (k * fake.shape[0])),
        "coverage": float((nearest_fake <= real_radii).double().mean()),
    }
