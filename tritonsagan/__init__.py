"""tritonsagan: Self-Attention GANs (SAGAN; 128x128 by default, 32 to 256) with Triton attention and spectral-norm kernels."""

from tritonsagan.models import Discriminator, Generator

from .generate import generate
from .run_directory import load_generator
from .weights_io import WeightsError

__version__ = "0.1.0"
__all__ = ["Discriminator", "Generator", "WeightsError", "__version__", "generate", "load_generator"]
