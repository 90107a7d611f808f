"""SeqBoat: Sparse Modular Activation (SMA). A router picks, per token, whether a GAU (gated attention unit)
runs on it; the GAU attends only among the tokens picked.

Shapes in letters: B batch, L length, D d_model, N ``ndim`` (EMA dimensions), Z ``z_dim``, E ``h_dim``,
w ``window``, n the largest number of active tokens in a batch row.

    s = SiLU(EMA(LayerNorm(x)))                              Mega's damped EMA (below), [B, L, D]
    [u (2) | hx (D)] = hx_proj(s)
    pi = softmax(u / tau),  tau = exp(theta)                 theta init log(init_temp_scale * sqrt(D))
    active_t = (argmax pi_t == 1);  g_t = max pi_t           g is the differentiable scale (no Gumbel noise)
    compress: the active tokens of each row, in order       [B, n, D], rank r = index among the active
    [z | r | v] = SiLU(mx_proj(s_active));  q, k = gamma_{q,k} * z + beta_{q,k}
    a_i = sum_j relu(q_i . k_j / c + b(pos_i - pos_j))^2 v_j over active j with 0 <= r_i - r_j <= w
          (non-causal: |r_i - r_j| <= w); c = w (causal) or 2w; b a learned bias of the ORIGINAL offset,
          clamped to +-(max_positions - 1)
    h = h_proj(a * r), scattered back (inactive tokens get 0);  h <- g * h
    out = SiLU(hx + h + x)

The window counts active tokens only, so the span in the original sequence is unbounded. The local attention
runs in blocks of w compressed tokens, each against its own and the previous block (and the next one when
non-causal): O(n * w * (Z + E)) work and O(n * w) scores, never an L x L matrix.

Mega EMA, per channel d and EMA dimension m: p = sigmoid(delta), q = 1 - p * sigmoid(alpha),
kernel k_l[d] = sum_m gamma[d, m] / sqrt(N) * p[d, m] * beta[d, m] * q[d, m]^l, EMA(x) = k * x + omega * x
(the convolution via ``mmseq.kernels.fft_conv``); its recurrence is h_t = p * beta * x_t + q * h_{t-1},
y_t = sum_m gamma / sqrt(N) * h_t + omega * x_t. Non-causal builds add a second kernel run backwards in time.
The paper's EMA kernel truncation (4000 on SC10) is not offered: the kernel spans the whole sequence, as the
recurrence does, so streaming stays exact.

Options: ``force_active`` (None: the router decides; True: every token active; False: none) and
``forward(x, dense=True)``, which computes the same GAU over all L tokens under an explicit L x L mask of the
rule above (ranks from a cumsum), without compressing: the reference the compressed path is tested against.
``self.last_activation_rate`` holds the fraction of active tokens of the last forward; ``activation_rates(model)``
collects it from every SeqBoat in a model, for logging.

Streaming (causal): the EMA state [B, D, N] and the keys/values/positions of the last w active tokens of each
row (a row's cache moves only when its token is active); ``step`` reproduces ``forward``.

Defaults follow the SC10 config where they apply: ndim 16, window 128, z_dim = D / 2, h_dim = 2D, init_temp_scale
1.0, relu^2 scores, simple relative-position bias. SC10's BatchNorm pre-norm mixes positions within a batch
(not causal), so the pre-norm here is LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.kernels import fft_conv

from .base import Mixer, register_mixer


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _trunc_normal_(t: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
    return nn.init.trunc_normal_(t, mean, std, mean - 2 * std, mean + 2 * std)


class MegaEMA(nn.Module):
    """Mega's multi-dimensional damped EMA: x [B, L, D] -> [B, L, D]; ``step`` is its recurrence."""

    def __init__(self, d_model: int, ndim: int, bidirectional: bool = False) -> None:
        super().__init__()
        self.d_model, self.ndim, self.bidirectional = d_model, ndim, bidirectional
        kd = 2 * d_model if bidirectional else d_model  # one kernel per direction
        self.delta = nn.Parameter(torch.empty(kd, ndim))
        self.alpha = nn.Parameter(torch.empty(kd, ndim))
        self.beta = nn.Parameter(torch.empty(kd, ndim))
        self.gamma = nn.Parameter(torch.empty(kd, ndim))
        self.omega = nn.Parameter(torch.empty(d_model))
        with torch.no_grad():
            # Mega's init: delta, alpha ~ N(0, 0.2) (p, alpha near 1/2: medium decay); beta ~ N(+-1, 0.02)
            # alternating in sign over the EMA dimensions (found more stable); gamma, omega ~ N(0, 1).
            _trunc_normal_(self.delta, 0.2)
            _trunc_normal_(self.alpha, 0.2)
            sign = torch.ones(ndim)
            sign[1::2] = -1.0
            _trunc_normal_(self.beta, 0.02)
            self.beta.add_(sign)
            _trunc_normal_(self.gamma, 1.0)
            _trunc_normal_(self.omega, 1.0)

    def _coeffs(self, dtype: torch.dtype):
        p = torch.sigmoid(self.delta.to(dtype))
        q = 1.0 - p * torch.sigmoid(self.alpha.to(dtype))
        return p * self.beta.to(dtype), q, self.gamma.to(dtype) * self.ndim ** -0.5  # input weight, decay, output

    def kernel(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """k [kd, length]: k[d, l] = sum_m c[d, m] * b[d, m] * q[d, m]^l."""
        b, q, c = self._coeffs(dtype)
        l = torch.arange(length, device=q.device, dtype=dtype)
        vander = torch.exp(l * torch.log(q)[..., None])  # [kd, N, length]
        return torch.einsum("dnl,dn->dl", vander * b[..., None], c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            u = x.transpose(1, 2).to(dtype)  # [B, D, L]
            k = self.kernel(x.shape[1], dtype)
            if self.bidirectional:
                k1, k2 = k.split(self.d_model, dim=0)
                y = fft_conv(u, k1, causal=True) + fft_conv(u.flip(-1), k2, causal=True).flip(-1)
            else:
                y = fft_conv(u, k, causal=True)
            return (y.transpose(1, 2) + self.omega.to(dtype) * x.to(dtype)).to(x.dtype)

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t [B, D], h [B, D, N] -> (y_t [B, D], new h). Causal only."""
        dtype = h.dtype
        b, q, c = self._coeffs(dtype)
        h = b * x_t.to(dtype)[..., None] + q * h
        y = torch.einsum("bdn,dn->bd", h, c) + self.omega.to(dtype) * x_t.to(dtype)
        return y.to(x_t.dtype), h


@dataclass
class SeqBoatState:
    """Streaming state: EMA state [B, D, N]; per row, the last w active tokens' keys [B, w, Z], values
    [B, w, E], original positions [B, w] and validity [B, w] (oldest first); the position t."""

    ema: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    t: int = 0


@register_mixer("seqboat")
class SeqBoat(Mixer):
    """SeqBoat layer (Sparse Modular Activation of a local GAU behind a Mega EMA).

    Args:
        ndim: N, EMA dimensions per channel (default 16).
        window: w, active tokens each active query sees before itself (default 128; both sides if non-causal).
        z_dim: Z, width of q / k (default D // 2). h_dim: E, width of v and the gate r (default 2D).
        init_temp_scale: router temperature at init = init_temp_scale * sqrt(D) (default 1.0).
        max_positions: relative-position bias entries per side; larger offsets share the last (default 1024).
        force_active: None (the router decides), True (every token active) or False (none); also an attribute.
    """

    test_hparams = {"ndim": 4, "window": 3, "max_positions": 4}

    def __init__(self, d_model: int, *, causal: bool = True, ndim: int = 16, window: int = 128,
                 z_dim: int | None = None, h_dim: int | None = None, init_temp_scale: float = 1.0,
                 max_positions: int = 1024, force_active: bool | None = None) -> None:
        super().__init__(d_model, causal=causal)
        z_dim = max(1, d_model // 2) if z_dim is None else z_dim
        h_dim = 2 * d_model if h_dim is None else h_dim
        for name, value in (("ndim", ndim), ("window", window), ("z_dim", z_dim), ("h_dim", h_dim),
                            ("max_positions", max_positions)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not init_temp_scale > 0:
            raise ValueError(f"init_temp_scale must be > 0, got {init_temp_scale}")
        if force_active not in (None, True, False):
            raise ValueError(f"force_active must be None, True or False, got {force_active!r}")
        self.ndim, self.window, self.z_dim, self.h_dim = ndim, window, z_dim, h_dim
        self.max_positions, self.force_active = max_positions, force_active

        self.norm = nn.LayerNorm(d_model)
        self.ema = MegaEMA(d_model, ndim, bidirectional=not causal)
        self.hx_proj = nn.Linear(d_model, 2 + d_model)  # [u (router logits, 2) | hx (D)]
        self.mx_proj = nn.Linear(d_model, z_dim + 2 * h_dim)  # [z | r | v]
        self.h_proj = nn.Linear(h_dim, d_model)
        self.gamma = nn.Parameter(torch.empty(2, z_dim))  # q / k scales
        self.beta = nn.Parameter(torch.zeros(2, z_dim))  # q / k offsets
        # Router temperature tau = exp(theta): sqrt(D) * init_temp_scale at init, the scale of u's logits.
        self.temp = nn.Parameter(torch.full((1,), math.log(init_temp_scale * math.sqrt(d_model))))
        self.temp._no_weight_decay = True
        # Relative-position bias by original offset pos_i - pos_j: 0..M-1 causal, -(M-1)..M-1 non-causal.
        # Zero at init (the paper: N(0, 0.02)); under relu^2 a negative entry would start with no gradient.
        self.rel_pos_bias = nn.Parameter(torch.zeros(max_positions if causal else 2 * max_positions - 1))
        # Projections as in the paper: N(0, 0.02) weights, zero biases; gamma ~ N(0, 0.02), beta = 0.
        for lin in (self.hx_proj, self.mx_proj, self.h_proj):
            _trunc_normal_(lin.weight.data, 0.02)
            nn.init.zeros_(lin.bias)
        _trunc_normal_(self.gamma.data, 0.02)
        self.last_metrics: dict[str, torch.Tensor] = {}

    @property
    def last_activation_rate(self) -> torch.Tensor | None:
        """Fraction of active tokens in the last forward (None before the first)."""
        return self.last_metrics.get("activation_rate")

    # ------------------------------------------------------------------------------------------------------
    # pieces shared by every path
    # ------------------------------------------------------------------------------------------------------

    def _front(self, s: torch.Tensor):
        """s = SiLU(EMA(norm(x))) -> hx, the router's g = max pi, and the active mask (force_active applied)."""
        u, hx = self.hx_proj(s).split([2, self.d_model], dim=-1)
        dtype = _compute_dtype(u)
        probs = torch.softmax(u.to(dtype) / self.temp.to(dtype).exp(), dim=-1)
        g, choice = probs.max(dim=-1)
        if self.force_active is None:
            active = choice == 1
        else:
            active = torch.full_like(choice, bool(self.force_active), dtype=torch.bool)
        return hx, g, active

    def _gau_inputs(self, s: torch.Tensor):
        """s [..., D] -> q, k [..., Z], v, r [..., E]."""
        z, r, v = F.silu(self.mx_proj(s)).split([self.z_dim, self.h_dim, self.h_dim], dim=-1)
        q = z * self.gamma[0] + self.beta[0]
        k = z * self.gamma[1] + self.beta[1]
        return q, k, v, r

    def _bias(self, offset: torch.Tensor) -> torch.Tensor:
        """Learned bias of original offsets pos_i - pos_j (long tensor, any shape), clamped to the table."""
        M = self.max_positions
        idx = offset.clamp(0, M - 1) if self.causal else offset.clamp(-(M - 1), M - 1) + (M - 1)
        return self.rel_pos_bias[idx]

    def _scores(self, q, k, offset, allowed) -> torch.Tensor:
        """relu(q . k / c + b(offset))^2 on allowed pairs, 0 elsewhere; q [..., i, Z], k [..., j, Z]."""
        c = self.window if self.causal else 2 * self.window
        s = (q / c) @ k.transpose(-1, -2) + self._bias(offset)
        return F.relu(s.masked_fill(~allowed, 0.0)).square()

    # ------------------------------------------------------------------------------------------------------
    # the GAU over the active tokens: compressed (blocked local attention) and dense (L x L mask) paths
    # ------------------------------------------------------------------------------------------------------

    def _local_attention(self, q, k, v, pos, valid) -> torch.Tensor:
        """Compressed tokens q, k [B, n, Z], v [B, n, E], original positions pos [B, n], valid [B, n] -> [B, n, E].

        Blocks of w ranks; block b's queries meet the keys of blocks b-1, b (and b+1 when non-causal), and the
        rank difference decides the window. Memory O(n * w)."""
        w, (B, n, Z) = self.window, q.shape
        nb = -(-n // w)
        back, fwd = w, (0 if self.causal else w)
        span = w + back + fwd
        pad = nb * w - n

        def keyside(t, value=0):  # [B, n, ...] -> [B, nb, span, ...] windows of keys per block
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (back, pad + fwd), value=value)
            t = t.unfold(1, span, w)  # [B, nb, ..., span]
            return t.movedim(-1, 2)

        qb = F.pad(q, (0, 0, 0, pad)).view(B, nb, w, Z)
        posq = F.pad(pos, (0, pad)).view(B, nb, w)
        kb, vb = keyside(k), keyside(v)
        posk, validk = keyside(pos), keyside(valid, value=False)
        i = torch.arange(w, device=q.device)[:, None]
        j = torch.arange(span, device=q.device)[None, :]
        diff = i + back - j  # rank_i - rank_j, the same in every block
        in_window = (diff >= 0) & (diff <= w) if self.causal else diff.abs() <= w
        allowed = in_window & validk[:, :, None, :]  # [B, nb, w, span]
        A = self._scores(qb, kb, posq[..., :, None] - posk[..., None, :], allowed)
        out = A.to(vb.dtype) @ vb  # [B, nb, w, E]
        return out.reshape(B, nb * w, -1)[:, :n]

    def _gau_compressed(self, s: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        B, L, D = s.shape
        count = active.sum(1)
        n = int(count.max()) if L else 0
        if n == 0:
            return s.new_zeros(B, L, D)
        # Active positions first, in order (a stable sort of "inactive"); slots past a row's count are padding.
        order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :n]  # [B, n]
        valid = torch.arange(n, device=s.device)[None, :] < count[:, None]
        sc = torch.gather(s, 1, order[..., None].expand(-1, -1, D))
        q, k, v, r = self._gau_inputs(sc)
        a = self._local_attention(q, k, v, order, valid)
        hc = self.h_proj(a * r) * valid[..., None]
        # Scatter back: order holds distinct positions, so every active token gets its row and the padding
        # slots write zeros onto inactive tokens.
        return hc.new_zeros(B, L, hc.shape[-1]).scatter(1, order[..., None].expand(-1, -1, hc.shape[-1]), hc)

    def _gau_dense(self, s: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        L = s.shape[1]
        q, k, v, r = self._gau_inputs(s)
        rank = torch.cumsum(active.long(), dim=1) - 1  # [B, L]
        diff = rank[:, :, None] - rank[:, None, :]
        in_window = (diff >= 0) & (diff <= self.window) if self.causal else diff.abs() <= self.window
        allowed = in_window & active[:, :, None] & active[:, None, :]
        p = torch.arange(L, device=s.device)
        A = self._scores(q, k, p[:, None] - p[None, :], allowed)
        return self.h_proj((A.to(v.dtype) @ v) * r) * active[..., None]

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None, dense: bool = False) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]. ``dense=True`` runs the uncompressed L x L reference of the same GAU."""
        self.check_input(x)
        if context is not None:
            raise ValueError("seqboat is a self mixer; it takes no context")
        s = F.silu(self.ema(self.norm(x)))
        hx, g, active = self._front(s)
        self.last_metrics = {"activation_rate": active.float().mean().detach()}
        h = self._gau_dense(s, active) if dense else self._gau_compressed(s, active)
        return F.silu(hx + h * g[..., None].to(h.dtype) + x)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x, dense=True)

    # ------------------------------------------------------------------------------------------------------
    # streaming
    # ------------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> SeqBoatState:
        if not self.causal:
            raise NotImplementedError("step() needs a causal seqboat mixer")
        p = self.h_proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        B, w = batch_size, self.window
        ema_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return SeqBoatState(
            ema=torch.zeros(B, self.d_model, self.ndim, device=device, dtype=ema_dtype),
            k=torch.zeros(B, w, self.z_dim, device=device, dtype=dtype),
            v=torch.zeros(B, w, self.h_dim, device=device, dtype=dtype),
            pos=torch.zeros(B, w, dtype=torch.long, device=device),
            valid=torch.zeros(B, w, dtype=torch.bool, device=device),
        )

    def step(self, x_t: torch.Tensor, state: SeqBoatState) -> tuple[torch.Tensor, SeqBoatState]:
        """x_t [B, D] -> y_t [B, D]. An active token attends to its row's cached active tokens and itself,
        then joins the cache (dropping the oldest); an inactive one leaves the cache as it was."""
        e, ema = self.ema.step(self.norm(x_t), state.ema)
        s = F.silu(e)
        hx, g, active = self._front(s)
        q, k, v, r = self._gau_inputs(s)
        t = state.t
        keys = torch.cat([state.k, k[:, None].to(state.k.dtype)], dim=1)  # [B, w + 1, Z]
        vals = torch.cat([state.v, v[:, None].to(state.v.dtype)], dim=1)
        pos = torch.cat([state.pos, torch.full_like(state.pos[:, :1], t)], dim=1)
        valid = torch.cat([state.valid, torch.ones_like(state.valid[:, :1])], dim=1)
        A = self._scores(q[:, None], keys, (t - pos)[:, None], valid[:, None])  # [B, 1, w + 1]
        a = (A.to(vals.dtype) @ vals)[:, 0]
        h = self.h_proj(a * r) * (active * g)[:, None].to(a.dtype)
        y = F.silu(hx + h + x_t)
        keep = active[:, None]
        new = SeqBoatState(
            ema=ema,
            k=torch.where(keep[..., None], keys[:, 1:], state.k),
            v=torch.where(keep[..., None], vals[:, 1:], state.v),
            pos=torch.where(keep, pos[:, 1:], state.pos),
            valid=torch.where(keep, valid[:, 1:], state.valid),
            t=t + 1,
        )
        return y, new


def activation_rates(model: nn.Module) -> dict[str, float]:
    """{module name: fraction of active tokens in its last forward} for every SeqBoat inside ``model``
    (the model itself is named "seqboat"); modules that have not run a forward yet are left out."""
    return {
        (name or "seqboat"): float(m.last_activation_rate)
        for name, m in model.named_modules()
        if isinstance(m, SeqBoat) and m.last_activation_rate is not None
    }
