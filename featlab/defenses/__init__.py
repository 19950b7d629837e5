"""Defenses: the feature-loss denoiser, Adversarial Feature Desensitization (AFD), and the controls
(bit-depth reduction, binarisation with ``Quantize(1)``, a median filter): preprocessing without
learning, what an oblivious number must beat, and gradient-masking examples for the checklist."""
from .afd import AFD, AFDGameWarning, ProjectionDiscriminator, embedding_separability
from .denoiser import (DENOISERS, BottleneckDenoiser, Defended, DenoiserObjective, FeatureLoss, ResidualDenoiser,
                       UNetDenoiser, create_denoiser)
from .squeeze import CONTROLS, MedianFilter, Quantize, create_control

__all__ = ["AFD", "AFDGameWarning", "embedding_separability", "ProjectionDiscriminator", "Defended", "DenoiserObjective", "FeatureLoss", "UNetDenoiser", "ResidualDenoiser", "BottleneckDenoiser", "DENOISERS", "create_denoiser", "Quantize", "MedianFilter", "CONTROLS", "create_control"]
