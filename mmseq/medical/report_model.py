"""Report generation from CT tokens: a causal mixer decoder reading the tokenizer's codes as a prefix.

The tokenizer's LFQ codes ``[B, bits, d, h, w]`` (values +-1) are pooled to a fixed grid, projected to the
model width and placed before the report's text tokens; any causal mixer in ``mmseq.mixers`` then reads the
whole sequence, so Mamba, S4D, attention or a hybrid can write the report. Decoding steps the mixer stack one
token at a time with its recurrent state (a KV cache for attention), greedy or with a beam.

The text tokenizer is a byte-level BPE trained on the training reports with the ``tokenizers`` library; its
JSON is a constructor argument, so an exported model carries it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmseq.mixers.blocks import MixerStack
from mmseq.mixers.kv_policies import KVCachePolicy, set_cache_policy
from mmseq.runner.pretrained import PretrainedMixin

from .ctrate import ABNORMALITIES
from .report_encoder import CodeBagEncoder, code_histograms

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS = 0, 1, 2
ENCODERS = ("pool", "bag")


def train_bpe(texts: Sequence[str], vocab_size: int = 1000, min_frequency: int = 2) -> str:
    """A byte-level BPE trained on ``texts``; returns its JSON (what ``ReportGenerator`` takes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok.to_str()


def report_loss(logits: torch.Tensor, label_logits: torch.Tensor | None, text: torch.Tensor,
                labels: torch.Tensor | None, label_weight: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy of logits [B, T-1, V] against text [B, T] (pads ignored), plus ``label_weight``
    x the head's binary cross-entropy of label logits [B, 18] against labels [B, 18] when both are given."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), text[:, 1:].reshape(-1),
                           ignore_index=PAD)
    if label_weight and labels is not None and label_logits is not None:
        loss = loss + label_weight * F.binary_cross_entropy_with_logits(label_logits.float(), labels.float())
    return loss


def pool_codes(codes: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """codes [B, bits, d, h, w] -> [B, bits, *grid] by adaptive average pooling (identity when already there)."""
    if tuple(codes.shape[-3:]) == tuple(grid):
        return codes
    return F.adaptive_avg_pool3d(codes.float(), tuple(grid))


class ReportGenerator(PretrainedMixin, nn.Module):
    """(codes [B, bits, d, h, w], text ids [B, T]) -> next-token logits [B, T, vocab].

    ``prefix_grid``: the (d, h, w) grid the codes are pooled to; its cells are the prefix tokens.
    """

    def __init__(self, tokenizer_json: str, *, token_bits: int = 18, d_model: int = 128, n_layers: int = 4,
                 mixer: dict | None = None, prefix_grid: Sequence[int] = (4, 4, 4), mlp_ratio: float = 2.0,
                 dropout: float = 0.1, max_report_tokens: int = 256, encoder: str = "pool",
                 label_prompt: bool = False) -> None:
        super().__init__()
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        if [self.tokenizer.token_to_id(t) for t in SPECIALS] != list(range(len(SPECIALS))):
            raise ValueError(f"tokenizer_json must define the special tokens {SPECIALS} as ids 0..3 (use train_bpe)")
        if len(prefix_grid) != 3 or min(prefix_grid) < 1:
            raise ValueError(f"prefix_grid must be three positive sizes (d, h, w), got {list(prefix_grid)}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if label_prompt and encoder != "bag":
            raise ValueError("label_prompt needs the bag encoder (its head predicts the labels)")
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.prefix_grid = tuple(int(g) for g in prefix_grid)
        self.encoder_name = encoder
        self.label_prompt = label_prompt
        self.n_grid = self.prefix_grid[0] * self.prefix_grid[1] * self.prefix_grid[2]
        self.n_prefix = self.n_grid + (len(ABNORMALITIES) if label_prompt else 0)
        self.max_report_tokens = max_report_tokens
        if encoder == "bag":
            self.encoder = CodeBagEncoder(token_bits, d_model, self.n_grid, n_labels=len(ABNORMALITIES),
                                          dropout=dropout)
        else:
            self.code_proj = nn.Linear(token_bits, d_model)
        if label_prompt:
            # one learned token per (abnormality, absent/present); thresholds on the head's probabilities are
            # set from validation data after training and travel with the weights
            self.label_tokens = nn.Parameter(torch.randn(len(ABNORMALITIES), 2, d_model) * 0.02)
            self.register_buffer("label_thresholds", torch.full((len(ABNORMALITIES),), 0.5))
        self.prefix_pos = nn.Parameter(torch.randn(self.n_grid, d_model) * 0.02)
        self.embed = nn.Embedding(self.vocab_size, d_model)
        self.trunk = MixerStack(d_model, n_layers, dict(mixer or {"name": "attention", "n_heads": 4}), causal=True,
                                mlp_ratio=mlp_ratio, dropout=dropout)
        self.head = nn.Linear(d_model, self.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    # -- text -----------------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str], max_len: int | None = None) -> torch.Tensor:
        """texts -> ids [B, T]: <bos> report <eos>, right-padded with <pad>, cut at ``max_len`` tokens."""
        max_len = max_len or self.max_report_tokens
        rows = [[BOS, *self.tokenizer.encode(t).ids][: max_len - 1] + [EOS] for t in texts]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long)

    def decode_text(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(int(i))
        return self.tokenizer.decode(out).strip()

    # -- training -------------------------------------------------------------------------------------------
    def prepare_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, bits, d, h, w] of any grid -> what the encoder reads: codes average-pooled to
        ``prefix_grid`` (pool encoder), or the code histograms of its cells [B, P, 2**bits] (bag encoder).
        Idempotent, so data sets may store the result."""
        if self.encoder_name == "bag":
            return codes if codes.dim() == 3 else code_histograms(codes, self.prefix_grid)
        return pool_codes(codes, self.prefix_grid)

    def encode(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """codes [B, bits, d, h, w] -> (grid prefix tokens [B, P, D], label logits [B, 18] or None)."""
        codes = self.prepare_codes(codes)
        if self.encoder_name == "bag":
            feats, label_logits = self.encoder(codes)
            return feats + self.prefix_pos, label_logits
        pooled = codes.flatten(2).transpose(1, 2)  # [B, P, bits]
        return self.code_proj(pooled.to(self.code_proj.weight.dtype)) + self.prefix_pos, None

    @torch.no_grad()
    def predict_labels(self, codes: torch.Tensor) -> torch.Tensor:
        """Probabilities [B, 18] of CT-RATE's abnormalities from the head (bag encoder only)."""
        _, label_logits = self.encode(codes)
        if label_logits is None:
            raise ValueError("this report generator has no label head (encoder 'pool')")
        return torch.sigmoid(label_logits.float())

    def _prompt(self, label_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The label prompt [B, 18, D]: the given labels [B, 18], else the head's thresholded predictions."""
        if labels is None:
            labels = torch.sigmoid(label_logits.float()) >= self.label_thresholds
        idx = labels.long().clamp(0, 1)
        return self.label_tokens[torch.arange(idx.shape[1], device=idx.device), idx]

    def _prefix_and_logits(self, codes: torch.Tensor, labels: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        grid, label_logits = self.encode(codes)
        if self.label_prompt:
            grid = torch.cat([grid, self._prompt(label_logits, labels)], dim=1)
        return grid, label_logits

    def prefix(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, bits, d, h, w] -> prefix tokens [B, P (+ 18 with the label prompt), D]."""
        return self._prefix_and_logits(codes, labels)[0]

    def forward_with_labels(self, codes: torch.Tensor, text: torch.Tensor, labels: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(text logits [B, T, V], label logits [B, 18] or None); ``labels`` [B, 18] fill the label prompt
        (teacher forcing) when given, else the head's predictions do."""
        prefix, label_logits = self._prefix_and_logits(codes, labels)
        x = torch.cat([prefix, self.embed(text)], dim=1)
        return self.head(self.trunk(x)[:, self.n_prefix:]), label_logits

    def forward(self, codes: torch.Tensor, text: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at every text position [B, T, V]: position t predicts text[t + 1]."""
        return self.forward_with_labels(codes, text, labels)[0]

    def loss(self, codes: torch.Tensor, text: torch.Tensor, labels: torch.Tensor | None = None,
             label_weight: float = 0.0) -> torch.Tensor:
        """Report cross-entropy, plus ``label_weight`` x the head's binary cross-entropy when labels are given."""
        logits, label_logits = self.forward_with_labels(codes, text[:, :-1], labels)
        return report_loss(logits, label_logits, text, labels, label_weight)

    # -- decoding -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _read_prefix(self, codes: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Step the trunk through the prefix and <bos>; returns (logits [B, V] for the first word, state)."""
        x = torch.cat([self.prefix(codes), self.embed(torch.full((codes.shape[0], 1), BOS, device=codes.device))],
                      dim=1)
        state = self.trunk.init_state(codes.shape[0], device=x.device, dtype=x.dtype)
        for t in range(x.shape[1]):
            y, state = self.trunk.step(x[:, t], state)
        return self.head(y), state

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, *, max_new_tokens: int | None = None, beam_size: int = 1,
                 length_penalty: float = 1.0, cache_policy: KVCachePolicy | None = None) -> list[str]:
        """codes [B, bits, d, h, w] -> one report per volume (greedy when ``beam_size`` is 1).

        ``cache_policy`` (``mmseq.mixers.kv_policies``: ``SinkWindowCache``, ``LaCache``) bounds the KV cache of
        every attention layer of the trunk while decoding; give it ``sinks >= n_prefix + 1`` to keep the volume's
        tokens, the label prompt and <bos> whole. None keeps every entry. It is removed again afterwards."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        max_new = max_new_tokens or self.max_report_tokens
        was_training = self.training
        self.eval()
        if cache_policy is not None:
            set_cache_policy(self.trunk, cache_policy)
        try:
            if beam_size == 1:
                return self._greedy(codes, max_new)
            return [self._beam(codes[i:i + 1], max_new, beam_size, length_penalty) for i in range(codes.shape[0])]
        finally:
            self.train(was_training)
            if cache_policy is not None:
                set_cache_policy(self.trunk, None)

    def _greedy(self, codes: torch.Tensor, max_new: int) -> list[str]:
        logits, state = self._read_prefix(codes)
        out = torch.zeros(codes.shape[0], 0, dtype=torch.long, device=codes.device)
        done = torch.zeros(codes.shape[0], dtype=torch.bool, device=codes.device)
        for _ in range(max_new):
            nxt = logits.argmax(-1).masked_fill(done, PAD)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if bool(done.all()):
                break
            y, state = self.trunk.step(self.embed(nxt), state)
            logits = self.head(y)
        return [self.decode_text(row.tolist()) for row in out]

    def _next_logits_fn(self, codes: torch.Tensor, k: int):
        """A function (beam sources, last tokens, all tokens) -> next-token logits for the alive beams.

        Mixers whose streaming state is batch-first are stepped with their state reordered to follow the
        beams; for the others every step re-reads prefix and text in full (slower, same result)."""
        logits, state = self._read_prefix(codes)  # batch 1
        probe = self.trunk.init_state(7, device=codes.device, dtype=self.embed.weight.dtype)
        if _batch_first(probe, 7):
            holder = {"state": map_state(state, lambda s: s.repeat_interleave(k, dim=0))}

            def stepped(src: torch.Tensor, last: torch.Tensor, _tokens: list[list[int]]) -> torch.Tensor:
                holder["state"] = map_state(holder["state"], lambda s: s.index_select(0, src))
                y, holder["state"] = self.trunk.step(self.embed(last), holder["state"])
                return self.head(y)

            return logits, stepped
        prefix = self.prefix(codes)

        def recomputed(_src: torch.Tensor, _last: torch.Tensor, tokens: list[list[int]]) -> torch.Tensor:
            text = torch.tensor([[BOS, *t] for t in tokens], device=codes.device)
            x = torch.cat([prefix.expand(len(tokens), -1, -1), self.embed(text)], dim=1)
            return self.head(self.trunk(x)[:, -1])

        return logits, recomputed

    def _beam(self, codes: torch.Tensor, max_new: int, k: int, length_penalty: float) -> str:
        logits, next_logits = self._next_logits_fn(codes, k)
        logp = logits.float().log_softmax(-1)[0]
        scores, first = logp.topk(k)
        beams = [[int(t)] for t in first]
        finished: list[tuple[float, list[int]]] = []
        src = torch.arange(k, device=codes.device)  # which previous beam each current beam continues
        for _ in range(max_new - 1):
            keep = [i for i, b in enumerate(beams) if b[-1] != EOS]
            finished += [(float(scores[i]) / len(beams[i]) ** length_penalty, beams[i])
                         for i in range(len(beams)) if beams[i][-1] == EOS]
            if not keep or len(finished) >= k:
                beams = [beams[i] for i in keep]
                scores = scores[keep] if keep else scores[:0]
                break
            idx = torch.tensor(keep, device=codes.device)
            beams, scores, src = [beams[i] for i in keep], scores[idx], src[idx]
            last = torch.tensor([b[-1] for b in beams], device=codes.device)
            cand = scores[:, None] + next_logits(src, last, beams).float().log_softmax(-1)  # [n_alive, V]
            top, flat = cand.flatten().topk(len(beams))
            parent, tok = flat // cand.shape[1], flat % cand.shape[1]
            beams = [beams[int(p)] + [int(t)] for p, t in zip(parent, tok)]
            scores, src = top, parent
        alive = range(len(beams))
        for i in alive:
            finished.append((float(scores[i]) / len(beams[i]) ** length_penalty, beams[i]))
        best = max(finished, key=lambda f: f[0])[1]
        return self.decode_text(best)


def _batch_first(state: Any, batch: int) -> bool:
    """True when every tensor in ``state`` has the batch as its first dimension and nothing else is opaque."""
    if torch.is_tensor(state):
        return state.dim() == 0 or state.shape[0] == batch
    if isinstance(state, (list, tuple)):
        return all(_batch_first(s, batch) for s in state)
    if isinstance(state, dict):
        return all(_batch_first(s, batch) for s in state.values())
    if dataclasses.is_dataclass(state):
        return all(_batch_first(getattr(state, f.name), batch) for f in dataclasses.fields(state))
    return isinstance(state, (int, float, bool, type(None)))


def map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor with a batch dimension inside a mixer state (lists, tuples, dataclasses)."""
    if torch.is_tensor(state):
        return fn(state) if state.dim() > 0 else state
    if isinstance(state, (list, tuple)):
        mapped = [map_state(s, fn) for s in state]
        if hasattr(state, "_fields"):  # a named tuple
            return type(state)(*mapped)
        return list(mapped) if isinstance(state, list) else tuple(mapped)
    if isinstance(state, dict):
        return {k: map_state(v, fn) for k, v in state.items()}
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: map_state(getattr(state, f.name), fn)
                                             for f in dataclasses.fields(state)})
    return state
