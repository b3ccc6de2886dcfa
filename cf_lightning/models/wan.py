"""A Wan2.1 diffusion transformer with three modes on the same weights.

1. bidirectional over a clip (teacher, critic): ``forward(x, t, context)``;
2. block-causal over a full sequence with a memory policy's mask (teacher forcing):
   ``forward(..., frame_mask=mask)``;
3. streaming chunk by chunk over an explicit :class:`KVMemory`: ``forward(..., memory=memory)``.

Every mode, the streaming commit and the text projection included, runs through ``forward()`` of the
model and of each block, so FSDP's per-block unshard hooks, activation checkpointing wrappers and
``torch.compile`` see every use of the weights.

Module names follow the original Wan2.1 checkpoints, so that layout loads without renaming.
Timesteps are per latent frame (``[B, F]``), as causal students need; a ``[B]`` timestep is
broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cf_lightning.models.attention import Backend, BlockMask, Mask, attention
from cf_lightning.models.attention_stats import capture_attention_input, frame_attention
from cf_lightning.models.config import WanConfig
from cf_lightning.models.frame_cond import FrameCondEmbedding
from cf_lightning.models.kv_memory import KVMemory, MemoryRead
from cf_lightning.models.rope import apply_rope, rope_angles, rope_cos_sin
from memory_policies import MemoryPolicy, SummarySpec

T = TypeVar("T")
ContextKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: cross-attention keys, values [B, L, H, D]
BlockMode = Literal["block", "keys_values", "context_kv"]
ForwardMode = Literal["predict", "predict_commit", "commit", "context_kv"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised in float32, then scaled in the weight's dtype (as Wan does). ``F.rms_norm`` is one op
        where the written-out form was six, and rounds the same on CPU (float32 and bfloat16 checked)."""
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class _Projections(nn.Module):
    """The q/k/v/o projections and q/k RMSNorms every Wan attention has (names as in Wan's checkpoints)."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)


class ChunkKV:
    """One layer's memory for a query chunk: keys rotated to their read positions and values, each in a
    buffer ``[B, memory + chunk tokens, H, D]`` whose last rows take the chunk's own keys and values.

    Built once per chunk (see :meth:`WanModel.forward` with a ``memory``). Each forward of the chunk writes
    its rows in place, instead of concatenating, which would copy the whole memory per forward and layer. With
    grad mode on the rows are concatenated instead: a backward pass (or a checkpointed block's
    recomputation) must not find its inputs overwritten by the chunk's next forward.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, chunk_tokens: int) -> None:
        batch, memory_tokens, heads, head_dim = keys.shape
        self.memory_tokens = memory_tokens
        self.keys = keys.new_empty(batch, memory_tokens + chunk_tokens, heads, head_dim)
        self.values = values.new_empty(batch, memory_tokens + chunk_tokens, heads, head_dim)
        self.keys[:, :memory_tokens] = keys
        self.values[:, :memory_tokens] = values

    def join(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory then chunk keys (rotated) and values ``[B, memory + chunk tokens, H, D]``."""
        n = self.memory_tokens
        if torch.is_grad_enabled():
            return (torch.cat([self.keys[:, :n], keys.to(self.keys.dtype)], dim=1),
                    torch.cat([self.values[:, :n], values.to(self.values.dtype)], dim=1))
        self.keys[:, n:] = keys
        self.values[:, n:] = values
        return self.keys, self.values


class SelfAttention(_Projections):
    """Self-attention with q/k RMSNorm and RoPE; returns un-rotated K/V for the cache."""

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-rotated keys and values ``[B, L, H, D]``: what a memory stores for these tokens."""
        heads = (self.num_heads, -1)
        return self.norm_k(self.k(x)).unflatten(-1, heads), self.v(x).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: Mask,
                memory: ChunkKV | None, backend: Backend
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``rope``: the tables of the query tokens. ``memory``: the streaming path's memory for this layer,
        keys already rotated, which the query's keys and values join."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k, v = self.keys_values(x)
        q_rot = apply_rope(q, *rope)
        k_rot = apply_rope(k, *rope)
        v_all = v
        if memory is not None:
            k_rot, v_all = memory.join(k_rot, v)
        out = attention(q_rot, k_rot, v_all, mask, backend)
        return self.o(out.flatten(2)), (k, v)


class CrossAttention(_Projections):
    """Attention from video tokens to the text context (no positions)."""

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, L, H, D]`` of the (embedded) text context."""
        heads = (self.num_heads, -1)
        return self.norm_k(self.k(context)).unflatten(-1, heads), self.v(context).unflatten(-1, heads)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | BlockMask | None,
        backend: Backend,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``context_kv``: this layer's :meth:`project_context` output, reused instead of ``context``.
        ``context_mask``: the text's ``[B, L]`` padding, or that padding as a :class:`BlockMask` a
        forward built once for all its layers."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        if context_kv is None:
            if context is None:
                raise ValueError("cross-attention needs the context or its projected keys/values")
            context_kv = self.project_context(context)
        k, v = context_kv
        mask = context_mask
        if isinstance(mask, torch.Tensor):
            mask = BlockMask.keys(mask, q.shape[1])
        return self.o(attention(q, k, v, mask, backend).flatten(2))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame adaptive norm: tokens are frame-major, modulation is ``[B, F, 1, dim]`` (the token axis
    is added once per block, not once per use)."""
    per_frame = x.unflatten(1, (frames, -1)).float()
    return (per_frame * (1 + scale) + shift).flatten(1, 2).to(x.dtype)


def _gate(x: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    return (x.unflatten(1, (frames, -1)).float() * gate).flatten(1, 2).to(x.dtype)


class WanBlock(nn.Module):
    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, eps)
        self.norm3 = (
            nn.LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = CrossAttention(dim, config.num_heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def _modulation(self, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Shift, scale, gate (attention), shift, scale, gate (FFN), each ``[B, F, 1, dim]``."""
        return (self.modulation[:, None, :, None].float() + e.unsqueeze(3)).unbind(2)

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | BlockMask | None = None,
        mask: Mask = None,
        memory: ChunkKV | None = None,
        backend: Backend = "sdpa",
        *,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        mode: BlockMode = "block",
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]:
        """Every use of the block's weights goes through here, so that wrappers of the block (FSDP's
        unshard hooks, activation checkpointing, ``torch.compile``) see each of them.

        ``mode="block"``: the block's output and its un-rotated self-attention keys and values.
        ``mode="keys_values"``: only those keys and values of ``x`` (time embedding ``e``), without running
        the rest of the block: all a memory commit needs from the last block.
        ``mode="context_kv"``: ``x`` is the embedded text; its cross-attention keys and values.
        """
        if mode == "context_kv":
            return self.cross_attn.project_context(x)
        if e is None:
            raise ValueError(f"block mode {mode!r} needs the time embedding e")
        frames = e.shape[1]
        if mode == "keys_values":
            shift_msa, scale_msa = self._modulation(e)[:2]
            return self.self_attn.keys_values(_modulate(self.norm1(x), shift_msa, scale_msa, frames))
        if mode != "block":
            raise ValueError(f"unknown block mode {mode!r}; allowed: {', '.join(get_args(BlockMode))}")
        if rope is None:
            raise ValueError("block mode 'block' needs the RoPE tables of its tokens")
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation(e)
        y, kv = self.self_attn(
            _modulate(self.norm1(x), shift_msa, scale_msa, frames), rope, mask, memory, backend
        )
        x = x + _gate(y, gate_msa, frames)
        x = x + self.cross_attn(self.norm3(x), context, context_mask, backend, context_kv)
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
        shift, scale = (self.modulation[:, None, :, None].float() + e[:, :, None, None]).unbind(2)
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
            raise ValueError(
                f"temporal patch size must be 1 for per-frame streaming, got {config.patch_size}"
            )
        self.config = config
        self.attention_backend: Backend = attention_backend
        self.gradient_checkpointing = False
        dim = config.dim
        self.patch_embedding = nn.Conv3d(
            config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.frame_cond_embedding = (
            FrameCondEmbedding(config.frame_cond_dim, config.frame_cond_frequencies, dim)
            if config.frame_cond_dim else None
        )
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)

    # ------------------------------------------------------------------ public modes
    def forward(self, x: torch.Tensor | None, t: torch.Tensor | None, context: torch.Tensor, *,
                context_mask: torch.Tensor | None = None, frame_cond: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                context_kv: ContextKV | None = None, memory: KVMemory | None = None,
                mode: ForwardMode = "predict") -> torch.Tensor | ContextKV | None:
        """The one entry point of every mode, so that wrappers of the model or of its blocks (FSDP's unshard
        hooks, activation checkpointing, ``torch.compile``) see every call, streaming included.

        Without ``memory``: bidirectional (``frame_mask=None``) or masked full-sequence forward.
        ``positions``: temporal position per frame, ``[F]`` or ``[B, F]`` (default ``0..F-1``).
        ``frame_mask``: ``[F, F]`` or ``[B, F, F]`` boolean, True where query frame i sees key frame j.

        With ``memory``, ``x`` is one query chunk attending to what the memory keeps:
        ``mode="predict"`` returns its output; ``"predict_commit"`` also writes the chunk's keys/values
        (and summaries) into the memory (the clean refresh pass); ``"commit"`` commits exactly that but
        returns nothing: the last block stops at its keys and values and the head does not run
        (:func:`cf_lightning.rollout.rollout` never reads the refresh output; on ``small`` this skips
        about a quarter of the refresh forward). Per-chunk work is done once per chunk, not once per
        forward: the memory read, its RoPE tables and the gathered, rotated memory keys live on the read
        until the next commit (see :class:`KVMemory`).

        ``mode="context_kv"`` returns the per-layer cross-attention keys/values of ``context`` (``x`` and
        ``t`` are not used), to pass back as ``context_kv`` so a streaming rollout does not re-project
        the text every forward. Valid for this ``context`` and the current weights only; outputs equal
        the plain path exactly.
        """
        if mode == "context_kv":
            text = self.text_embedding(context)
            return [block(text, mode="context_kv") for block in self.blocks]
        if mode not in get_args(ForwardMode):
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(get_args(ForwardMode))}")
        if x is None or t is None:
            raise ValueError(f"mode {mode!r} needs latents x and timesteps t")
        if memory is not None:
            return self._stream(x, t, context, memory, context_mask, frame_cond, context_kv, mode)
        if mode != "predict":
            raise ValueError(f"mode {mode!r} streams into a memory: pass memory=")
        frames = x.shape[2]
        if positions is None:
            positions = torch.arange(frames, device=x.device)
        token_mask: BlockMask | None = None
        if frame_mask is not None:
            tokens = self.tokens_per_frame(x.shape[-2:])
            if frame_mask.shape[-2:] != (frames, frames):
                raise ValueError(f"frame_mask must be [{frames}, {frames}] or [B, {frames}, {frames}], "
                                 f"got {tuple(frame_mask.shape)}")
            token_mask = BlockMask.frames(frame_mask, tokens)  # built once, shared by every layer
        out, _ = self._run(
            x, t, context, context_mask, frame_cond, positions, token_mask, None, None, context_kv
        )
        return out

    def new_memory(self, policy: MemoryPolicy, batch_size: int, chunk_frames: int, latent_hw: tuple[int, int],
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                   cache_reads: bool = True, store_rotated: bool | None = None) -> KVMemory:
        """A memory for this model's layers; ``dtype`` defaults to the autocast dtype when autocast is on
        (mixed precision computes keys at that precision; fp32 storage would double the pool and the keys
        each chunk that keeps a graph holds for its backward), else to the weights' dtype."""
        param = next(self.parameters())
        device = torch.device(device) if device is not None else param.device
        if dtype is None:
            dtype = (
                torch.get_autocast_dtype(device.type)
                if torch.is_autocast_enabled(device.type)
                else param.dtype
            )
        return KVMemory(
            policy,
            batch_size,
            chunk_frames,
            self.tokens_per_frame(latent_hw),
            self.config.num_layers,
            self.config.num_heads,
            self.config.head_dim,
            device,
            dtype,
            cache_reads=cache_reads,
            store_rotated=store_rotated,
            grid=self._latent_grid(latent_hw),
        )

    def tokens_per_frame(self, latent_hw: tuple[int, int] | torch.Size) -> int:
        h, w = self._latent_grid(latent_hw)
        return h * w

    def _latent_grid(self, latent_hw: tuple[int, int] | torch.Size) -> tuple[int, int]:
        """Token grid ``(h, w)`` of latents of size ``latent_hw`` (checks that the patch size divides it)."""
        _, ph, pw = self.config.patch_size
        h, w = latent_hw
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        return h // ph, w // pw

    @staticmethod
    def frame_summaries(
        keys: list[torch.Tensor], frames: int, spec: SummarySpec | None = None
    ) -> torch.Tensor:
        """Per-frame summaries of un-rotated keys ``[B, F, d]`` as the policy asks: the mean key
        (paper Eq. 7) or all token keys, of one layer or averaged over layers."""
        spec = spec or SummarySpec()
        if spec.layer is not None and not -len(keys) <= spec.layer < len(keys):
            raise ValueError(f"summary layer {spec.layer} outside the model's {len(keys)} layers")
        chosen = keys if spec.layer is None else [keys[spec.layer]]
        per_frame = [k.detach().float().unflatten(1, (frames, -1)) for k in chosen]  # [B, F, S, H, D]
        reduced = [k.mean(2).flatten(2) if spec.reduce == "mean_key" else k.flatten(2) for k in per_frame]
        return torch.stack(reduced).mean(0)

    # ------------------------------------------------------------------ internals
    def _stream(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        memory: KVMemory,
        context_mask: torch.Tensor | None,
        frame_cond: torch.Tensor | None,
        context_kv: ContextKV | None,
        mode: ForwardMode,
    ) -> torch.Tensor | None:
        """One streamed chunk (see :meth:`forward`): its output, its commit, or both."""
        read, token_mask = self._chunk_read(x, memory, context_kv)
        # only a commit measures attention
        spec = None if mode == "predict" else memory.policy.attention_spec()
        if mode == "commit":
            with capture_attention_input(self.blocks, spec) as captured:
                _, _, kvs = self._layers(
                    x,
                    t,
                    context,
                    context_mask,
                    frame_cond,
                    None,
                    token_mask,
                    memory,
                    read,
                    context_kv,
                    keys_only=True,
                )
            self._commit(memory, read, kvs, x, captured)
            return None
        with capture_attention_input(self.blocks, spec) as captured:
            out, kvs = self._run(
                x, t, context, context_mask, frame_cond, None, token_mask, memory, read, context_kv
            )
        if mode == "predict_commit":
            self._commit(memory, read, kvs, x, captured)
        return out

    def _streaming_mask(self, read: MemoryRead, x: torch.Tensor) -> BlockMask | None:
        """Key padding of ``[memory | chunk]`` tokens when a read's memory has padded or pruned token rows
        (else None: every query sees every key)."""
        if read.valid is None:
            return None
        query_tokens = x.shape[2] * self.tokens_per_frame(x.shape[-2:])
        keys = torch.cat([read.valid, read.valid.new_ones(x.shape[0], query_tokens)], dim=1)
        return BlockMask.keys(keys, queries=query_tokens)

    def _frame_condition(
        self, frame_cond: torch.Tensor | None, batch: int, frames: int
    ) -> torch.Tensor | None:
        """Embedded per-frame condition ``[B, F, dim]`` (e.g. the camera), or None for models without one."""
        if self.frame_cond_embedding is None:
            return None
        if frame_cond is None or frame_cond.shape[:2] != (batch, frames):
            shape = None if frame_cond is None else tuple(frame_cond.shape)
            raise ValueError(
                f"this model needs frame_cond [{batch}, {frames}, {self.config.frame_cond_dim}], got {shape}"
            )
        return self.frame_cond_embedding(frame_cond.to(self.frame_cond_embedding[0].weight.dtype))

    def _time_embedding(self, t: torch.Tensor, batch: int, frames: int,
                        frame_condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if t.ndim == 1:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"t must be [B] or [B, F] = [{batch}, {frames}], got {tuple(t.shape)}")
        e = self.time_embedding(
            sinusoidal_embedding(self.config.freq_dim, t).to(self.time_embedding[0].weight.dtype)
        )
        if frame_condition is not None:
            e = e + frame_condition.to(e.dtype)
        e = e.float()
        e0 = self.time_projection(e.to(self.time_embedding[0].weight.dtype)).float().unflatten(-1, (6, -1))
        return e, e0

    @staticmethod
    def _add_to_tokens(tokens: torch.Tensor, frame_condition: torch.Tensor | None) -> torch.Tensor:
        """Add the embedded per-frame condition to every token of its frame.

        The time modulation alone scales and shifts whole frames, which lets attention tell frames
        apart only indirectly; with the condition in the tokens, queries and keys compare it directly,
        so a frame can find the context frame that shares its camera (recall by "where", as
        camera-controlled video models do with per-token camera embeddings).
        """
        if frame_condition is None:
            return tokens
        frames = frame_condition.shape[1]
        return (tokens.unflatten(1, (frames, -1)) + frame_condition[:, :, None].to(tokens.dtype)).flatten(
            1, 2
        )

    def _chunk_read(self, x: torch.Tensor, memory: KVMemory, context_kv: ContextKV | None
                    ) -> tuple[MemoryRead, BlockMask | None]:
        """Checks a streamed chunk's inputs; returns the memory read and the attention mask it needs."""
        if x.shape[2] != memory.chunk_frames:
            raise ValueError(f"chunk has {x.shape[2]} frames but the memory expects {memory.chunk_frames}")
        if context_kv is not None and (
            len(context_kv) != len(self.blocks) or context_kv[0][0].shape[0] != x.shape[0]
        ):
            raise ValueError(f"context_kv must hold {len(self.blocks)} layers for a batch of {x.shape[0]}")
        read = memory.read()
        token_mask = self._per_read(
            memory, read, ("mask", tuple(x.shape[-2:])), lambda: self._streaming_mask(read, x)
        )
        return read, token_mask

    def _commit(self, memory: KVMemory, read: MemoryRead, kvs: list[tuple[torch.Tensor, torch.Tensor]],
                x: torch.Tensor, attention_input: list[torch.Tensor]) -> None:
        """Summaries come from the un-rotated keys (a frame's content, not its position); with fixed
        positions the stored keys are rotated here, once, to the positions they will be read at.
        ``attention_input``: the captured self-attention input of the policy's attention layer, if any."""
        keys = [k for k, _ in kvs]
        policy = memory.policy
        summaries = (
            self.frame_summaries(keys, x.shape[2], policy.summary_spec())
            if policy.needs_summaries()
            else None
        )
        attention = self._frame_attention(memory, read, kvs, x, attention_input) if attention_input else None
        if memory.store_rotated:
            _, query_rope = self._streaming_rope(memory, read, self._grid(x))
            keys = [apply_rope(k, *query_rope) for k in keys]
        memory.commit(keys, [v for _, v in kvs], summaries, attention)

    def _frame_attention(
        self,
        memory: KVMemory,
        read: MemoryRead,
        kvs: list[tuple[torch.Tensor, torch.Tensor]],
        x: torch.Tensor,
        attention_input: list[torch.Tensor],
    ) -> torch.Tensor:
        """Per memory frame, the attention mass the chunk's refresh queries gave it in the policy's layer."""
        spec = memory.policy.attention_spec()
        assert spec is not None  # attention_input is only captured for such policies
        if read.num_frames == 0:
            rows = (self.tokens_per_frame(x.shape[-2:]),) if spec.per_token else ()
            return x.new_zeros(x.shape[0], 0, *rows)
        grid = self._grid(x)
        attn = self.blocks[spec.layer].self_attn
        queries = attn.norm_q(attn.q(attention_input[-1])).unflatten(-1, (attn.num_heads, -1))
        memory_rope, query_rope = self._streaming_rope(memory, read, grid)
        staged = self._memory_kv(memory, read, spec.layer % len(self.blocks), memory_rope, grid)
        return frame_attention(apply_rope(queries, *query_rope), staged.keys[:, :staged.memory_tokens],
                               apply_rope(kvs[spec.layer][0], *query_rope), read.valid, grid[0] * grid[1],
                               per_token=spec.per_token)

    def _per_read(self, memory: KVMemory, read: MemoryRead, key: object, compute: Callable[[], T]) -> T:
        """``compute()`` once per memory read (i.e. once per chunk) when the memory caches reads.

        Bypassed when the memory's tensors carry autograd history, so a cached value never holds a graph.
        """
        if not memory.cache_reads or memory.keys.requires_grad:
            return compute()
        if key not in read.cache:
            read.cache[key] = compute()
        return read.cache[key]  # type: ignore[return-value]

    def _streaming_rope(
        self, memory: KVMemory, read: MemoryRead, grid: tuple[int, int]
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor]]:
        """RoPE tables of the memory tokens (None when the memory stores its keys rotated) and of the query
        tokens, split once per read rather than sliced in every layer of every forward."""
        def compute() -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor]]:
            if memory.store_rotated:
                return None, self._rope(read.query_positions, grid)
            cos, sin = self._rope(torch.cat([read.positions, read.query_positions], dim=1), grid)
            split = read.num_frames * grid[0] * grid[1]
            return (cos[:, :split], sin[:, :split]), (cos[:, split:], sin[:, split:])
        return self._per_read(memory, read, ("rope", grid), compute)

    def _rope(self, positions: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for frame positions ``[B, F]`` (or ``[F]``) over a token grid."""
        return rope_cos_sin(
            rope_angles(positions, grid, self.config.head_dim, self.config.rope_theta), torch.float32
        )

    def _memory_kv(self, memory: KVMemory, read: MemoryRead, layer: int,
                   memory_rope: tuple[torch.Tensor, torch.Tensor] | None, grid: tuple[int, int]) -> ChunkKV:
        """One layer's memory keys (rotated to their read positions) and values, staged for the chunk.

        Keys are stored un-rotated when positions move with the memory's contents (bounded, true time);
        they are rotated here, once per chunk and layer rather than once per forward. With fixed
        positions they were rotated at commit and are used as they are (``memory_rope`` is None).
        """
        def compute() -> ChunkKV:
            keys, values = memory.gather(layer, read)
            if memory_rope is not None:
                keys = apply_rope(keys, *memory_rope)
            return ChunkKV(keys, values, memory.chunk_frames * grid[0] * grid[1])
        return self._per_read(memory, read, ("memory", layer, grid), compute)

    def _run(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
             frame_cond: torch.Tensor | None, positions: torch.Tensor | None, token_mask: BlockMask | None,
             memory: KVMemory | None, read: MemoryRead | None, context_kv: ContextKV | None = None
             ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The model's output and every layer's un-rotated keys and values."""
        tokens, e, kvs = self._layers(
            x, t, context, context_mask, frame_cond, positions, token_mask, memory, read, context_kv
        )
        return self._unpatchify(self.head(tokens, e), x.shape[2], self._grid(x)), kvs

    def _layers(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        frame_cond: torch.Tensor | None,
        positions: torch.Tensor | None,
        token_mask: BlockMask | None,
        memory: KVMemory | None,
        read: MemoryRead | None,
        context_kv: ContextKV | None = None,
        keys_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Tokens after the last block, the time embedding and every layer's keys and values.

        Positions come from ``positions`` (full-sequence modes) or from ``read`` (streaming).
        ``keys_only``: the last block only computes its keys and values (the tokens returned are then its
        input); for a commit, which needs nothing else.
        """
        if x.ndim != 5 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"x must be [B, {self.config.in_dim}, F, H, W], got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != self.config.text_dim:
            raise ValueError(f"context must be [B, L, {self.config.text_dim}], got {tuple(context.shape)}")
        batch, _, frames = x.shape[:3]
        grid = self._grid(x)
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)
        frame_condition = self._frame_condition(frame_cond, batch, frames)
        e, e0 = self._time_embedding(t, batch, frames, frame_condition)
        tokens = self._add_to_tokens(tokens, frame_condition)
        text = self.text_embedding(context) if context_kv is None else None
        text_mask = None if context_mask is None else BlockMask.keys(context_mask, tokens.shape[1])
        memory_rope = None
        streaming = memory is not None and read is not None
        if streaming:
            memory_rope, rope = self._streaming_rope(memory, read, grid)
        else:
            assert positions is not None
            rope = self._rope(positions.expand(batch, -1) if positions.ndim == 1 else positions, grid)
        kvs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, block in enumerate(self.blocks):
            if keys_only and index == len(self.blocks) - 1:
                kvs.append(block(tokens, e0, mode="keys_values"))
                break
            layer_memory = None
            if streaming and read.num_frames:
                layer_memory = self._memory_kv(memory, read, index, memory_rope, grid)
            args = (tokens, e0, rope, text, text_mask, token_mask, layer_memory, self.attention_backend)
            kwargs = {"context_kv": None if context_kv is None else context_kv[index]}
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, kv = checkpoint(block, *args, use_reentrant=False, **kwargs)
            else:
                tokens, kv = block(*args, **kwargs)
            kvs.append(kv)
        return tokens, e, kvs

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Token grid ``(h, w)`` of latents ``[B, C, F, H, W]`` (checks that the patch size divides them)."""
        self.tokens_per_frame(x.shape[-2:])
        _, ph, pw = self.config.patch_size
        return x.shape[-2] // ph, x.shape[-1] // pw

    def _unpatchify(self, tokens: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        h, w = grid
        x = tokens.view(tokens.shape[0], frames, h, w, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], self.config.out_dim, frames * pt, h * ph, w * pw)


def build_wan(name: str = "tiny", attention_backend: Backend = "sdpa", **overrides: object) -> WanModel:
    """Build a model from a named config (``tiny``, ``small``, ``wan2.1-1.3b``, ``wan2.1-14b``)."""
    return WanModel(WanConfig.from_name(name, **overrides), attention_backend=attention_backend)
