"""Image parameterizations: how the optimised tensor becomes an image in the model's input space."""

from vital.params.base import Parameterization
from vital.params.fourier import FourierParam
from vital.params.maco import MacoParam, load_magnitude, maco_magnitude_from_images
from vital.params.pixel import PixelParam

__all__ = ["FourierParam", "MacoParam", "Parameterization", "PixelParam", "load_magnitude",
           "maco_magnitude_from_images"]
