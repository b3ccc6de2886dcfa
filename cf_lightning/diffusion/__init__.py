"""Flow-matching schedule, samplers, DMD loss and ERFT error banks (pure torch, no Lightning)."""

from cf_lightning.diffusion.dmd import dmd_loss
from cf_lightning.diffusion.error_buffer import ErrorBank, ErrorInjection, InjectedInputs, inject_errors
from cf_lightning.diffusion.flow import (
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    denoising_sigmas,
    eps_from_velocity,
    expand_frame_mask,
    flow_matching_loss,
    sample_sigmas,
    sampling_sigmas,
    shift_sigma,
    sigma_from_timestep,
    timestep_from_sigma,
    velocity_from_x0,
    velocity_target,
    warp_timesteps,
    x0_from_velocity,
)
from cf_lightning.diffusion.samplers import (
    TextScoreFn,
    VelocityFn,
    cfg_velocity,
    euler_sample,
    guided,
    null_text,
)
from cf_lightning.diffusion.trajectory import guided_velocity, ode_trajectory

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "ErrorBank",
    "ErrorInjection",
    "InjectedInputs",
    "TextScoreFn",
    "VelocityFn",
    "add_noise",
    "cfg_velocity",
    "denoising_sigmas",
    "dmd_loss",
    "eps_from_velocity",
    "euler_sample",
    "expand_frame_mask",
    "flow_matching_loss",
    "guided",
    "guided_velocity",
    "inject_errors",
    "null_text",
    "ode_trajectory",
    "sample_sigmas",
    "sampling_sigmas",
    "shift_sigma",
    "sigma_from_timestep",
    "timestep_from_sigma",
    "velocity_from_x0",
    "velocity_target",
    "warp_timesteps",
    "x0_from_velocity",
]
