"""SAGAN building blocks, following the official TensorFlow code (brain-research/self-attention-gan).

Every weight layer is spectrally normalised (SNConv2d, SNLinear, SNEmbedding): the raw weight is
the parameter `weight`, and the power-iteration vectors are the buffers `weight_u`, `weight_v`.
The layers start with the official code's Xavier-uniform weights and zero biases; `initialize` then
applies the model config's init and bias_init (by default BigGAN-PyTorch's: orthogonal weights and
torch's uniform biases).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from tritonsagan.kernels import attention, init_spectral_norm_vectors, spectral_norm
from tritonsagan.kernels.spectral_norm import (
    autocast_dtype,
    power_iteration,
    power_iteration_grouped,
    spectral_norm_after_update,
)

from .config import (
    ATTENTION_QUERY_KEY_RATIO,
    ATTENTION_VALUE_RATIO,
    CLASS_BN_INIT,
    G_PADDING,
    NOISE_STRENGTH_GAIN,
    TuningConfig,
)


class SpectralNormMixin:
    """Spectral norm for a module with a `weight` parameter: u/v buffers and `normalized_weight()`.

    Listed before the torch layer in the bases, so its __init__ and reset_parameters come first.
    """

    weight: nn.Parameter

    def __init__(self, *args, n_power_iterations: int = 1, eps: float = 1e-12, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n_power_iterations = n_power_iterations
        self.sn_eps = eps
        u, v = init_spectral_norm_vectors(self.weight, eps)
        self.register_buffer("weight_u", u)
        self.register_buffer("weight_v", v)
        # sigma of the last grouped update (derived from weight, u, v, so not saved)
        self.register_buffer("weight_sigma", torch.ones((), dtype=torch.float32), persistent=False)
        self.sn_grouped = self.sn_autocast_dtype = False  # set by set_tuning
        self.sn_frozen = False  # set by frozen_spectral_norm

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        bias = getattr(self, "bias", None)
        if bias is not None:
            nn.init.zeros_(bias)

    def normalized_weight(self) -> torch.Tensor:
        out_dtype = autocast_dtype(self.weight.device.type) if self.sn_autocast_dtype else None
        if (
            self.sn_grouped and self.training
        ):  # the model's model_power_iteration_grouped ran at the start of its forward
            return spectral_norm_after_update(self.weight, self.weight_u, self.weight_v, self.weight_sigma, out_dtype)
        update = self.training and not self.sn_frozen
        return spectral_norm(
            self.weight, self.weight_u, self.weight_v, self.n_power_iterations, self.sn_eps, update, out_dtype
        )

    @torch.no_grad()
    def power_iteration(self, n_power_iterations: int = 1) -> None:
        """Power iterations on this layer's own weight, with no forward (e.g. after averaging weights)."""
        if self.weight.ndim > 1:
            power_iteration(self.weight.flatten(1), self.weight_u, self.weight_v, n_power_iterations, self.sn_eps)


def initialize(model: nn.Module, init: str, bias_init: str) -> None:
    """Every SN layer's weight as `init` says: "xavier" leaves the layers' own (reset_parameters);
    "orthogonal" draws each again, with its power-iteration vectors started again from the new weight.
    Biases as `bias_init` says: "zeros" leaves the layers' own; "uniform" draws torch's default."""
    layers = spectral_norm_layers(model)
    with torch.no_grad():
        if init == "orthogonal":
            for layer in layers:
                nn.init.orthogonal_(layer.weight)
                u, v = init_spectral_norm_vectors(layer.weight, layer.sn_eps)
                layer.weight_u.copy_(u)
                layer.weight_v.copy_(v)
        if bias_init == "uniform":  # after every weight, so that the weights drawn do not depend on bias_init
            for layer in layers:
                if getattr(layer, "bias", None) is not None:
                    bound = layer.weight[0].numel() ** -0.5  # 1 / sqrt(fan_in), as torch's Conv2d and Linear
                    nn.init.uniform_(layer.bias, -bound, bound)


def spectral_norm_layers(model: nn.Module) -> list[SpectralNormMixin]:
    return [module for module in model.modules() if isinstance(module, SpectralNormMixin)]


def model_power_iteration_grouped(model: nn.Module, n_power_iterations: int | None = None) -> None:
    """One grouped power-iteration update of every SN layer of `model` (u, v and sigma in place).
    n_power_iterations defaults to the layers' own (which must agree)."""
    layers = spectral_norm_layers(model)
    settings = {(layer.n_power_iterations, layer.sn_eps) for layer in layers}
    if len(settings) > 1:
        raise ValueError(f"grouped spectral norm: the layers' (n_power_iterations, eps) differ: {sorted(settings)}")
    if not layers:
        return
    ((own_iterations, eps),) = settings
    power_iteration_grouped(
        [layer.weight.flatten(1) for layer in layers],
        [layer.weight_u for layer in layers],
        [layer.weight_v for layer in layers],
        [layer.weight_sigma for layer in layers],
        n_power_iterations or own_iterations,
        eps,
    )


def model_power_iteration(model: nn.Module, n_power_iterations: int = 1) -> None:
    """`power_iteration` of every spectrally normalised layer of a G or D (one grouped update when
    its tuning groups them)."""
    if model.tuning.grouped_sn:
        with torch.no_grad():
            model_power_iteration_grouped(model, n_power_iterations)
        return
    for module in spectral_norm_layers(model):
        module.power_iteration(n_power_iterations)


def updates_spectral_norm(model: nn.Module) -> bool:
    """Whether a G or D's forward updates its layers' power-iteration vectors: in train mode, unless frozen."""
    return model.training and not getattr(model, "sn_frozen", False)


@contextlib.contextmanager
def frozen_spectral_norm(*models: nn.Module) -> Iterator[None]:
    """Inside this block the models' SN layers normalise by the vectors they hold, in train mode too
    (no power iteration): the later micro-batches of an accumulated step, whose first updated them."""
    modules = [m for model in models for m in (model, *spectral_norm_layers(model))]
    for module in modules:
        module.sn_frozen = True
    try:
        yield
    finally:
        for module in modules:
            module.sn_frozen = False


def set_tuning(model: nn.Module, tuning: TuningConfig) -> None:
    """Switch how a G or D computes (see TuningConfig); its weights and results stay the same."""
    model.tuning = tuning
    for module in model.modules():
        if isinstance(module, SpectralNormMixin):
            module.sn_grouped, module.sn_autocast_dtype = tuning.grouped_sn, tuning.sn_autocast_dtype
        elif isinstance(module, SelfAttention):
            module.fused_qkv = tuning.fused_qkv


class SNConv2d(SpectralNormMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class SNLinear(SpectralNormMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SNEmbedding(SpectralNormMixin, nn.Embedding):
    """Class embedding of the projection discriminator; W is [num_classes, dim] as in torch."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.embedding(y, self.normalized_weight())


class SelfAttention(nn.Module):
    """The official `sn_non_local_block_sim`: y = x + gamma * o.

    theta, phi: 1x1 SN convs C -> C/8; g: C -> C/2; phi and g are 2x2 max-pooled, so there are
    H*W queries and H*W/4 keys. attention = softmax(theta^T phi) (no 1/sqrt(d) scaling),
    o = SNConv1x1(C/2 -> C)(attention g). gamma starts at 0, so the block starts as the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % ATTENTION_QUERY_KEY_RATIO != 0:
            raise ValueError(
                f"SelfAttention: channels must be a multiple of {ATTENTION_QUERY_KEY_RATIO}, got {channels}"
            )
        self.channels = channels
        d_qk, d_v = channels // ATTENTION_QUERY_KEY_RATIO, channels // ATTENTION_VALUE_RATIO
        self.theta = SNConv2d(channels, d_qk, 1, bias=False)
        self.phi = SNConv2d(channels, d_qk, 1, bias=False)
        self.g = SNConv2d(channels, d_v, 1, bias=False)
        self.out = SNConv2d(d_v, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.fused_qkv = False  # set by set_tuning

    def _queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Conv outputs are (B, C', H*W); transposed views go into attention without copies.
        if not self.fused_qkv:
            queries = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
            keys = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)  # (B, N/4, C/8)
            values = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)  # (B, N/4, C/2)
            return queries, keys, values
        # One 1x1 convolution of the stacked weights, each still normalised by its own sigma.
        weight = torch.cat([self.theta.normalized_weight(), self.phi.normalized_weight(), self.g.normalized_weight()])
        d_qk, d_v = self.theta.out_channels, self.g.out_channels
        theta_x, phi_g_x = F.conv2d(x, weight).split([d_qk, d_qk + d_v], dim=1)
        keys, values = F.max_pool2d(phi_g_x, 2).flatten(2).transpose(1, 2).split([d_qk, d_v], dim=2)
        return theta_x.flatten(2).transpose(1, 2), keys, values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        queries, keys, values = self._queries_keys_values(x)
        attended = attention(queries, keys, values)  # (B, N, C/2)
        attended = attended.transpose(1, 2).reshape(batch, self.g.out_channels, height, width)
        return x + self.gamma * self.out(attended)


class ClassBatchNorm2d(nn.Module):
    """Conditional batch norm: per-class gamma/beta tables, gamma 1 and beta 0 at start (the official
    code's init "identity"), or 1 + e and e with e an orthogonal embedding (BigGAN-PyTorch's, "random").

    With num_classes = 0 it is a plain batch norm with one learned affine, and `y` is ignored.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int = 0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        init: str = CLASS_BN_INIT,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=num_classes == 0)
        if num_classes > 0:
            self.gamma = nn.Embedding(num_classes, num_features)
            self.beta = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)
            if init == "random":
                with torch.no_grad():
                    self.gamma.weight.add_(nn.init.orthogonal_(torch.empty_like(self.gamma.weight)))
                    nn.init.orthogonal_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.bn(x)
        if self.num_classes == 0:
            return x
        return x * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]


class NoiseInput(nn.Module):
    """x + s * n: n a fresh standard normal map per image, shared by the channels, s a learned
    strength per channel that starts at 0 (StyleGAN's noise inputs, Karras et al. 2019; not in SAGAN).
    Without them every pixel is a function of G's 4x4 input, and textures that real crops hold at
    random places (stars, gravel) can come out at the same places in every image.

    s is stored divided by NOISE_STRENGTH_GAIN (the parameter `scaled_strength`): Adam moves a
    parameter by about the learning rate per step whatever its gradient's size, so at G's 1e-4 alone
    a strength from 0 grows slowly next to StyleGAN's, whose G learns at about 2e-3.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scaled_strength = nn.Parameter(torch.zeros(channels))

    @property
    def strength(self) -> torch.Tensor:
        return NOISE_STRENGTH_GAIN * self.scaled_strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        # torch's global RNG: seeding.noise_inputs_seeded makes it a stream of its own where it matters
        noise = torch.randn(batch, 1, height, width, device=x.device, dtype=x.dtype)
        return x + self.strength.view(1, -1, 1, 1) * noise


class GBlock(nn.Module):
    """Generator up-block: cBN, ReLU, 2x nearest upsample, conv3x3, cBN, ReLU, conv3x3; shortcut up + conv1x1.
    With noise inputs, noise after each conv3x3; the conv3x3s pad with `padding` (torch's padding_mode)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int = 0,
        class_bn_init: str = CLASS_BN_INIT,
        noise_inputs: bool = False,
        padding: str = G_PADDING,
    ) -> None:
        super().__init__()
        self.bn1 = ClassBatchNorm2d(in_channels, num_classes, init=class_bn_init)
        self.conv1 = SNConv2d(in_channels, out_channels, 3, padding=1, padding_mode=padding)
        self.bn2 = ClassBatchNorm2d(out_channels, num_classes, init=class_bn_init)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, padding=1, padding_mode=padding)
        self.shortcut = SNConv2d(in_channels, out_channels, 1)
        self.noise1, self.noise2 = (
            (NoiseInput(out_channels), NoiseInput(out_channels)) if noise_inputs else (nn.Identity(), nn.Identity())
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.noise2(self.conv2(F.relu(self.bn2(self.noise1(self.conv1(h)), y))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """Discriminator down-block: ReLU, conv3x3, ReLU, conv3x3, 2x2 avg-pool; shortcut conv1x1 then pool.

    The "optimized" first block has no leading ReLU and its shortcut pools before the conv.
    Without downsampling and with equal widths (the last block) the shortcut is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True, optimized: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.optimized = optimized
        self.conv1 = SNConv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, padding=1)
        needs_shortcut_conv = optimized or downsample or in_channels != out_channels
        self.shortcut = SNConv2d(in_channels, out_channels, 1) if needs_shortcut_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.optimized else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.optimized:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        skip = x
        if self.shortcut is not None:
            skip = self.shortcut(skip)
            if self.downsample:
                skip = F.avg_pool2d(skip, 2)
        return h + skip
