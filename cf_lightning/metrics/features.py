"""Per-frame feature extractors and scores for the long-video metrics.

The paper's consistency numbers use DINOv2 (structural identity) and CLIP (frame appearance) features.
Those need weights, so every metric takes a pluggable :class:`FeatureExtractor`: the weight-free
:class:`PixelStatsExtractor` makes the metrics usable (and testable) on a CPU with no downloads, and
:class:`HFImageExtractor` loads a local DINOv2 / CLIP checkpoint for numbers comparable to the paper.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps frames ``[N, 3, H, W]`` in ``[0, 1]`` to one feature vector per frame, ``[N, D]``."""

    def __call__(self, frames: torch.Tensor) -> torch.Tensor: ...


def check_frames(frames: torch.Tensor, who: str) -> None:
    """Raise a ValueError naming ``who`` unless ``frames`` is an RGB batch ``[N, 3, H, W]``."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"{who} expects frames [N, 3, H, W] in [0, 1], got shape {tuple(frames.shape)}")


class PixelStatsExtractor:
    """Weight-free, deterministic features: a coarse centred thumbnail plus per-channel colour histograms.

    The thumbnail keeps layout (what DINO's structural identity measures), the histograms keep colour
    distribution (what frame-level CLIP similarity is most sensitive to). Pixels are centred on 0.5
    because cosines of raw, all-positive pixels are dominated by mean brightness (any two images score
    about 0.8). Each part is unit-normalised so both weigh the same in the cosine.
    """

    def __init__(self, size: int = 16, bins: int = 8) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.size = size
        self.bins = bins

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        check_frames(frames, "PixelStatsExtractor")
        x = frames.float().clamp(0, 1)
        n = x.shape[0]
        thumbnail = (F.adaptive_avg_pool2d(x, self.size) - 0.5).flatten(1)
        # bincount instead of one_hot: the histogram of a large frame batch stays O(pixels) in memory
        bin_of = (x * self.bins).long().clamp_max(self.bins - 1)
        offsets = torch.arange(n * 3, device=x.device).view(n, 3, 1, 1) * self.bins
        counts = torch.bincount((bin_of + offsets).flatten(), minlength=n * 3 * self.bins)
        histogram = counts.view(n, 3 * self.bins).float() / (x.shape[2] * x.shape[3]) - 1.0 / self.bins
        return torch.cat([F.normalize(thumbnail, dim=1), F.normalize(histogram, dim=1)], dim=1)


def laplacian_sharpness(frames: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of the luma, one score per frame ``[N]``; higher = sharper.

    A weight-free per-frame quality statistic for :class:`~cf_lightning.metrics.QualityDrift`: long
    autoregressive rollouts typically lose detail (blur, over-smoothing) before anything else.
    """
    check_frames(frames, "laplacian_sharpness")
    weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device).view(1, 3, 1, 1)
    luma = (frames.float().clamp(0, 1) * weights).sum(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=frames.device)
    response = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3))
    return response.flatten(1).var(dim=1)


class HFImageExtractor:
    """Image features from a local Hugging Face DINOv2 or CLIP checkpoint directory (offline).

    Models with ``get_image_features`` (CLIP, SigLIP) give their projected image embedding (CLIP-F);
    others (DINOv2) give ``pooler_output`` (the normalised CLS token), else the first token. The image
    processor's config is read only for its resize / crop / normalisation settings, which are applied
    with ``torch.nn.functional.interpolate`` on tensors, so frames never round-trip through PIL and no
    torchvision is needed. The model follows the device of the frames it is given.

    This is deliberately not an ``nn.Module``: a metric holding it inside a LightningModule must not put
    the feature network's weights into checkpoints or into ``parameters()`` handed to an optimizer.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"HFImageExtractor needs a local checkpoint directory, got {str(path)!r}")
        # transformers is the optional "wan" extra, so it is imported only when an extractor is built
        from transformers import AutoImageProcessor, AutoModel

        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self.dtype = dtype
        self.resize = self._size_of(processor.size) if getattr(processor, "do_resize", True) else None
        self.crop = self._size_of(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
        normalize = getattr(processor, "do_normalize", True)
        mean = processor.image_mean if normalize else [0.0, 0.0, 0.0]
        std = processor.image_std if normalize else [1.0, 1.0, 1.0]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def _size_of(size: object) -> int | tuple[int, int]:
        """``shortest_edge`` as an int, or ``(height, width)``, from a processor size dict."""
        shortest = size.get("shortest_edge")  # type: ignore[attr-defined]
        if shortest is not None:
            return int(shortest)
        height, width = size.get("height"), size.get("width")  # type: ignore[attr-defined]
        if height is None or width is None:
            raise ValueError(f"image processor size needs shortest_edge or height/width, got {size}")
        return int(height), int(width)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[N, 3, H, W]`` in ``[0, 1]`` -> normalised model input at the processor's size."""
        check_frames(frames, "HFImageExtractor")
        x = frames.float().clamp(0, 1)
        if self.resize is not None:
            if isinstance(self.resize, int):  # shortest edge, aspect kept (transformers' rounding)
                h, w = x.shape[-2:]
                short, long = (h, w) if h <= w else (w, h)
                new_long = int(self.resize * long / short)
                target = (self.resize, new_long) if h <= w else (new_long, self.resize)
            else:
                target = self.resize
            x = F.interpolate(x, size=target, mode="bicubic", align_corners=False, antialias=True)
        if self.crop is not None:
            ch, cw = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            h, w = x.shape[-2:]
            if ch > h or cw > w:
                raise ValueError(f"center crop {(ch, cw)} is larger than the resized frame {(h, w)}")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(frames)
        if self.model.device != pixels.device:
            self.model.to(pixels.device)
        pixels = pixels.to(self.dtype)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixels)
            features = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            out = self.model(pixel_values=pixels)
            pooled = getattr(out, "pooler_output", None)
            features = pooled if pooled is not None else out.last_hidden_state[:, 0]
        return features.float()


class HFTextExtractor:
    """Prompt embeddings from the text tower of a local CLIP checkpoint directory (CLIP-T).

    ``get_text_features`` gives the projected text embedding, in the space of the projected image
    embedding that :class:`HFImageExtractor` returns for the same checkpoint; pass that extractor's
    ``model`` to share one set of weights. Prompts longer than the tokenizer's limit are truncated, as
    CLIP itself was trained.
    """

    def __init__(self, path: str | os.PathLike[str], model: object | None = None) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"HFTextExtractor needs a local CLIP checkpoint directory, got {str(path)!r}")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = model if model is not None else AutoModel.from_pretrained(path, local_files_only=True).eval()
        if not hasattr(self.model, "get_text_features"):
            raise ValueError(f"{str(path)!r} holds a {type(self.model).__name__}, which has no text tower; CLIP-T "
                             "needs a CLIP-style checkpoint")
        self.model.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model.get_text_features(**{k: v.to(device) for k, v in tokens.items()})
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return features.float()
