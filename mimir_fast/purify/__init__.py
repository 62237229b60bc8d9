"""Test-time purifiers on the masked-autoencoder core.

- ``nim``: NIM pretraining (noise instead of masks) and its reconstruction figure;
- ``de3``: the De^3 defence (noise of scale γ, NIM reconstruction, de-normalisation, clamp);
- ``de3_finetune``: the classifier's inputs when it is fine-tuned on De^3 reconstructions (σ ~ U(0, 30));
- ``defended``: ``PurifiedClassifier`` (purifier then classifier, differentiable end to end) and ``BPDA``;
- ``maep``: MAEP's purification losses, LoRA decoder fine-tune and ``MAEPPurifier``;
- ``lora``: low-rank adapters for ``nn.Linear`` (used by MAEP's decoder fine-tune).
"""
