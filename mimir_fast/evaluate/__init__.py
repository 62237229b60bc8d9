"""Robustness evaluation: clean, PGD-20/100, AutoAttack (fra31 semantics), PGD-MI, with integrity checks."""
