"""Attacks used in training. ``pgd_mae``: L∞ PGD on a masked autoencoder's self-reconstruction loss."""

from .pgd_mae import pgd_mae

__all__ = ["pgd_mae"]
