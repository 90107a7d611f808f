"""The optional adversarial term of the CT tokenizer: a 3D discriminator, non-saturating losses, LeCAM and R1.

BTB3D trains its tokenizer against a StyleGAN-like 3D discriminator (refs: btb3d.md section 2): a 3^3 conv,
three down-sampling residual blocks (conv, LeakyReLU(0.2), a [1, 2, 1] binomial blur-pool with stride 2 on both
branches, a 1x1x1 skip, conv, (res + x) / sqrt 2), a last conv, then Linear -> LeakyReLU -> Linear to one logit;
no normalisation, Xavier init. Its flatten size is tied to 512 x 512 x frames inputs; here the last map is
averaged over space instead, so the same discriminator judges volumes of any size (training crops, the CPU
configs' 64 x 64 grids).

Losses (non-saturating): generator ``softplus(-D(fake))``; discriminator ``softplus(-D(real)) + softplus(D(fake))``
plus LeCAM regularisation ``lecam_weight * (relu(D(real) - ema_fake)^2 + relu(ema_real - D(fake))^2)``, the EMAs of
the mean real and fake logits kept with ``decay`` (Tseng et al. 2021; BTB3D: weight 0.001, decay 0.999), and a lazy
R1 penalty ``r1_cost / 2 * |grad_x D(real)|^2`` every ``r1_every`` steps, scaled by ``r1_every`` (StyleGAN2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BlurPool3d(nn.Module):
    """A fixed [1, 2, 1]^3 / 64 binomial blur, then stride 2 (reflect padding): x [B, C, D, H, W] -> half size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = k[:, None, None] * k[None, :, None] * k[None, None, :]
        self.register_buffer("kernel", (kernel / kernel.sum()).expand(channels, 1, 3, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1-slice volume cannot be reflect-padded along depth: replicate padding there behaves the same for it.
        mode = "reflect" if min(x.shape[2:]) > 1 else "replicate"
        x = F.pad(x, (1, 1, 1, 1, 1, 1), mode=mode)
        return F.conv3d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


class DownResBlock3d(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.blur_main = BlurPool3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.blur_skip = BlurPool3d(c_in)
        self.skip = nn.Conv3d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(self.blur_main(h)), 0.2)
        return (h + self.skip(self.blur_skip(x))) / math.sqrt(2)


class Discriminator3D(nn.Module):
    """Volumes [B, C, D, H, W] -> one logit per volume [B]."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] | list[int] = (8, 16, 32),
                 hidden: int = 32) -> None:
        super().__init__()
        widths = list(widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        self.stem = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(DownResBlock3d(a, b) for a, b in zip([widths[0], *widths[:-1]], widths,
                                                                          strict=True))
        self.last = nn.Conv3d(widths[-1], widths[-1], 3, padding=1)
        self.fc1 = nn.Linear(widths[-1], hidden)
        self.fc2 = nn.Linear(hidden, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), 0.2)
        for block in self.blocks:
            h = block(h)
        h = F.leaky_relu(self.last(h), 0.2).mean(dim=(2, 3, 4))
        return self.fc2(F.leaky_relu(self.fc1(h), 0.2)).squeeze(-1)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


class DiscriminatorLoss(nn.Module):
    """Non-saturating discriminator loss with LeCAM (EMA buffers, saved in checkpoints) and lazy R1."""

    def __init__(self, lecam_weight: float = 0.001, decay: float = 0.999, r1_cost: float = 10.0,
                 r1_every: int = 20) -> None:
        super().__init__()
        self.lecam_weight, self.decay, self.r1_cost, self.r1_every = lecam_weight, decay, r1_cost, r1_every
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("ema_started", torch.zeros((), dtype=torch.bool))

    def forward(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                step: int) -> dict[str, torch.Tensor]:
        """real, fake: [B, C, D, H, W] (fake detached from the generator) -> {"loss", "gan", "lecam", "r1"}."""
        use_r1 = self.r1_cost > 0 and self.r1_every > 0 and step % self.r1_every == 0
        real = real.detach().requires_grad_(use_r1)
        real_logits = discriminator(real)
        fake_logits = discriminator(fake.detach())
        gan = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        with torch.no_grad():
            r, f = real_logits.mean().float(), fake_logits.mean().float()
            if bool(self.ema_started):
                self.ema_real.mul_(self.decay).add_((1 - self.decay) * r)
                self.ema_fake.mul_(self.decay).add_((1 - self.decay) * f)
            else:
                self.ema_real.copy_(r)
                self.ema_fake.copy_(f)
                self.ema_started.fill_(True)
        lecam = (F.relu(real_logits - self.ema_fake).pow(2).mean()
                 + F.relu(self.ema_real - fake_logits).pow(2).mean())
        r1 = real_logits.new_zeros(())
        if use_r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean() * (self.r1_cost / 2) * self.r1_every
        return {"loss": gan + self.lecam_weight * lecam + r1, "gan": gan, "lecam": lecam, "r1": r1}
