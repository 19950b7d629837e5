"""Defenses: the feature-loss denoiser, Adversarial Feature Desensitization (AFD), and the controls
(bit-depth reduction, binarisation with ``Quantize(1)``, a median filter): preprocessing without
learning, what an oblivious number must beat, and gradient-masking examples for the checklist."""
from .afd import AFD, AFDGameWarning, ProjectionDiscriminator, embedding_separability
from .denoiser import Defended, DenoiserObjective, FeatureLoss, UNetDenoiser
from .squeeze import MedianFilter, Quantize

__all__ = ["AFD", "AFDGameWarning", "embedding_separability", "ProjectionDiscriminator", "Defended", "DenoiserObjective", "FeatureLoss", "UNetDenoiser", "Quantize", "MedianFilter"]
