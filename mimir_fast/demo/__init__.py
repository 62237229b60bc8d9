"""``mimir-fast demo``: MIMIR pretraining, MAE pretraining and no pretraining, each adversarially fine-tuned with
one recipe on the embedded digits and evaluated alike (clean and PGD-20 on all 297 validation images, AutoAttack
on the first 100, the integrity checks); ``--seeds N`` adds mean ± std, ``--purifiers`` the NIM/De^3 and MAEP
rows. Writes results.md, results.json and results.png. docs/demo.md describes the rows, the recipe and its search.
"""

from .config import DemoConfig
from .run import run_demo

__all__ = ["DemoConfig", "run_demo"]
