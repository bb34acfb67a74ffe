"""CoMatch (Li, Xiong, Hoi 2021).

Default: a CPU-sized run on the real Fashion-MNIST (offline, Debian's dataset-fashion-mnist)
with 40 labels and a small CNN:

  python -m comatch_jax.main --config=configs/comatch.py --workdir=/tmp/run

Presets with the published settings (for a GPU), e.g.

  python -m comatch_jax.main --config=configs/comatch.py:cifar10_40 --workdir=/tmp/c10_40

cifar10_{40,250,4000}: WRN-28-2, B=64, mu=7, 2^19 steps; the paper reports 93.09 / 95.09 /
95.44 % accuracy. cifar100_{400,2500,10000}: WRN-28-8. stl10: ResNet-18 at 96 px.
competition96: ResNet-50, 96 px, 800 classes from an image folder (the user's paper);
competition96_7p5: the same with 7.5 % labels (tau 0.52, T 0.22, lambda_ctr 3; Table 1).
Result of the default (3 seeds, experiments/RESULTS.md, "Fidelity"): 65.9 +- 6.6 %
test accuracy (EMA model) against 57.7 +- 4.7 % for configs/supervised.py with the same
labels and steps (+8.2 points on average; code at commit 11842a7, see
RESULTS.md); about 8 minutes on 2 idle CPU cores (0.16 s per step in the loop). With
--config.num_steps=10000 (about half an hour on 2 idle cores; before the official-recipe
defaults), 3 seeds: 69.0 +- 7.0 % vs
58.9 +- 5.1 % for supervised-only (+10.2 points on average; +9.2 / +12.8 / +8.6 per seed).
"""

from comatch_jax import config_lib


def get_config(preset: str = ""):
    config = config_lib.base_config()
    config.method = "comatch"
    return config_lib.apply_preset(config, preset)
