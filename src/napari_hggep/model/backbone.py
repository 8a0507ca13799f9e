"""torchvision ShuffleNet v2 x0.5 stages S3, S4, S5 (conv1, stage2..4, conv5; no max-pool)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

STAGE_CHANNELS = (96, 192, 1024)


class ShuffleNetStages(nn.Module):
    """Returns the outputs of stage3 (96 ch), stage4 (192 ch) and conv5 (1024 ch).

    Random init by default; ``weights_path`` loads a local torchvision state dict
    (nothing is downloaded).
    """

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        from torchvision.models import shufflenet_v2_x0_5

        net = shufflenet_v2_x0_5(weights=None)
        if weights_path is not None:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if [m for m in missing if not m.startswith("fc.")]:
                raise ValueError(f"{weights_path}: not a shufflenet_v2_x0_5 state dict (missing {missing[:3]}...)")
        self.conv1 = net.conv1
        self.stage2 = net.stage2
        self.stage3 = net.stage3
        self.stage4 = net.stage4
        self.conv5 = net.conv5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        x = self.stage2(x)
        s3 = self.stage3(x)
        s4 = self.stage4(s3)
        s5 = self.conv5(s4)
        return s3, s4, s5
