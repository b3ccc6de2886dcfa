"""`cf-fit`: one LightningCLI for every stage; recipes pick the module and data by ``class_path``."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from memory_policies import load_plugins


class CFLightningCLI(LightningCLI):
    """LightningCLI with our defaults: subclass mode, OmegaConf interpolation, explicit seeds."""


def main(args: list[str] | None = None) -> None:
    # Import third-party policies first so their class names and aliases resolve in YAML.
    load_plugins()

    CFLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        seed_everything_default=0,
        args=args,
    )


if __name__ == "__main__":
    main()
