"""A Wan2.1 diffusion transformer with three modes on the same weights.

1. bidirectional over a clip (teacher, critic): ``forward(x, t, context)``;
2. block-causal over a full sequence with a memory policy's mask (teacher forcing):
   ``forward(..., frame_mask=mask)``;
3. streaming chunk by chunk over an explicit :class:`KVMemory`: ``forward_chunk(...)``.

Module names follow the original Wan2.1 checkpoints, so that layout loads without renaming.
Timesteps are per latent frame (``[B, F]``), as causal students need; a ``[B]`` timestep is
broadcast.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cf_lightning.models.attention import Backend, attention
from cf_lightning.models.config import WanConfig
from cf_lightning.models.kv_memory import KVMemory, MemoryRead
from cf_lightning.models.rope import apply_rope, rope_angles, rope_cos_sin
from memory_policies import MemoryPolicy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class SelfAttention(nn.Module):
    """Self-attention with q/k RMSNorm and read-time RoPE; returns un-rotated K/V for the cache."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                memory: tuple[torch.Tensor, torch.Tensor] | None, backend: Backend
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(x)).unflatten(-1, heads)
        v = self.v(x).unflatten(-1, heads)
        cos, sin = rope
        queries_len = q.shape[1]
        q_rot = apply_rope(q, cos[:, -queries_len:], sin[:, -queries_len:])
        k_rot = apply_rope(k, cos[:, -queries_len:], sin[:, -queries_len:])
        if memory is not None:
            memory_k, memory_v = memory
            mem_len = memory_k.shape[1]
            k_rot = torch.cat([apply_rope(memory_k, cos[:, :mem_len], sin[:, :mem_len]), k_rot], dim=1)
            v_all = torch.cat([memory_v.to(v.dtype), v], dim=1)
        else:
            v_all = v
        out = attention(q_rot, k_rot, v_all, mask, backend)
        return self.o(out.flatten(2)), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                backend: Backend) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)
        v = self.v(context).unflatten(-1, heads)
        mask = None if context_mask is None else context_mask[:, None, :].expand(-1, q.shape[1], -1)
        return self.o(attention(q, k, v, mask, backend).flatten(2))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame adaptive norm: tokens are frame-major, modulation is ``[B, F, dim]``."""
    per_frame = x.unflatten(1, (frames, -1)).float()
    return (per_frame * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2).to(x.dtype)


def _gate(x: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    return (x.unflatten(1, (frames, -1)).float() * gate[:, :, None]).flatten(1, 2).to(x.dtype)


class WanBlock(nn.Module):
    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, config.num_heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                context: torch.Tensor, context_mask: torch.Tensor | None, mask: torch.Tensor | None,
                memory: tuple[torch.Tensor, torch.Tensor] | None, backend: Backend
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        frames = e.shape[1]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (self.modulation[:, None].float() + e).unbind(2)
        y, kv = self.self_attn(_modulate(self.norm1(x), shift_msa, scale_msa, frames), rope, mask, memory, backend)
        x = x + _gate(y, gate_msa, frames)
        x = x + self.cross_attn(self.norm3(x), context, context_mask, backend)
        y = self.ffn(_modulate(self.norm2(x), shift_mlp, scale_mlp, frames))
        return x + _gate(y, gate_mlp, frames), kv


class Head(nn.Module):
    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim = config.dim
        self.norm = nn.LayerNorm(dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation[:, None].float() + e[:, :, None]).unbind(2)
        return self.head(_modulate(self.norm(x), shift, scale, e.shape[1]))


def sinusoidal_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: ``[cos, sin]`` of ``t * 10000^(-i/half)``, in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, device=timesteps.device, dtype=torch.float64) / half)
    angles = timesteps.to(torch.float64)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class WanModel(nn.Module):
    """Wan2.1 DiT. ``x`` is ``[B, C, F, H, W]`` latents, ``t`` the timestep in [0, 1000] per frame."""

    def __init__(self, config: WanConfig, attention_backend: Backend = "sdpa") -> None:
        super().__init__()
        if config.patch_size[0] != 1:
            raise ValueError(f"temporal patch size must be 1 for per-frame streaming, got {config.patch_size}")
        self.config = config
        self.attention_backend: Backend = attention_backend
        self.gradient_checkpointing = False
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.frame_cond_embedding = (
            nn.Sequential(nn.Linear(config.frame_cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
            if config.frame_cond_dim else None
        )
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)

    # ------------------------------------------------------------------ public modes
    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                context_mask: torch.Tensor | None = None, frame_cond: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional (``frame_mask=None``) or masked full-sequence forward.

        ``positions``: temporal position per frame, ``[F]`` or ``[B, F]`` (default ``0..F-1``).
        ``frame_mask``: ``[F, F]`` or ``[B, F, F]`` boolean, True where query frame i sees key frame j.
        """
        frames = x.shape[2]
        if positions is None:
            positions = torch.arange(frames, device=x.device)
        token_mask = None
        if frame_mask is not None:
            tokens = self.tokens_per_frame(x.shape[-2:])
            if frame_mask.shape[-2:] != (frames, frames):
                raise ValueError(f"frame_mask must be [{frames}, {frames}] or [B, {frames}, {frames}], "
                                 f"got {tuple(frame_mask.shape)}")
            token_mask = frame_mask.repeat_interleave(tokens, -1).repeat_interleave(tokens, -2)
            if token_mask.ndim == 2:
                token_mask = token_mask[None].expand(x.shape[0], -1, -1)
        out, _ = self._run(x, t, context, context_mask, frame_cond, positions, token_mask, None, None)
        return out

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, memory: KVMemory, *,
                      context_mask: torch.Tensor | None = None, frame_cond: torch.Tensor | None = None,
                      commit: bool = False) -> torch.Tensor:
        """One query chunk attending to what ``memory`` keeps; ``commit=True`` is the clean refresh pass
        that writes this chunk's keys/values (and summaries) into the memory."""
        if x.shape[2] != memory.chunk_frames:
            raise ValueError(f"chunk has {x.shape[2]} frames but the memory expects {memory.chunk_frames}")
        read = memory.read()
        positions = torch.cat([read.positions, read.query_positions], dim=1)
        token_mask = self._streaming_mask(read, x)
        out, kvs = self._run(x, t, context, context_mask, frame_cond, positions, token_mask, memory, read)
        if commit:
            keys = [k for k, _ in kvs]
            summaries = self.frame_summaries(keys, x.shape[2]) if memory.policy.needs_summaries() else None
            memory.commit(keys, [v for _, v in kvs], summaries)
        return out

    def new_memory(self, policy: MemoryPolicy, batch_size: int, chunk_frames: int, latent_hw: tuple[int, int],
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> KVMemory:
        param = next(self.parameters())
        return KVMemory(policy, batch_size, chunk_frames, self.tokens_per_frame(latent_hw), self.config.num_layers,
                        self.config.num_heads, self.config.head_dim, device or param.device, dtype or param.dtype)

    def tokens_per_frame(self, latent_hw: tuple[int, int] | torch.Size) -> int:
        _, ph, pw = self.config.patch_size
        h, w = latent_hw
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        return (h // ph) * (w // pw)

    @staticmethod
    def frame_summaries(keys: list[torch.Tensor], frames: int) -> torch.Tensor:
        """Mean un-rotated key per frame, averaged over layers: ``[B, F, H*D]`` (paper Eq. 7)."""
        per_layer = [k.detach().float().unflatten(1, (frames, -1)).mean(2).flatten(2) for k in keys]
        return torch.stack(per_layer).mean(0)

    # ------------------------------------------------------------------ internals
    def _streaming_mask(self, read: MemoryRead, x: torch.Tensor) -> torch.Tensor | None:
        if read.valid is None:
            return None
        tokens = self.tokens_per_frame(x.shape[-2:])
        query_tokens = x.shape[2] * tokens
        memory_tokens = read.valid.repeat_interleave(tokens, dim=1)
        keys = torch.cat([memory_tokens, memory_tokens.new_ones(x.shape[0], query_tokens)], dim=1)
        return keys[:, None, :].expand(-1, query_tokens, -1)

    def _time_embedding(self, t: torch.Tensor, batch: int, frames: int,
                        frame_cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if t.ndim == 1:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"t must be [B] or [B, F] = [{batch}, {frames}], got {tuple(t.shape)}")
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t).to(self.time_embedding[0].weight.dtype))
        if self.frame_cond_embedding is not None:
            if frame_cond is None or frame_cond.shape[:2] != (batch, frames):
                shape = None if frame_cond is None else tuple(frame_cond.shape)
                raise ValueError(f"this model needs frame_cond [{batch}, {frames}, {self.config.frame_cond_dim}], "
                                 f"got {shape}")
            e = e + self.frame_cond_embedding(frame_cond.to(e.dtype))
        e = e.float()
        e0 = self.time_projection(e.to(self.time_embedding[0].weight.dtype)).float().unflatten(-1, (6, -1))
        return e, e0

    def _run(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
             frame_cond: torch.Tensor | None, positions: torch.Tensor, token_mask: torch.Tensor | None,
             memory: KVMemory | None, read: MemoryRead | None
             ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        if x.ndim != 5 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"x must be [B, {self.config.in_dim}, F, H, W], got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != self.config.text_dim:
            raise ValueError(f"context must be [B, L, {self.config.text_dim}], got {tuple(context.shape)}")
        batch, _, frames, height, width = x.shape
        _, ph, pw = self.config.patch_size
        grid = (height // ph, width // pw)
        self.tokens_per_frame((height, width))
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)
        e, e0 = self._time_embedding(t, batch, frames, frame_cond)
        text = self.text_embedding(context)
        angles = rope_angles(positions.expand(batch, -1) if positions.ndim == 1 else positions, grid,
                             self.config.head_dim, self.config.rope_theta)
        rope = rope_cos_sin(angles, torch.float32)
        kvs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, block in enumerate(self.blocks):
            layer_memory = memory.gather(index, read) if memory is not None and read is not None and read.num_frames else None
            args = (tokens, e0, rope, text, context_mask, token_mask, layer_memory, self.attention_backend)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, kv = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens, kv = block(*args)
            kvs.append(kv)
        out = self.head(tokens, e)
        return self._unpatchify(out, frames, grid), kvs

    def _unpatchify(self, tokens: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        h, w = grid
        x = tokens.view(tokens.shape[0], frames, h, w, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], self.config.out_dim, frames * pt, h * ph, w * pw)


def build_wan(name: str = "tiny", attention_backend: Backend = "sdpa", **overrides: object) -> WanModel:
    """Build a model from a named config (``tiny``, ``small``, ``wan2.1-1.3b``, ``wan2.1-14b``)."""
    return WanModel(WanConfig.from_name(name, **overrides), attention_backend=attention_backend)
