"""`cf-fit`: one LightningCLI for every stage; recipes pick the module and data by ``class_path``."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from cf_lightning.recipe import register_resolvers
from cf_lightning.resume import AUTO, LAST_ALIAS, check_resume, find_run_checkpoint, qualified_name
from cf_lightning.stages.moved_settings import check_checkpoint_settings
from memory_policies import available_policies, load_plugins

#: Module settings naming weight files to start from (one name, ``init_from``, in every stage and group);
#: a checkpoint being evaluated replaces them all.
INIT_FILES = ("init_from", "teacher.init_from", "critic.init_from")

#: Shapes every module takes from the data, so no recipe states them twice.
LINKED_SHAPES = ("latent_channels", "text_dim", "frame_cond_dim")


class CFArgumentParser(LightningArgumentParser):
    """Adds the registered memory policies to parse errors that mention an unresolvable class path,
    so an unknown ``memory: ...`` name is answered with what is allowed."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        listed = "registered memory policies:" in message
        if not listed and "memory" in message and ("class_path" in message or "import path" in message):
            message = f"{message}\nregistered memory policies: {', '.join(available_policies())}"
        super().error(message, ex)


class CFLightningCLI(LightningCLI):
    """LightningCLI with subclass mode, OmegaConf interpolation, explicit seeds, shape links and
    ``fit --ckpt_path last`` / ``auto`` (resume from this run directory's ``last.ckpt``, or start fresh;
    ``auto`` also refuses a run directory that changes with every launch)."""

    def add_arguments_to_parser(self, parser) -> None:
        for name in LINKED_SHAPES:
            parser.link_arguments("data", f"model.init_args.{name}", compute_fn=_attribute(name),
                                  apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Refuse a ``fit --ckpt_path`` checkpoint of another module class before LightningCLI replaces
        the model config with the checkpoint's hyper-parameters (class included), which would turn a
        stage-2 recipe into a run of the checkpoint's stage; and any ``--ckpt_path`` checkpoint that
        records settings under names they no longer have, naming each moved setting (LightningCLI would
        stop at the first unknown key)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path in (None, AUTO, LAST_ALIAS) or not Path(path).exists():
            return
        if subcommand == "fit":
            check_resume(path, self.config[subcommand]["model"]["class_path"])
        check_checkpoint_settings(path)

    def before_instantiate_classes(self) -> None:
        """Outside ``fit``, a ``--ckpt_path`` checkpoint supplies every weight: the init files its
        hyper-parameters name (student init, teacher, critic) are not read, so a checkpoint copied to
        another machine predicts, validates and tests there."""
        subcommand = self.config.get("subcommand")
        if subcommand in (None, "fit") or not self.config[subcommand].get("ckpt_path"):
            return
        init_args = self.config[subcommand]["model"].get("init_args")
        for name in INIT_FILES:
            if init_args is not None and name in init_args and init_args[name] is not None:
                init_args[name] = None

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path auto`` to this run directory's ``last.ckpt`` (or a fresh start), and check
        that this module class wrote the checkpoint ``auto`` or ``last`` picks."""
        config = self.config_init[self.subcommand]
        alias = config.get("ckpt_path")
        if alias == LAST_ALIAS:
            if not self.trainer.checkpoint_callbacks:
                return  # Lightning warns that there is no last checkpoint and starts fresh
            found = find_run_checkpoint(self.trainer, fixed_version=False)
            if found is not None:  # Lightning resolves "last" to the same file and warns when there is none
                check_resume(found, qualified_name(type(self.model)))
            return
        if alias != AUTO:
            return
        found = find_run_checkpoint(self.trainer)
        config["ckpt_path"] = None if found is None else str(found)
        if found is None:
            rank_zero_info("--ckpt_path auto: no checkpoint in this run directory yet, starting a new run")
            return
        rank_zero_info(f"--ckpt_path auto: resuming from {found}")
        check_resume(found, qualified_name(type(self.model)))


def _attribute(name: str):
    def read(data: LightningDataModule) -> int:
        if not hasattr(data, name):
            raise AttributeError(f"{type(data).__name__} does not expose {name!r}, which the model needs")
        return int(getattr(data, name))

    read.__name__ = f"read_{name}"
    return read


def main(args: list[str] | None = None) -> None:
    # Import third-party policies first so their class names and aliases resolve in YAML, and our
    # modules and data modules so recipes can name them by class name.
    load_plugins()
    register_resolvers()
    import cf_lightning.data.datamodules
    import cf_lightning.stages  # noqa: F401

    CFLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=CFArgumentParser,
        # Each recipe file is read by OmegaConf, so its interpolations resolve when it is loaded:
        # a later --config or flag that changes a referenced value does not reach the values that
        # interpolate it (jsonargparse's "omegaconf+" would, but rejects interpolations inside
        # class_path / init_args blocks, where recipes need them).
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        seed_everything_default=0,
        args=args,
    )


if __name__ == "__main__":
    main()
