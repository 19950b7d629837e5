"""Defenses: the feature-loss denoiser (more to come: AFD)."""
from .denoiser import Defended, DenoiserObjective, FeatureLoss, UNetDenoiser

__all__ = ["Defended", "DenoiserObjective", "FeatureLoss", "UNetDenoiser"]
