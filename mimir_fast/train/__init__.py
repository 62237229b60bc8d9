"""The training machinery every method shares: configs and presets, the method interface, the run driver and
epoch loop, checkpoints (per epoch and mid-epoch), data-parallel wrapping, compilation, logging and figures."""
