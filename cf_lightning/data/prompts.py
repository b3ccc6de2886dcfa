"""Prompt shards: what stage 2 (and the DMD stage 1) train on when no video is needed.

A distillation step rolls the student out from noise, so its data is only the condition: each sample
holds a prompt, its embedding and a latent array with **no frames** (``[C, 0, h, w]``, zero bytes)
that tells the module the latent shape it generates. They are ordinary latent shards
(:mod:`cf_lightning.data.shards`), read by ``ShardDataModule`` like any other. ``cf-data
trajectories`` integrates its teacher over the stored latents' shape, so prompt conditions for it are
written with ``latent_frames`` zero frames instead.

The negative prompt, the unconditional branch of the reference code's guidance, is encoded once and
stored next to the shards as ``negative_prompt.safetensors`` (tensor ``text_emb`` ``[n, D]``, valid
tokens only, with the prompt and the text encoder in its metadata); ``ContextForcingModule`` loads
it with :func:`load_negative_prompt`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from cf_lightning.data.shards import encode_sample, open_shard_writer
from cf_lightning.text import TextEncoder

NEGATIVE_PROMPT_FILE = "negative_prompt.safetensors"


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line, blank lines skipped) or JSONL (``prompt`` or ``text`` field)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"prompt list {str(path)!r} does not exist")
    lines = source.read_text(encoding="utf-8").splitlines()
    if source.suffix.lower() != ".jsonl":
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        prompts = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{source.name} line {number} is not JSON: {exc}") from exc
            text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{source.name} line {number} has no non-empty 'prompt' or 'text' field")
            prompts.append(text.strip())
    if not prompts:
        raise ValueError(f"prompt list {str(path)!r} holds no prompt")
    return prompts


def _embedded(prompts: list[str], encoder: TextEncoder, batch_size: int) -> Iterator[tuple[str, Tensor]]:
    for start in range(0, len(prompts), batch_size):
        group = prompts[start:start + batch_size]
        with torch.no_grad():
            emb, mask = encoder.encode(group)
        for row, prompt in enumerate(group):
            yield prompt, emb[row, mask[row]].cpu()


def write_prompt_shards(prompts: list[str], encoder: TextEncoder, latent_shape: tuple[int, int, int],
                        output: str | Path, shard_size: int = 1024, batch_size: int = 16,
                        negative_prompt: str | None = None, latent_frames: int = 0) -> int:
    """Write ``prompts`` with their embeddings as shards ``prompts-*.tar`` in ``output``; returns the count.

    ``latent_shape`` is ``(C, h, w)`` of the codec's latents at the training resolution; the stored
    latents are ``latent_frames`` zero frames (0 for stage 2). With a ``negative_prompt`` its
    embedding is written once to ``output/negative_prompt.safetensors``.
    """
    channels, height, width = latent_shape
    if min(latent_shape) < 1 or latent_frames < 0:
        raise ValueError(f"latent_shape must be positive (C, h, w) and latent_frames >= 0, got {latent_shape} "
                         f"and {latent_frames}")
    Path(output).mkdir(parents=True, exist_ok=True)
    empty = torch.zeros(channels, latent_frames, height, width)
    meta = {"source": "prompts", "latent_shape": list(empty.shape), "text_encoder": encoder.describe()}
    count = 0
    with open_shard_writer(output, shard_size, prefix="prompts") as sink:
        for prompt, emb in _embedded(prompts, encoder, batch_size):
            sink.write(encode_sample(f"prompt-{count:09d}", empty, prompt, meta, text_emb=emb))
            count += 1
    if negative_prompt is not None:
        save_negative_prompt(Path(output) / NEGATIVE_PROMPT_FILE, negative_prompt, encoder)
    return count


def save_negative_prompt(path: str | Path, prompt: str, encoder: TextEncoder) -> Path:
    """Encode ``prompt`` once and save its valid-token embedding ``[n, D]`` with the prompt and encoder."""
    with torch.no_grad():
        emb, mask = encoder.encode([prompt])
    metadata = {"prompt": prompt, "text_encoder": json.dumps(encoder.describe())}
    save_file({"text_emb": emb[0, mask[0]].cpu().float().contiguous()}, str(path), metadata=metadata)
    return Path(path)


def load_negative_prompt(path: str | Path, text_dim: int) -> Tensor:
    """The negative prompt's embedding ``[n, text_dim]`` saved by :func:`save_negative_prompt`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"negative prompt embedding {str(path)!r} does not exist (cf-data prompts "
                                f"--negative_prompt writes {NEGATIVE_PROMPT_FILE} next to the shards)")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        if "text_emb" not in names:
            raise ValueError(f"{str(path)!r} holds no 'text_emb' tensor (keys: {sorted(names)})")
        emb = handle.get_tensor("text_emb").float()
    if emb.ndim != 2 or emb.shape[1] != text_dim:
        raise ValueError(f"negative prompt embedding in {str(path)!r} is {tuple(emb.shape)}; the model's text "
                         f"width is {text_dim}: encode it with the text encoder of the training shards")
    return emb
