"""The LPIPS (v0.1, AlexNet) network in torch.  Imported lazily by :mod:`dig2dig.metrics.lpips`.

Architecture (Zhang et al. 2018, ``lpips`` 0.1.4 with ``net='alex', version='0.1'``):

* a fixed scaling layer, (x - shift) / scale with shift = (-.030, -.088, -.188) and
  scale = (.458, .448, .450);
* the five ReLU stages of torchvision's ``alexnet().features``;
* each stage's activations unit-normalised across channels, squared differences, a 1x1
  convolution without bias ("lin" head, non-negative weights in the released model), and a
  spatial mean; the five terms are summed.
"""

from __future__ import annotations

import torch
from torch import nn

# index in torchvision's alexnet().features -> (in, out, kernel, stride, padding) of its convolutions
_CONV_LAYERS = {
    0: (3, 64, 11, 4, 2),
    3: (64, 192, 5, 1, 2),
    6: (192, 384, 3, 1, 1),
    8: (384, 256, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
STAGE_CHANNELS = (64, 192, 384, 256, 256)


class AlexFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (same parameter names: ``features.<i>.weight``/``bias``),
    returning the five ReLU outputs LPIPS taps (relu1 .. relu5)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(12):
            if i in _CONV_LAYERS:
                cin, cout, k, s, p = _CONV_LAYERS[i]
                layers.append(nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p))
            elif i in (2, 5):
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self._taps = (1, 4, 7, 9, 11)  # indices of relu1..relu5

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out.append(x)
        return out


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk.  ``forward(x0, x1)`` takes N x 3 x H x W in [-1, 1] and
    returns the N distances."""

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = AlexFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in STAGE_CHANNELS)

    @staticmethod
    def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        f0 = self.net((x0 - self.shift) / self.scale)
        f1 = self.net((x1 - self.shift) / self.scale)
        total: torch.Tensor | float = 0.0
        for lin, a, b in zip(self.lins, f0, f1):
            d = (self._unit(a) - self._unit(b)) ** 2
            total = total + lin(d).mean(dim=(2, 3), keepdim=False)
        assert isinstance(total, torch.Tensor)  # five stages were summed
        return total.view(-1)
