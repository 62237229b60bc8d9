"""Test-time purifiers on the masked-autoencoder core, and the defended model attacks see.

- ``noise``: Gaussian pixel noise with a per-image σ (NIM's corruption, De^3's test-time noise);
- ``de3``: the De^3 defence (noise of scale γ, NIM reconstruction, de-normalisation, clamp);
- ``maep``: the MAEP purifier (one unmasked reconstruction), its checkpoint loader and LoRA layout;
- ``lora``: low-rank adapters for ``nn.Linear``;
- ``defended``: ``PurifiedClassifier`` (purifier then classifier, differentiable end to end) and ``BPDA``.
"""
