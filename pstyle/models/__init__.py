"""Networks: style encoder, generator, discriminator, segmenter and loss feature extractors."""

from pstyle.models.discriminator import Discriminator
from pstyle.models.encoder import StyleEncoder
from pstyle.models.features import FeatureExtractor
from pstyle.models.generator import Generator
from pstyle.models.segmenter import Segmenter

__all__ = ["Discriminator", "FeatureExtractor", "Generator", "Segmenter", "StyleEncoder"]
