"""``mimir-fast demo``: the whole pipeline on the embedded digits, compared under one fine-tuning budget.

Three rows, each fine-tuned with the same recipe (``FINETUNE_RECIPE`` over the ``digits`` fine-tuning preset)
and evaluated on the same examples:

1. MIMIR pretraining (``PRETRAIN_RECIPE`` over the ``digits`` pretraining preset), then adversarial fine-tuning;
2. plain MAE pretraining (the same, ``--method mae``), then adversarial fine-tuning;
3. adversarial training from scratch, with ``SCRATCH_RECIPE`` on top: layer-wise lr decay 1.0 instead of the
   recipe's, since layer decay is MAE's device for pretrained trunks and with it a scratch model's lower
   blocks barely train.

Evaluation: clean and PGD-20 (ε = 8/255), plus the PGD-20 curve points of ``eps_curve`` that feed the integrity
checks, on the first ``n_ex`` validation images (all 297 by default); AutoAttack (standard) on a fixed subset,
the first ``aa_n_ex`` of them (100 by default). The checks of both evaluations are merged; ``autoattack_le_pgd``
compares AutoAttack with PGD-20 on the same subset. ``docs/demo.md`` says how the recipe was chosen.

``--seeds N`` runs every row with seeds 0..N-1 (pretraining, fine-tuning and evaluation) and reports each
metric's mean and sample standard deviation, with a bar chart (``results.png``).

``--purifiers`` (``make demo-purifiers``) adds the two test-time purifiers on the same digits, examples and ε,
with their own recipes (the ``digits`` presets):

4. NIM pretraining (``--method nim``), a classifier fine-tuned from the NIM encoder on De^3 reconstructions
   (``finetune --method de3``, σ ~ U(0, 30)), evaluated through De^3 at γ = ``gamma``; then a γ sweep
   (``gamma_sweep``: clean and robust accuracy against γ, ``gamma_sweep/gamma_curve.{json,png}``);
5. MAEP (stage 1 ``--method maep`` and stage 2, the decoder's LoRA fine-tune at mask ratio 0) in front of a
   standard classifier (``finetune --method clean`` from an MAE encoder pretrained with the ``digits`` preset, as
   MAEP is: MAEP defends a non-robust model).

Every row is attacked with full gradients through whatever it is (PGD-20, and AutoAttack: ``rand`` with EOT-20
for the randomised De^3, standard otherwise); the purifier rows also get the gray-box PGD-20 (attack on the
classifier alone; non-adaptive, weaker), and report the purifier's own inference cost per image.

Every argument and every run's config is checked before the first pretraining; every run starts fresh (no
auto-resume). The table is printed and written to ``results.md``; ``results.json`` holds per row the accuracies,
the number of images per attack, the wall and CPU times and the checks.
"""

from .config import DemoConfig
from .run import run_demo

__all__ = ["DemoConfig", "run_demo"]
