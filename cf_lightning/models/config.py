"""Wan2.1 transformer sizes as named configs; every shape in the library derives from one of these."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of a Wan2.1-architecture diffusion transformer.

    ``frame_cond_dim`` adds an optional per-frame condition (e.g. a camera position) to the time
    embedding and to every token of its frame; 0 keeps the exact Wan2.1 architecture, so real checkpoints load
    unchanged. ``frame_cond_frequencies`` (K) feeds that condition's embedding MLP Fourier features of it,
    ``[c, sin(2^k pi c), cos(2^k pi c)]`` for k < K (``cf_lightning.models.frame_cond``), instead of ``c``
    alone: a camera normalised to [-1, 1] moves by only ~0.1 per pan step, which a linear first layer
    barely separates. Choose K from the world's geometry with ``frequencies_to_resolve(step)``, where
    ``step`` is the normalised camera move of one pan step: the finest period then spans 2-4 steps.
    0 (the default) is the raw condition, bit-identical to models and checkpoints without the field.
    """

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    frame_cond_dim: int = 0
    frame_cond_frequencies: int = 0
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head_dim={head_dim} must be even and >= 6 to split RoPE over (t, h, w)")
        if self.frame_cond_frequencies < 0:
            raise ValueError(f"frame_cond_frequencies={self.frame_cond_frequencies} must be >= 0 "
                             "(0 = the raw per-frame condition, K > 0 = K octaves of Fourier features)")
        if self.frame_cond_frequencies and not self.frame_cond_dim:
            raise ValueError(f"frame_cond_frequencies={self.frame_cond_frequencies} encodes the per-frame "
                             "condition, but frame_cond_dim=0 (this model has none); set it to 0")
        object.__setattr__(self, "patch_size", tuple(self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> WanConfig:
        """A named config with optional field overrides (``in_dim`` to match a codec, for example)."""
        if name not in CONFIGS:
            raise KeyError(f"unknown model config {name!r}; available: {', '.join(CONFIGS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown WanConfig fields {unknown}; allowed: {sorted(known)}")
        return replace(CONFIGS[name], **overrides)  # type: ignore[arg-type]


CONFIGS: dict[str, WanConfig] = {
    # well under 1M parameters: unit tests
    "tiny": WanConfig(
        dim=24, ffn_dim=48, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, freq_dim=16
    ),
    # CPU recipes and benchmarks
    "small": WanConfig(
        dim=96, ffn_dim=256, num_heads=4, num_layers=3, in_dim=16, out_dim=16, text_dim=32, freq_dim=64
    ),
    "wan2.1-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
