"""MedCLIP's vision tower as a torch module (the ``medclip_swin`` entry of
`core.encoders.architectures`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MedClipVision"]


class MedClipVision(nn.Module):
    """MedCLIP's vision tower: Swin-tiny → pooler (768) → linear projection without bias (512).

    Parameter names follow the released checkpoint (``vision_model.model.*``,
    ``vision_model.projection_head.weight``) once the ``vision_model.`` prefix is stripped.
    """

    def __init__(self, config: Any, dim: int) -> None:
        super().__init__()
        from transformers import SwinModel

        self.model = SwinModel(config)
        self.projection_head = nn.Linear(int(self.model.num_features), dim, bias=False)

    @property
    def config(self) -> Any:
        """The Swin backbone's config (transformers models carry theirs as ``config`` too)."""
        return self.model.config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model(pixel_values=pixel_values).pooler_output
        projected: torch.Tensor = self.projection_head(pooled)
        return projected
