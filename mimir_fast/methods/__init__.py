"""The training methods, one module each, registered by task and ``--method`` name.

Pretraining: ``mimir`` (the default), ``mae``, ``nim``, ``maep``. Fine-tuning: ``pgd`` (the default), ``trades``,
``clean``, ``de3``. Each module owns its name, its options (a dataclass of its own flags), its defaults for
shared fields, its loss and log keys. Adding a method means adding a module and importing it here.
"""

from . import clean, de3, mae, maep, mimir, nim, pgd, trades  # noqa: F401  (each registers its method)
from .build import build_config, build_finetune_config, config_from_args, create_method, run_finetune, run_pretrain
from .registry import method_class, method_classes

__all__ = [
    "build_config", "build_finetune_config", "config_from_args", "create_method", "method_class", "method_classes",
    "run_finetune", "run_pretrain",
]
