"""Defenses: the feature-loss denoiser and Adversarial Feature Desensitization (AFD)."""
from .afd import AFD, ProjectionDiscriminator
from .denoiser import Defended, DenoiserObjective, FeatureLoss, UNetDenoiser

__all__ = ["AFD", "ProjectionDiscriminator", "Defended", "DenoiserObjective", "FeatureLoss", "UNetDenoiser"]
