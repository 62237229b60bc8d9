"""mimir_fast: fast, trustworthy MIMIR pretraining for adversarially robust Vision Transformers.

Modules (imported on demand; importing the package does no work):

- ``mimir_fast.models_mae``: a drop-in for facebookresearch/mae ``models_mae`` (plus MIMIR's factories);
- ``mimir_fast.ops``: ``hsic_normalized_cca`` and friends;
- ``mimir_fast.attacks``: ``pgd_mae``, the pretraining attack;
- ``mimir_fast.train``: config, presets, trainer, checkpoints;
- ``mimir_fast.data``: embedded digits, image folders, synthetic batches;
- ``mimir_fast.cli``: the ``mimir-fast`` command.
"""

__version__ = "0.1.0"
