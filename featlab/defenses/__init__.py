"""Defenses: the feature-loss denoiser, Adversarial Feature Desensitization (AFD), and bit-depth
reduction (a gradient-masking example for the evaluation checklist)."""
from .afd import AFD, AFDGameWarning, ProjectionDiscriminator, embedding_separability
from .denoiser import Defended, DenoiserObjective, FeatureLoss, UNetDenoiser
from .squeeze import Quantize

__all__ = ["AFD", "AFDGameWarning", "embedding_separability", "ProjectionDiscriminator", "Defended", "DenoiserObjective", "FeatureLoss", "UNetDenoiser", "Quantize"]
