"""ssl4gie entry point: ``python run.py task=segmentation backbone=vit_b pretraining=random``."""

import sys

import hydra
from omegaconf import DictConfig

import ssl4gie  # noqa: F401  registers the config resolvers (run-folder weights tag, SLURM tasks); no torch
from ssl4gie.run.options import check_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from ssl4gie.run.pipeline import run  # imported here so that `--help` and `--cfg job` stay fast

    return run(cfg)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])  # a typo or a wrong type: one line and exit 2, before anything starts
    main()
