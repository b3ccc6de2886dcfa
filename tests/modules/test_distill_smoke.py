import lightning as L

from cf_lightning.modules import ContextForcingModule, TeacherModule
from memory_policies import SlowFast
from tests.modules.conftest import CHANNELS, TEXT_DIM


def test_teacher_and_distill_run(loader, tmp_path):
    teacher = TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, target_frames=4,
                            context_modes=["none", "last_n", "policy"], context_frames=4,
                            memory=SlowFast(sink=1, slow=2, fast=4, rope_length=7))
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0)
    trainer.fit(teacher, loader())
    distill = ContextForcingModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2,
                                   memory=SlowFast(sink=1, slow=2, fast=4, rope_length=7), min_rollout_chunks=3,
                                   max_rollout_chunks=6, target_chunks=2, generator_every=2)
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu")
    trainer.fit(distill, loader())
    assert int(distill.generator_steps) == 2 and int(distill.critic_steps) == 4
