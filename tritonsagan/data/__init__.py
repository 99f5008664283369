"""Training data: image folders (folder), the built-in photos (builtin), packed datasets (packed_reader,
written by packed_writer, tritonsagan-prepare), and the loader that picks one and batches it (loader),
all keeping the ImageStream contract (stream). The names most code needs are here."""

from .decode import ImageLimits
from .loader import check_enough_images, make_dataset, make_loader
from .stream import DataError, ImageStream

__all__ = ["DataError", "ImageLimits", "ImageStream", "check_enough_images", "make_dataset", "make_loader"]
