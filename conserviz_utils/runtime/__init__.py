"""What the loop needs to run anywhere: device and precision, checkpoints, exact resume, Ctrl-C, torchrun."""
