"""KV-cache policies on attention decoding: the cache stays within its budget however long the stream runs,
a budget that covers the sequence changes nothing (exactly), kept tokens keep their original rotary positions,
or with ``reposition`` are rotated at their indices in the cache, and LaCache's ladder matches a hand-worked
case."""

import pytest
import torch

from mmseq.mixers import create_mixer
from mmseq.mixers.blocks import MixerStack
from mmseq.mixers.kv_policies import FullCache, LaCache, SinkWindowCache, set_cache_policy
from tests.mixers._attention_ref import merge, project, rotate, softmax_attention

D, LAYERS = 16, 4


def _stack(dtype=torch.float32) -> MixerStack:
    torch.manual_seed(0)
    return MixerStack(D, LAYERS, {"name": "attention", "n_heads": 2}, mlp_ratio=1.0).to(dtype).eval()


def _stream(model, x: torch.Tensor, on_step=None) -> tuple[torch.Tensor, list]:
    """Step ``model`` through x [B, L, D] token by token -> (outputs [B, L, D], final state)."""
    state = model.init_state(x.shape[0], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
        if on_step is not None:
            on_step(state)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("policy", [SinkWindowCache(budget=12, sinks=2), LaCache(budget=12, sinks=2, span=2),
                                    SinkWindowCache(budget=12, sinks=2, reposition=True),
                                    LaCache(budget=12, sinks=2, span=2, reposition=True)],
                         ids=["sink-window", "lacache", "sink-window-reposition", "lacache-reposition"])
def test_cache_stays_within_budget_for_ten_budgets_of_tokens(policy):
    model = _stack()
    assert set_cache_policy(model, policy) == LAYERS
    steps = 10 * policy.budget
    lengths = []

    def record(state):
        lengths.append([s.k.shape[2] for s in state])
        for s in state:  # keys, values and positions stay aligned, in order, the newest token kept
            assert s.v.shape[2] == s.pos.shape[1] == s.k.shape[2]
            assert bool((s.pos[:, 1:] > s.pos[:, :-1]).all()) and int(s.pos[0, -1]) == s.seen - 1
            assert s.unrotated == policy.reposition

    with torch.no_grad():
        y, state = _stream(model, torch.randn(2, steps, D), record)
    assert max(max(row) for row in lengths) == policy.budget
    assert lengths[-1] == [policy.budget] * LAYERS and state[0].seen == steps
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("policy", [FullCache(), SinkWindowCache(budget=20, sinks=4), LaCache(budget=20, sinks=4,
                                                                                              span=2)],
                         ids=["full", "sink-window", "lacache"])
def test_budget_covering_the_sequence_equals_the_full_cache(policy):
    model = _stack(torch.float64)
    x = torch.randn(2, 20, D, dtype=torch.float64)
    with torch.no_grad():
        want, _ = _stream(model, x)
        set_cache_policy(model, policy)
        got, state = _stream(model, x)
    assert torch.equal(got, want)
    assert all(torch.equal(s.pos[0], torch.arange(20)) for s in state)


@pytest.mark.parametrize("policy", [SinkWindowCache(budget=20, sinks=4, reposition=True),
                                    LaCache(budget=24, sinks=4, span=2, reposition=True)],
                         ids=["sink-window", "lacache"])
def test_reposition_with_a_budget_covering_the_sequence_equals_the_full_cache(policy):
    """Nothing is evicted, so cache indices are the original positions: re-rotating the whole cache at every
    step gives the full cache's outputs, though the keys are now held unrotated."""
    model = _stack(torch.float64)
    x = torch.randn(2, 20, D, dtype=torch.float64)
    with torch.no_grad():
        want, plain = _stream(model, x)
        set_cache_policy(model, policy)
        got, state = _stream(model, x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert all(s.unrotated and torch.equal(s.pos[0], torch.arange(20)) for s in state)
    # The first layer sees the same input either way: its cached keys are the rotated ones, unrotated.
    torch.testing.assert_close(rotate(state[0].k), plain[0].k, rtol=1e-6, atol=1e-6)  # float32 angles
    assert not torch.allclose(state[0].k, plain[0].k)


@pytest.mark.parametrize(("policy", "layer"), [(SinkWindowCache(budget=5, sinks=2, reposition=True), (0, 1)),
                                               (LaCache(budget=7, sinks=1, span=2, reposition=True), (1, 4))],
                         ids=["sink-window", "lacache-layer-1-of-4"])
def test_reposition_rotates_the_kept_keys_at_their_cache_indices(policy, layer):
    """Each streamed output equals attention written out by hand over the entries kept at that step (read from
    the state's ``pos``): their unrotated keys rotated at 0..n-1 and the query at n - 1."""
    torch.manual_seed(0)
    m = create_mixer("attention", D, n_heads=2).double()
    m.cache_policy, m.cache_layer = policy, layer
    L = 16
    x = torch.randn(2, L, D, dtype=torch.float64)
    q, k, v = project(m, x, rotary=False)
    state = m.init_state(2, dtype=torch.float64)
    got, want, want_original = [], [], []
    with torch.no_grad():
        for t in range(L):
            y, state = m.step(x[:, t], state)
            kept = state.pos[0]
            n = kept.shape[0]
            assert int(kept[-1]) == t and n == min(t + 1, policy.budget)
            torch.testing.assert_close(state.k, k[:, :, kept], rtol=1e-12, atol=1e-12)  # held unrotated
            everything = torch.ones(1, n, dtype=torch.bool)
            qt, kk, vv = q[:, :, t:t + 1], k[:, :, kept], v[:, :, kept]
            want.append(merge(m, softmax_attention(rotate(qt, offset=n - 1), rotate(kk), vv, everything))[:, 0])
            # The same entries at their original positions, as without reposition.
            k_orig = torch.stack([rotate(kk[:, :, i:i + 1], offset=int(p))[:, :, 0] for i, p in enumerate(kept)],
                                 dim=2)
            want_original.append(merge(m, softmax_attention(rotate(qt, offset=t), k_orig, vv, everything))[:, 0])
            got.append(y)
    got, want, want_original = (torch.stack(u, dim=1) for u in (got, want, want_original))
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)
    # Once tokens were evicted the kept keys sit closer to the query than their true distance, which changes the
    # outputs: the check above tells the two apart.
    assert (got - want_original).abs().max() > 1e-3
    torch.testing.assert_close(got[:, :policy.budget], want_original[:, :policy.budget], rtol=1e-7, atol=1e-7)


def test_a_state_cannot_switch_between_rotated_and_unrotated_keys():
    model = _stack()
    set_cache_policy(model, SinkWindowCache(budget=8, sinks=2))
    x = torch.randn(1, 4, D)
    with torch.no_grad():
        _, state = _stream(model, x)
        set_cache_policy(model, SinkWindowCache(budget=8, sinks=2, reposition=True))
        with pytest.raises(ValueError, match="start a new state"):
            model.step(x[:, 0], state)


def test_removing_the_policy_restores_the_plain_cache():
    model = _stack()
    set_cache_policy(model, SinkWindowCache(budget=4, sinks=1))
    set_cache_policy(model, None)
    state = model.init_state(1)
    assert all(s.pos is None for s in state)


@pytest.mark.parametrize(("policy", "layer"), [(SinkWindowCache(budget=5, sinks=2), (0, 1)),
                                               (LaCache(budget=7, sinks=1, span=2), (1, 4))],
                         ids=["sink-window", "lacache-layer-1-of-4"])
def test_kept_tokens_keep_their_original_rotary_positions(policy, layer):
    """Each streamed output equals attention written out (RoPE at absolute positions) over exactly the
    positions the policy kept at that step."""
    torch.manual_seed(0)
    m = create_mixer("attention", D, n_heads=2).double()
    # Installed by hand so that one mixer can stand in for layer 1 of a 4-layer ladder.
    m.cache_policy, m.cache_layer = policy, layer
    L = 16
    x = torch.randn(2, L, D, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    allowed = torch.zeros(L, L, dtype=torch.bool)
    ys = []
    with torch.no_grad():
        for t in range(L):
            y, state = m.step(x[:, t], state)
            ys.append(y)
            allowed[t, state.pos[0]] = True
    q, k, v = project(m, x)
    want = merge(m, softmax_attention(q, k, v, allowed))
    assert allowed.sum(1).max() == policy.budget and not allowed[L - 1, :L - policy.budget].all()
    torch.testing.assert_close(torch.stack(ys, dim=1), want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(("n_layers", "span", "overlap", "ladder"), [
    (32, 16, 0, (2, 1)),  # the reference's example: even and odd tokens alternate across layers
    (32, 9, 3, (5, 2)),   # 1 + ceil(23 / 6), min(ceil(9 / 6), 5)
    (32, 9, 7, (13, 5)),  # 1 + ceil(23 / 2), min(ceil(9 / 2), 13)
    (32, 8, 4, (7, 2)),   # 1 + ceil(24 / 4), min(ceil(8 / 4), 7)
    (4, 2, 0, (2, 1)),    # 1 + ceil(2 / 2), min(1, 2)
])
def test_lacache_ladder_sizes(n_layers, span, overlap, ladder):
    assert LaCache(span=span, overlap=overlap).ladder(n_layers) == ladder


def test_lacache_ladder_on_a_hand_worked_case():
    """4 layers, budget 8, 2 sinks, span 2: groups of 2 shrink to 1, even layers keep the first of each pair
    and odd layers the second; the newest 4 entries are never compacted.

    token 8 (9 entries): cursor 2, group (2, 3)         -> even keep 2, odd keep 3; cursor 3
    token 9: group at entries 3, 4 = positions (4, 5)   -> even keep 4, odd keep 5; cursor 4
    token 10: 8 - 4 - 4 < 1, start over at the sinks; entries 2, 3 are (2, 4) in even layers -> keep 2,
              (3, 5) in odd layers -> keep 5; cursor 3
    """
    model = _stack()
    set_cache_policy(model, LaCache(budget=8, sinks=2, span=2, overlap=0))
    kept = []
    with torch.no_grad():
        _stream(model, torch.randn(1, 11, D), lambda state: kept.append([s.pos[0].tolist() for s in state]))
    even = [[0, 1, 2, 4, 5, 6, 7, 8], [0, 1, 2, 4, 6, 7, 8, 9], [0, 1, 2, 6, 7, 8, 9, 10]]
    odd = [[0, 1, 3, 4, 5, 6, 7, 8], [0, 1, 3, 5, 6, 7, 8, 9], [0, 1, 5, 6, 7, 8, 9, 10]]
    assert kept[7] == [list(range(8))] * 4
    for step, (e, o) in enumerate(zip(even, odd)):
        assert kept[8 + step] == [e, o, e, o], f"token {8 + step}"
    # Together the layers still hold every one of the 10 tokens after token 9, with 8 entries each.
    assert sorted(set(kept[9][0]) | set(kept[9][1])) == list(range(10))


@pytest.mark.parametrize(("make", "match"), [
    (lambda: SinkWindowCache(budget=4, sinks=4), "budget must exceed sinks"),
    (lambda: SinkWindowCache(budget=0), "budget must be an int >= 1"),
    (lambda: LaCache(budget=3, sinks=4), "budget must exceed sinks"),
    (lambda: LaCache(span=4, overlap=4), "overlap must be < span"),
    (lambda: LaCache(span=0), "span must be an int >= 1"),
    (lambda: LaCache(sinks=True), "sinks must be an int >= 0"),
    (lambda: SinkWindowCache(reposition=1), "reposition must be a bool"),
    (lambda: LaCache(reposition="yes"), "reposition must be a bool"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(("policy", "match"), [
    (LaCache(), "span must be < n_layers"),  # span 16 over 4 layers: no ladder
    (LaCache(budget=6, sinks=2, span=2), "budget must be >= sinks \\+ n_layers \\+ after"),
])
def test_lacache_that_cannot_serve_the_model_is_refused_at_install(policy, match):
    with pytest.raises(ValueError, match=match):
        set_cache_policy(_stack(), policy)


def test_a_model_without_full_attention_is_refused():
    model = MixerStack(D, 2, {"name": "swa", "window": 4, "n_heads": 2})
    with pytest.raises(ValueError, match="no causal full-attention mixer"):
        set_cache_policy(model, SinkWindowCache(budget=8))


def test_report_generator_decodes_under_a_policy():
    """The medical report generator steps its trunk through the prefix and the report: a covering budget gives
    the same reports, greedy and beam (whose reordered states carry the positions), and a small one decodes."""
    from mmseq.medical.report_model import ReportGenerator, train_bpe

    texts = ["No pleural effusion. Heart size is normal.", "Small left pleural effusion. Mild cardiomegaly."] * 5
    torch.manual_seed(0)
    model = ReportGenerator(train_bpe(texts, vocab_size=120, min_frequency=1), token_bits=6, d_model=D,
                            n_layers=LAYERS, mixer={"name": "attention", "n_heads": 2}, prefix_grid=(2, 2, 2),
                            dropout=0.0, max_report_tokens=16).eval()
    codes = torch.randn(2, 6, 3, 4, 4, generator=torch.Generator().manual_seed(1)).sign()
    greedy, beam = model.generate(codes), model.generate(codes[:1], beam_size=2)
    set_cache_policy(model, LaCache(budget=64, sinks=2, span=2))
    assert model.generate(codes) == greedy and model.generate(codes[:1], beam_size=2) == beam
    set_cache_policy(model, LaCache(budget=10, sinks=2, span=2))
    assert len(model.generate(codes, max_new_tokens=16)) == 2
