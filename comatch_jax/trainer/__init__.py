"""The training loop around the core: train_and_evaluate, the saved run (workdir,
checkpoints), metrics, stopping on a signal, pretrained weights."""
