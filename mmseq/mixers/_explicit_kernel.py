"""Shared forward and streaming for mixers whose long kernel is an explicit tensor (longconv, sgconv)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmseq.kernels import fft_conv

from .base import Mixer


class ExplicitKernelMixer(Mixer):
    """A mixer y = head(k * u + D u) over ``channels`` copies of the input.

    Subclasses define ``kernel(L) -> [1 or 2, C*H, L]`` (the second kernel reads the future when noncausal),
    ``_head(y [..., C*H]) -> [..., H]``, and the parameters ``D [C, H]`` and ``channels``.
    """

    channels: int

    def kernel(self, L: int) -> torch.Tensor:
        raise NotImplementedError

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        L = x.shape[1]
        k = self.kernel(L)
        u = x.transpose(1, 2).repeat(1, self.channels, 1)  # [B, C*H, L], channel c*H + h reads u[h]
        D = self.D.reshape(-1)
        if self.causal:
            y = fft_conv(u, k[0], D)
        else:
            CH = u.shape[1]
            k_future = F.pad(k[1], (1, 0))[:, :L]  # delayed one step: u[t] is counted by k0[0] and D only
            z = fft_conv(torch.cat([u, u.flip(-1)], dim=1), torch.cat([k[0], k_future], dim=0))
            y = z[:, :CH] + z[:, CH:].flip(-1) + u * D[:, None].to(u.dtype)
        return self._head(y.transpose(1, 2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """The inputs seen so far: [B, H, 0] at the start."""
        if not self.causal:
            raise NotImplementedError(
                f"step() needs a causal {self.mixer_name} mixer (a bidirectional kernel reads the future)")
        p = self.D
        return torch.zeros(batch_size, self.d_model, 0, device=device or p.device, dtype=dtype or p.dtype)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t: [B, D] -> y_t: [B, D]; state: the input buffer [B, H, t] -> [B, H, t+1] (t+1 <= l_max)."""
        buf = torch.cat([state, x_t[..., None].to(state.dtype)], dim=-1)
        k = self.kernel(buf.shape[-1])[0]  # [C*H, t+1]
        u = buf.repeat(1, self.channels, 1)  # [B, C*H, t+1]
        y = (u.flip(-1) * k).sum(-1) + self.D.reshape(-1) * u[..., -1]
        return self._head(y.to(x_t.dtype)), buf
