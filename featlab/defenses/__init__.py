"""Defenses, as modules and losses: the feature-loss denoiser's architectures and its feature loss,
AFD's discriminator and game losses (and the post-hoc separability probe), and the controls
(bit-depth reduction, binarisation with ``Quantize(1)``, a median filter): preprocessing without
learning, what an oblivious number must beat, and gradient-masking examples for the checklist.

Training them is a Trainer objective (:class:`featlab.train.AFD`, :class:`featlab.train.DenoiserObjective`);
a denoiser in front of a classifier is :class:`featlab.models.Defended`."""
from .denoiser import DENOISERS, BottleneckDenoiser, FeatureLoss, ResidualDenoiser, UNetDenoiser, create_denoiser
from .discriminator import ProjectionDiscriminator, afd_losses, embedding_separability
from .squeeze import CONTROLS, MedianFilter, Quantize, create_control

__all__ = ["BottleneckDenoiser", "CONTROLS", "DENOISERS", "FeatureLoss", "MedianFilter", "ProjectionDiscriminator",
           "Quantize", "ResidualDenoiser", "UNetDenoiser", "afd_losses", "create_control", "create_denoiser",
           "embedding_separability"]
