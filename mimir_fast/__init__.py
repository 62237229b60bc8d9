"""mimir_fast: fast, trustworthy MIMIR pretraining for adversarially robust Vision Transformers.

Modules (imported on demand; importing the package does no work):

- ``mimir_fast.models_mae``: a drop-in for facebookresearch/mae ``models_mae`` (plus MIMIR's factories);
- ``mimir_fast.accelerate(model)``: run a facebookresearch/mae or MIMIR autoencoder on the fused ops
  (``mimir_fast.accelerated``);
- ``mimir_fast.ops``: the fused ops (patch gather, decoder unshuffle, loss, attention, HSIC Gram) with their
  references, and ``hsic_normalized_cca``;
- ``mimir_fast.attacks``: ``pgd_mae``, the pretraining attack;
- ``mimir_fast.train``: config, presets, trainer, checkpoints;
- ``mimir_fast.data``: embedded digits, image folders, synthetic batches;
- ``mimir_fast.cli``: the ``mimir-fast`` command.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "accelerate":  # imported on first use, so that importing the package stays free
        from .accelerated import accelerate

        return accelerate
    raise AttributeError(f"module 'mimir_fast' has no attribute {name!r}")
