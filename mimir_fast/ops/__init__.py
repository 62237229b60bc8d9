"""Public ops, usable on their own. Each runs its plain-PyTorch reference on any device and dtype.

- ``hsic_normalized_cca(x, y, sigma=5.0, ridge=1e-5)``: MIMIR's HSIC penalty; x (m, ...), y (m, ...) -> scalar.
- ``gaussian_kernel_centered(a, sigma)``: the right-centered Gaussian kernel matrix; a (m, d) -> (m, m).
"""

from .hsic import gaussian_kernel_centered, hsic_normalized_cca

__all__ = ["gaussian_kernel_centered", "hsic_normalized_cca"]
