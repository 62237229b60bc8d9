"""Attacks: ``pgd_mae`` (pretraining), and ``pgd``, ``trades_attack``, ``pgd_mi`` on classifiers."""

from .classify import pgd, pgd_mi, trades_attack
from .pgd_mae import pgd_mae

__all__ = ["pgd", "pgd_mae", "pgd_mi", "trades_attack"]
