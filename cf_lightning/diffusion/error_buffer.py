"""Error-Recycling Fine-Tuning (ERFT) for the context teacher.

After each teacher step the trainer banks the model's own residuals (the error of its x0 estimate and
of its noise endpoint) per noise level. Later steps add recycled errors to the inputs, so the teacher
learns to predict the velocity towards the *clean* target from the kind of drifted history a student
will show it. Only the target and the recent "motion" context are perturbed: sink and slow memory are
the anchors the student must be able to trust, so callers pass only the motion part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cf_lightning.diffusion.flow import sampling_sigmas


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).cpu()


class ErrorBank:
    """Fixed-capacity store of per-sample error tensors, binned by noise level.

    Bin centres are the ``num_bins`` points of the shifted sampling grid (the reference's 50 inference
    timesteps at shift 5), and a sigma goes to the nearest centre. A full bin replaces the entry most
    similar (cosine) to the newcomer, which keeps the bank diverse instead of filling it with near
    copies. Storage is one ``[num_bins, capacity, *error_shape]`` tensor, shaped by the first
    :meth:`add`, on ``device`` (CPU by default: at Wan scale a full bank holds 25k latent-sized tensors,
    so budget ``num_bins * capacity * numel * itemsize`` bytes; on CPU pages are only committed as bins
    fill). Bookkeeping lives on the host, so adding and sampling read sigma on the CPU.

    Not an ``nn.Module`` on purpose: moving the training module to the GPU must not drag the bank along.
    :meth:`state_dict` packs only the filled entries; :meth:`load_state_dict` restores them exactly into a
    freshly constructed bank.
    """

    def __init__(
        self,
        num_bins: int = 50,
        capacity: int = 500,
        shift: float = 5.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.num_bins = num_bins
        self.capacity = capacity
        self.shift = shift
        self.device = torch.device(device)
        self.dtype = dtype
        self.centres = sampling_sigmas(num_bins, shift)[:-1].flip(0).double()
        self.counts = torch.zeros(num_bins, dtype=torch.long)
        self._storage: Tensor | None = None

    @property
    def error_shape(self) -> tuple[int, ...] | None:
        """Per-sample shape fixed by the first :meth:`add` (None while the bank has never been filled)."""
        return None if self._storage is None else tuple(self._storage.shape[2:])

    def __len__(self) -> int:
        return int(self.counts.sum())

    def bin_index(self, sigma: Tensor) -> Tensor:
        """Nearest bin centre for each sigma of a ``[B]`` tensor (ties go to the lower-noise bin)."""
        sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        if sigma.ndim != 1:
            raise ValueError(f"sigma must have shape [B], got {tuple(sigma.shape)}")
        return (sigma[:, None] - self.centres[None, :]).abs().argmin(dim=1)

    def add(self, sigma: Tensor, errors: Tensor) -> None:
        """Store ``errors[b]`` (detached) in the bin of ``sigma[b]`` for each sample of the batch."""
        bins = self.bin_index(sigma)
        if errors.ndim < 2 or errors.shape[0] != bins.shape[0]:
            raise ValueError(f"errors must be [B, ...] with B = {bins.shape[0]} (from sigma), "
                             f"got shape {tuple(errors.shape)}")
        if self._storage is None:
            dtype = self.dtype if self.dtype is not None else errors.dtype
            self._allocate(tuple(errors.shape[1:]), dtype)
        elif tuple(errors.shape[1:]) != self.error_shape:
            raise ValueError(f"errors of per-sample shape {tuple(errors.shape[1:])} do not fit this bank's "
                             f"shape {self.error_shape}")
        storage = self._storage
        assert storage is not None
        errors = errors.detach().to(device=storage.device, dtype=storage.dtype)
        for b, k in enumerate(bins.tolist()):
            count = int(self.counts[k])
            if count < self.capacity:
                storage[k, count] = errors[b]
                self.counts[k] += 1
            else:
                similarity = F.cosine_similarity(
                    storage[k].flatten(1).float(), errors[b].flatten().float()[None]
                )
                storage[k, int(similarity.argmax())] = errors[b]

    def sample(self, sigma: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """One stored error per sample, uniformly from the bin of ``sigma[b]`` or the nearest non-empty
        bin; None when the bank is empty. Returned on the bank's device."""
        bins = self.bin_index(sigma)
        if len(self) == 0:
            return None
        non_empty = (self.counts > 0).nonzero().flatten()
        chosen = non_empty[(bins[:, None] - non_empty[None, :]).abs().argmin(dim=1)]
        counts = self.counts[chosen]
        slots = torch.minimum((_uniform(tuple(bins.shape), generator) * counts).long(), counts - 1)
        return self._gather(chosen, slots)

    def sample_any(self, batch: int, generator: torch.Generator | None = None) -> Tensor | None:
        """``batch`` errors drawn uniformly over every stored entry, whatever its bin; None when empty.

        For clean context, whose drift is not tied to the target's noise level.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        total = len(self)
        if total == 0:
            return None
        flat = torch.minimum((_uniform((batch,), generator) * total).long(), torch.tensor(total - 1))
        ends = self.counts.cumsum(0)
        bins = torch.searchsorted(ends, flat, right=True)
        slots = flat - (ends[bins] - self.counts[bins])
        return self._gather(bins, slots)

    def state_dict(self) -> dict[str, Any]:
        """Configuration, counts and the filled entries packed bin by bin (CPU tensors)."""
        if self._storage is None:
            errors = torch.empty(0)
        else:
            errors = torch.cat([self._storage[k, : int(c)] for k, c in enumerate(self.counts.tolist())]).cpu()
        return {"num_bins": self.num_bins, "capacity": self.capacity, "shift": self.shift,
                "counts": self.counts.clone(), "errors": errors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the bank must have been built with the same configuration."""
        for key in ("num_bins", "capacity", "shift"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]} but this bank has {key}={getattr(self, key)}")
        counts = torch.as_tensor(state["counts"], dtype=torch.long).cpu()
        errors = state["errors"]
        if tuple(counts.shape) != (self.num_bins,) or bool(
            (counts < 0).any() | (counts > self.capacity).any()
        ):
            raise ValueError(f"state counts must be {self.num_bins} values in [0, {self.capacity}], "
                             f"got {counts.tolist()}")
        total = int(counts.sum())
        if total == 0:
            self._storage = None
            self.counts = counts.clone()
            return
        if errors.ndim < 2 or errors.shape[0] != total:
            raise ValueError(f"state errors of shape {tuple(errors.shape)} do not hold the {total} entries "
                             f"its counts announce")
        self._allocate(tuple(errors.shape[1:]), self.dtype if self.dtype is not None else errors.dtype)
        storage = self._storage
        assert storage is not None
        start = 0
        for k, c in enumerate(counts.tolist()):
            storage[k, :c] = errors[start : start + c].to(device=storage.device, dtype=storage.dtype)
            start += c
        self.counts = counts.clone()

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        # Unfilled slots are never read (counts guard them), so they need no initialisation.
        self._storage = torch.empty((self.num_bins, self.capacity, *shape), dtype=dtype, device=self.device)

    def _gather(self, bins: Tensor, slots: Tensor) -> Tensor:
        storage = self._storage
        assert storage is not None
        return storage[bins.to(storage.device), slots.to(storage.device)]


@dataclass(frozen=True)
class ErrorInjection:
    """ERFT probabilities (paper / reference values): keep a sample clean with ``p_clean``; otherwise
    perturb the target x0, the motion context and the noise independently."""

    p_clean: float = 0.5
    p_target: float = 0.9
    p_context: float = 0.9
    p_noise: float = 0.01

    def __post_init__(self) -> None:
        for name in ("p_clean", "p_target", "p_context", "p_noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")


class InjectedInputs(NamedTuple):
    """Perturbed copies plus, per sample, whether each part actually received an error."""

    x0: Tensor
    motion: Tensor | None
    noise: Tensor
    target_injected: Tensor
    motion_injected: Tensor
    noise_injected: Tensor


def _check_error_shape(error: Tensor, like: Tensor, what: str) -> None:
    if error.shape != like.shape:
        raise ValueError(f"{what} bank holds errors of shape {tuple(error.shape[1:])}, but {what} has "
                         f"per-sample shape {tuple(like.shape[1:])}")


def _motion_windows(error: Tensor, motion: Tensor, generator: torch.Generator | None) -> Tensor:
    # The bank holds target-length errors; the motion context is shorter: take a random window of frames.
    frames = motion.shape[2]
    if motion.ndim != 5 or error.ndim != 5 or error.shape[:2] != motion.shape[:2] \
            or error.shape[3:] != motion.shape[3:] or error.shape[2] < frames:
        raise ValueError(f"motion of shape {tuple(motion.shape)} needs [B, C, F, H, W] errors with at least "
                         f"{frames} frames and the same C, H, W; the x0 bank gave {tuple(error.shape)}")
    starts = (_uniform((motion.shape[0],), generator) * (error.shape[2] - frames + 1)).long()
    starts = torch.minimum(starts, torch.tensor(error.shape[2] - frames))
    return torch.stack([error[b, :, s : s + frames] for b, s in enumerate(starts.tolist())])


def inject_errors(
    x0: Tensor,
    motion: Tensor | None,
    noise: Tensor,
    sigma: Tensor,
    x0_bank: ErrorBank,
    noise_bank: ErrorBank,
    config: ErrorInjection,
    generator: torch.Generator | None = None,
) -> InjectedInputs:
    """Perturb the clean target ``x0``, the ``motion`` context (``[B, C, F_m, H, W]`` or None) and the
    target ``noise`` with recycled errors; inputs are never modified in place.

    Per sample, Bernoulli draws from ``generator`` decide: clean (``p_clean``, overrides the rest), target
    (``p_target``, an x0-bank error from the bin of ``sigma``), motion (``p_context``, an x0-bank error
    from any bin, cut to the motion length) and noise (``p_noise``, a noise-bank error from the bin of
    ``sigma``). A part whose bank is empty stays clean. The teacher's regression target remains
    ``noise_out - x0_clean``: the velocity towards the clean target.
    """
    batch = x0.shape[0]
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} and x0 shape {tuple(x0.shape)} differ")
    if motion is not None and motion.shape[0] != batch:
        raise ValueError(f"motion batch {motion.shape[0]} != x0 batch {batch}")
    draws = _uniform((4, batch), generator)
    perturb = draws[0] >= config.p_clean
    wants_target = perturb & (draws[1] < config.p_target)
    wants_motion = perturb & (draws[2] < config.p_context)
    wants_noise = perturb & (draws[3] < config.p_noise)
    no = torch.zeros(batch, dtype=torch.bool)

    def apply(value: Tensor, error: Tensor | None, wanted: Tensor) -> tuple[Tensor, Tensor]:
        if error is None:
            return value, no.to(value.device)
        mask = wanted.to(value.device).view(batch, *([1] * (value.ndim - 1)))
        error = error.to(device=value.device, dtype=value.dtype)
        return torch.where(mask, value + error, value), wanted.to(value.device)

    target_error = x0_bank.sample(sigma, generator)
    if target_error is not None:
        _check_error_shape(target_error, x0, "x0")
    x0_out, target_injected = apply(x0, target_error, wants_target)

    motion_out, motion_injected = motion, no.to(x0.device)
    if motion is not None:
        motion_error = x0_bank.sample_any(batch, generator)
        if motion_error is not None:
            motion_error = _motion_windows(motion_error, motion, generator)
        motion_out, motion_injected = apply(motion, motion_error, wants_motion)

    noise_error = noise_bank.sample(sigma, generator)
    if noise_error is not None:
        _check_error_shape(noise_error, noise, "noise")
    noise_out, noise_injected = apply(noise, noise_error, wants_noise)
    return InjectedInputs(x0_out, motion_out, noise_out, target_injected, motion_injected, noise_injected)
