"""The one training/evaluation loop, task-agnostic: devices, precision, accumulation, checkpoints and resume."""
