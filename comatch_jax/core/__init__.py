"""The accelerator's work: models, augmentations, losses, methods, the train state and the
pure jitted step, evaluation and inference. Imports neither TensorFlow nor clu's writers."""
