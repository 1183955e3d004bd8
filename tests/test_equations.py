"""The paper's equations, pinned on tiny hand-made tensors.

Each test computes the formula of Jiang et al. (CIKM 2022, arXiv 2206.09672) on its own, with
plain torch operations on the module's parameters, and compares it with the module's output;
where a hand-computed number is easy, it is checked too. Equations: 8-9 (shared-expert gate),
11-13 (CONCAT fusion), 14-15 (SUM fusion), 23-24 (vanilla attention), 25-26 (SE block), the SE
layouts of Table 8 / Figure 4, and Algorithm 1 / eq. 27 (self-training).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from adirec.data.batches import FeatureStore
from adirec.data.sources import load_source
from adirec.models.adi import TwoTowerModel
from adirec.models.experts import ADIBackbone, ConcatFusion, DomainExperts, DomainGate, SharedExperts, SumFusion
from adirec.models.layers import MLP, HiddenSE, SEAdaptation, VanillaAttentionAdaptation
from adirec.models.registry import SE_LAYOUTS, build_config, build_model
from adirec.train.self_training import PseudoPositives, corpus_mask, pseudo_positives

D, E, H, B = 3, 4, 5, 6
DOMAIN = torch.tensor([0, 1, 2, 2, 1, 0])  # (B,), every domain present


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def domain_table(values) -> nn.Embedding:
    table = nn.Embedding(*torch.as_tensor(values).shape)
    with torch.no_grad():
        table.weight.copy_(torch.as_tensor(values, dtype=torch.float32))
    return table


# -----------------------------------------------------------------------------
# eq. 8-9: the shared experts' gate reads f_domain and divides each output by their sum


def test_eq8_gate_by_hand():
    f = domain_table([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])  # f_domain (D, 2)
    gate = DomainGate(3, D, "linear", source="domain", domain_embedding=f, eps=1e-6)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([
            [[1.0, 5.0], [-3.0, 5.0], [0.0, 5.0]],  # domain 0: g = W f = [1, -3, 0]
            [[9.0, 1.0], [9.0, 1.0], [9.0, 2.0]],  # domain 1: g = [2, 2, 4]
            [[1.0, 1.0], [2.0, 0.0], [0.0, -2.0]],  # domain 2: g = [0, 2, 2]
        ]))
    x = torch.randn(B, 7)  # features: not read
    w = gate(x, DOMAIN)
    eps = 1e-6
    expected = {0: torch.tensor([1 + eps, 3 + eps, eps]) / (4 + 3 * eps),
                1: torch.tensor([0.25, 0.25, 0.5]), 2: torch.tensor([eps, 2 + eps, 2 + eps]) / (4 + 3 * eps)}
    for b, d in enumerate(DOMAIN.tolist()):
        torch.testing.assert_close(w[b], expected[d])
    torch.testing.assert_close(gate(torch.randn(B, 7), DOMAIN), w)  # a per-domain constant


@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_eq8_eq9_shared_experts_formula(kind):
    f = domain_table(torch.randn(D, E))
    shared = SharedExperts(7, (6, H), num_experts=3, num_domains=D, gate=kind, domain_embedding=f).eval()
    x = torch.randn(B, 7)
    out = shared(x, DOMAIN)
    g = torch.stack([shared.gate.weight[d] @ f.weight[d] for d in DOMAIN.tolist()])  # (B, K) = W^(d) f_domain
    w = g.softmax(-1) if kind == "softmax" else (g.abs() + 1e-6) / (g.abs() + 1e-6).sum(-1, keepdim=True)
    torch.testing.assert_close(shared.last_weights, w)
    experts = torch.stack([e(x, DOMAIN) for e in shared.experts], dim=1)  # (B, K, H)
    torch.testing.assert_close(out, (w.unsqueeze(-1) * experts).sum(1))  # eq. 9


def test_features_gate_option_reads_the_row():
    gate = DomainGate(3, D, "softmax", source="features", in_dim=7)
    x = torch.randn(B, 7)
    expected = torch.stack([(gate.weight[d] @ x[b]).softmax(-1) for b, d in enumerate(DOMAIN.tolist())])
    torch.testing.assert_close(gate(x, DOMAIN), expected)


# -----------------------------------------------------------------------------
# eq. 11-13: CONCAT fusion, concat(b1 E_spec | b1 E_spec * b2 E_shared | b2 E_shared)


def test_eq13_concat_by_hand():
    fusion = ConcatFusion(2, D, domain_table(torch.randn(D, E)))
    with torch.no_grad():  # W = 0: beta_1 = beta_2 = sigmoid(0) = 1/2
        fusion.w_spec.zero_()
        fusion.w_shared.zero_()
    shared = torch.tensor([[2.0, -4.0]])
    specific = torch.tensor([[6.0, 8.0]])
    out = fusion(shared, specific, torch.tensor([1]))
    # [b1 E_spec | b1 E_spec * b2 E_shared | b2 E_shared] = [3, 4 | 3, -8 | 1, -2]
    torch.testing.assert_close(out, torch.tensor([[3.0, 4.0, 3.0, -8.0, 1.0, -2.0]]))


def test_eq11_13_concat_formula():
    f = domain_table(torch.randn(D, E))
    fusion = ConcatFusion(H, D, f)
    shared, specific = torch.randn(B, H), torch.randn(B, H)
    out = fusion(shared, specific, DOMAIN)
    assert out.shape == (B, 3 * H)
    for b, d in enumerate(DOMAIN.tolist()):
        beta_1 = torch.sigmoid(fusion.w_spec[d] @ f.weight[d])  # (H,), eq. 11
        beta_2 = torch.sigmoid(fusion.w_shared[d] @ f.weight[d])  # (H,), eq. 12
        s, h = beta_1 * specific[b], beta_2 * shared[b]
        torch.testing.assert_close(out[b], torch.cat([s, s * h, h]))  # eq. 13
    # the gates are one vector per domain: they move with f_domain, not with the row
    with torch.no_grad():
        f.weight[2].add_(1.0)
    moved = fusion(shared, specific, DOMAIN)
    torch.testing.assert_close(moved[DOMAIN != 2], out[DOMAIN != 2])
    assert not torch.allclose(moved[DOMAIN == 2], out[DOMAIN == 2])


def test_adi_backbone_fuses_its_shared_and_specific_outputs():
    f = domain_table(torch.randn(D, E))
    bb = ADIBackbone(7, D, num_experts=2, hidden=(6,), out=H, fusion="concat", domain_embedding=f).eval()
    x = torch.randn(B, 7)
    out = bb(x, DOMAIN)
    shared = bb.shared(x, DOMAIN)  # eq. 9
    specific = torch.stack([bb.specific.nets[d](x[b:b + 1], torch.zeros(1, dtype=torch.long))[0]
                            for b, d in enumerate(DOMAIN.tolist())])  # eq. 10: the row's own network
    beta_1 = torch.sigmoid(torch.einsum("dhe,de->dh", bb.fusion.w_spec, f.weight))[DOMAIN]
    beta_2 = torch.sigmoid(torch.einsum("dhe,de->dh", bb.fusion.w_shared, f.weight))[DOMAIN]
    s, h = beta_1 * specific, beta_2 * shared
    torch.testing.assert_close(out, torch.cat([s, s * h, h], dim=-1))


# -----------------------------------------------------------------------------
# eq. 14-15: SUM fusion, alpha E_spec + (1 - alpha) E_shared


def test_eq15_sum_by_hand():
    fusion = SumFusion(2, D, domain_table(torch.randn(D, E)))
    with torch.no_grad():
        fusion.w_gate.zero_()
        fusion.bias.copy_(torch.tensor([0.0, 50.0]))  # alpha = [1/2, ~1]
    out = fusion(torch.tensor([[2.0, -4.0]]), torch.tensor([[6.0, 8.0]]), torch.tensor([0]))
    torch.testing.assert_close(out, torch.tensor([[4.0, 8.0]]))


def test_eq14_15_sum_formula():
    f = domain_table(torch.randn(D, E))
    fusion = SumFusion(H, D, f)
    with torch.no_grad():
        fusion.bias.normal_()
    shared, specific = torch.randn(B, H), torch.randn(B, H)
    out = fusion(shared, specific, DOMAIN)
    assert out.shape == (B, H)
    for b, d in enumerate(DOMAIN.tolist()):
        alpha = torch.sigmoid(fusion.w_gate[d] @ f.weight[d] + fusion.bias)  # (H,), eq. 14
        torch.testing.assert_close(out[b], alpha * specific[b] + (1 - alpha) * shared[b])  # eq. 15


# -----------------------------------------------------------------------------
# eq. 23-24: vanilla attention, alpha_i = sigmoid(Q_i^(d) . F_i), F'_i = alpha_i F_i


def test_eq23_24_vanilla_attention_by_hand():
    va = VanillaAttentionAdaptation(2, 2, D)
    with torch.no_grad():
        va.query.zero_()
        va.query[1, 0] = torch.tensor([1.0, 0.0])  # domain 1, field 0: q . F_0 = F_0[0]
    e = torch.tensor([[[3.0, 5.0], [1.0, 1.0]]])  # (1, F=2, E=2)
    out = va(e, torch.tensor([1]))
    a0 = torch.sigmoid(torch.tensor(3.0))
    torch.testing.assert_close(out, torch.tensor([[[3.0 * a0, 5.0 * a0], [0.5, 0.5]]]))


@pytest.mark.parametrize("per_domain", [True, False])
def test_eq23_24_vanilla_attention_formula(per_domain):
    n_fields = 3
    va = VanillaAttentionAdaptation(n_fields, E, D, per_domain=per_domain)
    assert va.query.shape == ((D if per_domain else 1), n_fields, E)  # one query per field (and domain)
    e = torch.randn(B, n_fields, E)
    out = va(e, DOMAIN)
    for b, d in enumerate(DOMAIN.tolist()):
        q = va.query[d if per_domain else 0]  # (F, E)
        alpha = torch.sigmoid((q * e[b]).sum(-1))  # (F,), eq. 23: a sigmoid per field
        torch.testing.assert_close(va.last_weights[b], alpha)
        torch.testing.assert_close(out[b], alpha.unsqueeze(-1) * e[b])  # eq. 24


# -----------------------------------------------------------------------------
# eq. 25-26: SE block, alpha = sigmoid(W_2 ReLU(W_1 z)), z_i = mean(F_i), F'_i = alpha_i F_i


def test_eq25_26_se_by_hand():
    se = SEAdaptation(2, 2, 1, reduction=2)  # F = 2 -> 1 -> 2
    with torch.no_grad():
        se.w1.copy_(torch.tensor([[[1.0], [1.0]]]))  # (1, F, 1): s = z_0 + z_1
        se.w2.copy_(torch.tensor([[[1.0, -1.0]]]))  # (1, 1, F)
    e = torch.tensor([[[1.0, 3.0], [0.0, 2.0]]])  # z = [2, 1], s = 3
    out = se(e, torch.tensor([0]))
    a = torch.sigmoid(torch.tensor([3.0, -3.0]))
    torch.testing.assert_close(out, e * a.view(1, 2, 1))


@pytest.mark.parametrize("per_domain", [True, False])
def test_eq25_26_se_formula(per_domain):
    n_fields = 8
    se = SEAdaptation(n_fields, E, D, reduction=4, per_domain=per_domain)
    assert se.hidden == 2 and se.num_sets == (D if per_domain else 1)
    e = torch.randn(B, n_fields, E)
    out = se(e, DOMAIN)
    for b, d in enumerate(DOMAIN.tolist()):
        s = d if per_domain else 0
        z = e[b].mean(-1)  # (F,), squeeze
        alpha = torch.sigmoid(torch.relu(z @ se.w1[s]) @ se.w2[s])  # (F,), eq. 25
        torch.testing.assert_close(out[b], alpha.unsqueeze(-1) * e[b])  # eq. 26


@pytest.mark.parametrize("num_domains", [1, D])
def test_eq25_26_se_inside_an_expert(num_domains):
    """The 4-SE block on a hidden vector: each unit is a field of width 1, with one block or a
    block per domain."""
    width = 8
    se = HiddenSE(width, num_domains, reduction=4)
    h = torch.randn(B, width)
    domain = DOMAIN % num_domains
    out = se(h, domain)
    for b, d in enumerate(domain.tolist()):
        alpha = torch.sigmoid(torch.relu(h[b] @ se.w1[d]) @ se.w2[d])  # (H,), eq. 25, z = h
        torch.testing.assert_close(out[b], alpha * h[b])  # eq. 26


# -----------------------------------------------------------------------------
# SE layouts (Table 8 / Figure 4): how many SE blocks, where, shared or per domain


def se_blocks(module: nn.Module) -> int:
    return sum(m.num_sets for m in module.modules() if isinstance(m, SEAdaptation))


@pytest.fixture(scope="module")
def tiny():
    return load_source("synthetic:tiny")


SMALL = dict(embedding_dim=E, expert_hidden=(6,), expert_out=H, forward_hidden=(4,), output_dim=4)


@pytest.mark.parametrize("layout", ["1-SE", "3-SE", "4-SE"])
def test_se_layouts(tiny, layout):
    cfg = build_config("adi-se", **SE_LAYOUTS[layout], **SMALL)
    tower = TwoTowerModel(tiny.schema, D, cfg).user_tower
    dial = tower.adaptation
    assert isinstance(dial, SEAdaptation) and not isinstance(dial, HiddenSE)  # at the input
    K = cfg.shared_experts
    inside = [m for m in tower.backbone.modules() if isinstance(m, HiddenSE)]
    expected = {"1-SE": (1, 0), "3-SE": (D, 0), "4-SE": (D, K + D)}[layout]
    assert (dial.num_sets, len(inside)) == expected
    assert se_blocks(tower) == sum(expected)
    # the input block: one for all domains (1-SE) or one per domain
    e = torch.randn(1, tower.embeddings.num_fields, E).expand(D, -1, -1)
    w = dial.field_weights(e, torch.arange(D))  # the same row seen from each domain
    assert torch.allclose(w[0], w[1]) == (layout == "1-SE")
    if layout == "4-SE":  # one block inside every shared expert and every domain's expert
        shared = tower.backbone.shared.experts
        specific = tower.backbone.specific.nets
        assert all(m.inner_se is not None and m.inner_se.num_sets == 1 for m in [*shared, *specific])
    else:
        assert all(m.inner_se is None for m in tower.modules() if isinstance(m, MLP))


@pytest.mark.parametrize("train", [False, True])
def test_se_inside_an_expert_reweights_its_first_layer(train):
    mlp = MLP(7, (6, H), num_domains=D, dsbn=True, se_reduction=2).train(train)
    twin = MLP(7, (6, H), num_domains=D, dsbn=True).train(train)
    twin.load_state_dict({k: v for k, v in mlp.state_dict().items() if not k.startswith("inner_se")})
    x = torch.randn(B, 7)
    out = mlp(x, DOMAIN)
    se = mlp.inner_se
    h = twin.after_linear(0, twin.linears[0](x), DOMAIN)  # (B, 6): first layer, norm, ReLU
    alpha = torch.sigmoid(torch.relu(h @ se.w1[0]) @ se.w2[0])  # (B, 6), eq. 25: the network's one block
    expected = twin.after_linear(1, twin.linears[1](h * alpha), DOMAIN)  # eq. 26, then the next layer
    torch.testing.assert_close(out, expected)


def test_domain_expert_se_is_its_own_domains():
    experts = DomainExperts(7, (6, H), D, se_reduction=2).eval()
    with torch.no_grad():
        experts.nets[1].inner_se.w2.add_(1.0)  # domain 1's block only
    x = torch.randn(B, 7)
    before = DomainExperts(7, (6, H), D, se_reduction=2).eval()
    before.load_state_dict(experts.state_dict())
    with torch.no_grad():
        before.nets[1].inner_se.w2.sub_(1.0)
    moved, base = experts(x, DOMAIN), before(x, DOMAIN)
    torch.testing.assert_close(moved[DOMAIN != 1], base[DOMAIN != 1])
    assert not torch.allclose(moved[DOMAIN == 1], base[DOMAIN == 1])


# -----------------------------------------------------------------------------
# Algorithm 1 / eq. 27: pseudo-labels per (source i, target j) pair, inside j's corpus


class ScoreTable(nn.Module):
    """A stand-in two-tower model whose score of (user, item) in domain j is ``table[item, j]``,
    recording the mode it was scored in."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # (I + 1, D)
        self.modes: list[bool] = []

    def user_embedding(self, features, domain):
        self.modes.append(self.training)
        return torch.ones(len(domain), 1)

    def item_embedding(self, features, domain):
        return self.table[features["item"], domain].unsqueeze(-1)

    @staticmethod
    def score(u, v):
        return (u * v).sum(-1)


class Lookups:
    def user_features(self, user, domain, exclude_item=None, device=None, *, before=None):
        return {"user": user}

    def item_features(self, item, domain, device=None):
        return {"item": item}


def brute_force(user, item, domain, table, in_corpus, p):
    """Algorithm 1 by loops: for each pair (i, j != i), the pair's candidates (rows of domain i
    whose item is in j's corpus), the top floor(p * n) by score in j."""
    chosen, candidates = set(), 0
    for j, i in itertools.product(range(D), range(D)):
        if i == j:
            continue
        rows = [b for b in range(len(user)) if domain[b] == i and in_corpus[j, item[b]]]
        candidates += len(rows)
        rows.sort(key=lambda b: -float(table[item[b], j]))
        chosen |= {(int(user[b]), int(item[b]), j) for b in rows[: int(p * len(rows))]}
    return chosen, candidates


def test_algorithm1_selects_the_top_fraction_of_each_pair_inside_the_corpus():
    n_items = 12
    user = torch.arange(1, 25)  # 24 rows, 8 per domain
    domain = torch.arange(24) % D
    item = torch.randint(1, n_items + 1, (24,))
    table = torch.randn(n_items + 1, D)
    table[item[domain == 0], :] += 10.0  # domain 0's rows are the most confident everywhere
    in_corpus = torch.rand(D, n_items + 1) < 0.7
    model = ScoreTable(table).train()
    got = pseudo_positives(model, Lookups(), user, item, domain, D, 0.5, in_corpus=in_corpus)
    assert isinstance(got, PseudoPositives)
    expected, candidates = brute_force(user, item, domain, table, in_corpus, 0.5)
    assert set(zip(got.user.tolist(), got.item.tolist(), got.domain.tolist())) == expected
    assert got.candidates == candidates and got.num_selected == len(expected)
    assert all(bool(in_corpus[j, v]) for v, j in zip(got.item.tolist(), got.domain.tolist()))
    # per pair, not per target: domain 2's rows get labels in domain 1 although domain 0's rows
    # are more confident there
    assert got.pairs[(2, 1)][1] == int(0.5 * got.pairs[(2, 1)][0]) > 0
    assert model.modes and not any(model.modes) and model.training  # scored in eval mode, restored
    assert torch.equal(got.user, user[got.source]) and torch.equal(got.item, item[got.source])


def test_algorithm1_has_nothing_to_label_on_disjoint_catalogues():
    user = torch.arange(1, 10)
    domain = torch.arange(9) % D
    item = domain * 3 + 1 + torch.arange(9) // D  # domain d's items: 3d+1 .. 3d+3
    in_corpus = corpus_mask([range(3 * d + 1, 3 * d + 4) for d in range(D)], 9)
    got = pseudo_positives(ScoreTable(torch.randn(10, D)), Lookups(), user, item, domain, D, 1.0,
                           in_corpus=in_corpus)
    assert got.candidates == 0 and got.num_selected == 0 and got.pairs == {}
    # without the corpora every other domain would have been labelled
    everything = pseudo_positives(ScoreTable(torch.randn(10, D)), Lookups(), user, item, domain, D, 1.0)
    assert everything.candidates == 9 * (D - 1) == everything.num_selected


def test_algorithm1_counts_candidates_at_p_zero_and_checks_its_inputs():
    user, item, domain = torch.arange(1, 7), torch.tensor([1, 2, 3, 1, 2, 3]), DOMAIN
    got = pseudo_positives(ScoreTable(torch.randn(4, D)), Lookups(), user, item, domain, D, 0.0)
    assert got.candidates == B * (D - 1) and got.num_selected == 0
    with pytest.raises(ValueError, match=r"in_corpus must be a \(num_domains=3, I \+ 1\) bool tensor"):
        pseudo_positives(ScoreTable(torch.randn(4, D)), Lookups(), user, item, domain, D, 0.1,
                         in_corpus=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="item id 3 is outside"):
        pseudo_positives(ScoreTable(torch.randn(4, D)), Lookups(), user, item, domain, D, 0.1,
                         in_corpus=torch.ones(D, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        pseudo_positives(ScoreTable(torch.randn(4, D)), Lookups(), user, item, domain, D, 1.5)


def test_algorithm1_on_a_model(tiny):
    model = build_model("adi-se", tiny.schema, D, build_config("adi-se", **SMALL)).train()
    tr = tiny.splits["train"]
    user, item, domain = (torch.as_tensor(a[:300]) for a in (tr.user, tr.item, tr.domain))
    mask = corpus_mask(tiny.corpus, tiny.num_items)
    got = pseudo_positives(model, FeatureStore(tiny), user, item, domain, D, 0.2, in_corpus=mask)
    assert got.candidates == sum(int(((domain != j) & mask[j, item]).sum()) for j in range(D))
    assert got.candidates > 0 and model.training
    for (i, j), (n, k) in got.pairs.items():
        assert i != j and k == int(0.2 * n)
        assert n == int(((domain == i) & mask[j, item]).sum())
    assert got.num_selected == sum(k for _, k in got.pairs.values()) > 0
    assert bool(mask[got.domain, got.item].all())
