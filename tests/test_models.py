"""Tests of adirec.models: shapes, DSBN isolation, gates, routing, sharing, padding."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn

from adirec.data.schema import Field, Schema
from adirec.models.experts import BACKBONES
from adirec.models.config import TwoTowerConfig
from adirec.models.adi import TwoTowerModel
from adirec.models.experts import (
    ADIBackbone,
    Backbone,
    DomainExperts,
    DomainGate,
    MLPBackbone,
    NetMulExperts,
    SharedExperts,
)
from adirec.models.layers import (
    MLP,
    DomainSpecificBatchNorm,
    LinearAdaptation,
    SEAdaptation,
    VanillaAttentionAdaptation,
    domain_groups,
    make_adaptation,
    route_by_domain,
    rows_of_domain,
)
from adirec.models.registry import MODELS, build_config
from adirec.models.towers import FieldEmbeddings, SharedEmbeddings

D = 3  # domains
E = 8  # embedding dim
B = 12  # batch
L = 5  # sequence length

TINY = dict(embedding_dim=E, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_schema() -> Schema:
    return Schema(
        fields=[
            Field("user_id", "user", "categorical"),
            Field("gender", "user", "categorical"),
            Field("hist_all", "user", "sequence", vocab="item_id", dim=L),
            Field("hist_domain", "user", "sequence", vocab="item_id", per_domain=True, dim=L),
            Field("item_id", "item", "categorical"),
            Field("cat", "item", "categorical"),
            Field("ctr", "item", "dense", per_domain=True, dim=2),
        ],
        vocab_sizes={"user_id": 20, "gender": 3, "item_id": 30, "cat": 6},
    )


def make_batch(n: int = B) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    hist = torch.randint(1, 30, (n, L))
    hist[:, 3:] = 0  # trailing padding
    features = {
        "user_id": torch.randint(1, 20, (n,)),
        "gender": torch.randint(1, 3, (n,)),
        "hist_all": hist,
        "hist_domain": torch.randint(0, 30, (n, L)),
        "item_id": torch.randint(1, 30, (n,)),
        "cat": torch.randint(1, 6, (n,)),
        "ctr": torch.rand(n, 2),
        "label": torch.ones(n),  # an extra key the towers must ignore
    }
    domain = torch.arange(n) % D
    return features, domain


# -----------------------------------------------------------------------------
# layers


def test_domain_groups_partitions_rows():
    domain = torch.tensor([2, 0, 2, 2, 0])
    groups = domain_groups(domain, 4)
    assert [d for d, _ in groups] == [0, 2]  # absent domains 1 and 3 are skipped
    assert groups[0][1].tolist() == [1, 4] and groups[1][1].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        domain_groups(torch.tensor([0, 4]), 4)


@pytest.mark.parametrize("domain", [[2, 0, 2, 2, 0, 1], [1, 1, 1, 1], [0, 0, 1, 1, 2, 2], []])
def test_route_by_domain_equals_row_by_row(domain):
    """Mixed, single-domain, sorted and empty batches: every row comes out of its own domain's
    function, in the batch's order, and so does every gradient."""
    domain = torch.tensor(domain, dtype=torch.long)
    weights = torch.randn(D, 4, 3, requires_grad=True)  # a (4 -> 3) map per domain
    x = torch.randn(len(domain), 4, requires_grad=True)
    out = route_by_domain(x, domain, D, lambda d, xd: xd @ weights[d], 3)  # (B, 3)
    expected = torch.stack([x[b] @ weights[int(domain[b])] for b in range(len(domain))]) if len(domain) \
        else torch.empty(0, 3)
    assert out.shape == (len(domain), 3)
    torch.testing.assert_close(out, expected)
    if len(domain):
        g = torch.randn(len(domain), 3)
        got = torch.autograd.grad(out, (x, weights), g)
        want = torch.autograd.grad(expected, (x, weights), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)


def test_rows_of_domain_is_indexing_by_domain():
    table = torch.randn(D, 2, 5, requires_grad=True)
    domain = torch.tensor([2, 0, 2, 1, 0])
    rows = rows_of_domain(table, domain)  # (B, 2, 5)
    torch.testing.assert_close(rows, table[domain], rtol=0, atol=0)
    g = torch.randn(5, 2, 5)
    torch.testing.assert_close(torch.autograd.grad(rows, table, g)[0], torch.autograd.grad(table[domain], table, g)[0])


@pytest.mark.parametrize("dsbn", [True, False])
def test_mlp_shapes(dsbn):
    mlp = MLP(10, (7, 5), num_domains=D, dsbn=dsbn, dropout=0.1)
    assert mlp.out_dim == 5
    out = mlp(torch.randn(B, 10), torch.arange(B) % D)
    assert out.shape == (B, 5)
    assert isinstance(mlp.norms[0], DomainSpecificBatchNorm if dsbn else nn.BatchNorm1d)
    with pytest.raises(ValueError, match="dropout"):
        MLP(10, (5,), dropout=1.5)


def test_dsbn_absent_domain_untouched():
    bn = DomainSpecificBatchNorm(4, 2)
    with torch.no_grad():  # make domain 1's state distinctive
        bn.norms[1].running_mean.fill_(3.0)
        bn.norms[1].running_var.fill_(2.0)
        bn.norms[1].weight.fill_(1.5)
        bn.norms[1].bias.fill_(-0.5)
    before = {k: v.clone() for k, v in bn.norms[1].state_dict().items()}
    opt = torch.optim.AdamW(bn.parameters(), lr=0.1, weight_decay=0.1)
    bn.train()
    for _ in range(3):
        x = torch.randn(6, 4) * 5 + 1
        bn(x, torch.zeros(6, dtype=torch.long)).pow(2).sum().backward()  # only domain 0 present
        opt.step()
        opt.zero_grad()
    for k, v in bn.norms[1].state_dict().items():
        assert torch.equal(v, before[k]), k  # running stats AND gamma/beta untouched
    assert bn.norms[1].weight.grad is None
    assert not torch.equal(bn.norms[0].running_mean, torch.zeros(4))  # domain 0 did move


def test_dsbn_train_matches_plain_batchnorm_per_domain():
    bn = DomainSpecificBatchNorm(4, 2).train()
    plain = [nn.BatchNorm1d(4).train() for _ in range(2)]
    x = torch.randn(10, 4) * 3
    domain = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1, 1])
    out = bn(x, domain)
    for d in range(2):
        rows = domain == d
        torch.testing.assert_close(out[rows], plain[d](x[rows]))  # domain d's batch stats only
        torch.testing.assert_close(bn.norms[d].running_mean, plain[d].running_mean)
        torch.testing.assert_close(bn.norms[d].running_var, plain[d].running_var)


def test_dsbn_eval_uses_own_domain_stats_only():
    bn = DomainSpecificBatchNorm(4, 2)
    with torch.no_grad():
        bn.norms[0].running_mean.copy_(torch.tensor([1.0, -1.0, 0.5, 2.0]))
        bn.norms[0].running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 9.0]))
    bn.eval()
    x = torch.randn(8, 4)
    domain = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1])
    out = bn(x, domain)
    plain = nn.BatchNorm1d(4)
    plain.load_state_dict(bn.norms[0].state_dict())
    plain.eval()
    torch.testing.assert_close(out[domain == 0], plain(x[domain == 0]))
    # changing domain 1's statistics does not move domain 0's rows
    with torch.no_grad():
        bn.norms[1].running_mean.fill_(100.0)
    out2 = bn(x, domain)
    torch.testing.assert_close(out2[domain == 0], out[domain == 0])
    assert not torch.allclose(out2[domain == 1], out[domain == 1])


def test_dsbn_single_row_domain_in_training():
    bn = DomainSpecificBatchNorm(3, 2).train()
    x = torch.randn(5, 3, requires_grad=True)
    domain = torch.tensor([0, 0, 0, 0, 1])  # domain 1 has one row
    out = bn(x, domain)
    assert torch.isfinite(out).all()
    # normalised with running stats (0 mean, unit var at init) and the stats stay put
    torch.testing.assert_close(out[4], x[4].detach() / (1 + 1e-5) ** 0.5)
    assert torch.equal(bn.norms[1].running_mean, torch.zeros(3))
    assert torch.equal(bn.norms[1].running_var, torch.ones(3))
    assert int(bn.norms[1].num_batches_tracked) == 0
    out.sum().backward()
    assert bn.norms[1].weight.grad is not None  # gamma/beta still learn


ADAPTERS = {"se": SEAdaptation, "va": VanillaAttentionAdaptation, "lt": LinearAdaptation}


@pytest.mark.parametrize("kind", ["se", "va", "lt", "none"])
def test_adaptation_shapes_and_weights(kind):
    n_fields = 4
    layer = make_adaptation(kind, n_fields, E, D)
    e = torch.randn(B, n_fields, E)
    domain = torch.arange(B) % D
    out = layer(e, domain)
    assert out.shape == (B, n_fields, E)
    if kind == "none":
        assert out is e and layer.last_weights is None
        return
    assert isinstance(layer, ADAPTERS[kind])
    assert layer.last_weights.shape == (B, n_fields)
    torch.testing.assert_close(layer.field_weights(e, domain), layer.last_weights)
    if kind in ("va", "se"):  # a sigmoid per field: in (0, 1), not a distribution over fields
        assert ((layer.last_weights > 0) & (layer.last_weights < 1)).all()
        assert not torch.allclose(layer.last_weights.sum(-1), torch.ones(B))
    with pytest.raises(ValueError, match="unknown adaptation"):
        make_adaptation("xx", n_fields, E, D)


def test_se_one_weight_per_field_and_domain():
    n_fields = 6
    se = SEAdaptation(n_fields, E, D, reduction=2)
    assert se.w1.shape == (D, n_fields, 3) and se.w2.shape == (D, 3, n_fields)
    e = torch.randn(1, n_fields, E).expand(D, n_fields, E)  # the same row seen from each domain
    w = se.field_weights(e, torch.arange(D))  # (D, F): one weight per domain and field
    assert w.shape == (D, n_fields)
    assert ((w > 0) & (w < 1)).all()
    for a, b in itertools.combinations(range(D), 2):
        assert not torch.allclose(w[a], w[b])
    # re-weighting multiplies each field embedding by its scalar weight
    out = se(e, torch.arange(D))
    torch.testing.assert_close(out, e * w.unsqueeze(-1))


# -----------------------------------------------------------------------------
# experts


@pytest.mark.parametrize("kind,source", list(itertools.product(["linear", "softmax"], ["domain", "features"])))
def test_gate_weights_sum_to_one(kind, source):
    gate = DomainGate(4, D, kind, source=source, in_dim=10, domain_embedding=nn.Embedding(D, E))
    x = torch.randn(B, 10)
    domain = torch.arange(B) % D
    w = gate(x, domain)
    assert w.shape == (B, 4)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B))
    # on the domain, the mixture is one per domain; on the features, it moves with the row
    same_domain = w[domain == 0]
    assert torch.allclose(same_domain, same_domain[:1].expand_as(same_domain)) == (source == "domain")
    # linear gate with all-zero outputs falls back to the uniform mix, no 0/0
    if kind == "linear":
        with torch.no_grad():
            gate.weight.zero_()
        torch.testing.assert_close(gate(x, torch.zeros(B, dtype=torch.long)), torch.full((B, 4), 0.25))


def test_domain_gate_needs_its_input():
    with pytest.raises(ValueError, match="domain_embedding"):
        DomainGate(3, D, source="domain")
    with pytest.raises(ValueError, match="3 rows for 2 domains"):
        DomainGate(3, 2, source="domain", domain_embedding=nn.Embedding(3, E))
    with pytest.raises(ValueError, match="in_dim"):
        DomainGate(3, D, source="features")
    with pytest.raises(ValueError, match="unknown gate input"):
        DomainGate(3, D, source="items", in_dim=4)


@pytest.mark.parametrize("gate", ["linear", "softmax"])
def test_shared_experts_mix(gate):
    shared = SharedExperts(10, (12, 6), num_experts=3, num_domains=D, gate=gate,
                           domain_embedding=nn.Embedding(D, E)).eval()
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    out = shared(x, domain)
    assert out.shape == (B, 6) and shared.last_weights.shape == (B, 3)
    expected = (shared.last_weights.unsqueeze(-1) * shared.expert_outputs(x, domain)).sum(1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("train", [False, True])
def test_domain_experts_route_rows_to_own_network(train):
    experts = DomainExperts(10, (12, 6), D).train(train)
    reference = copy.deepcopy(experts)  # run each network alone on a twin
    x = torch.randn(B, 10)
    domain = torch.tensor([2, 0, 2, 1, 1, 0, 2, 2, 0, 1, 2, 0])
    out = experts(x, domain)
    assert out.shape == (B, 6)
    for d in range(D):
        rows = domain == d
        alone = reference.nets[d](x[rows], torch.zeros(int(rows.sum()), dtype=torch.long))
        torch.testing.assert_close(out[rows], alone)


def test_domain_experts_single_row_domain_trains():
    experts = DomainExperts(10, (6,), D).train()
    out = experts(torch.randn(4, 10), torch.tensor([0, 0, 0, 2]))
    assert torch.isfinite(out).all()


def test_netmul_starts_as_shared_and_uses_domain_factors():
    nm = NetMulExperts(10, (12, 6), num_experts=2, num_domains=D, domain_embedding=nn.Embedding(D, E)).eval()
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    plain = torch.stack([e(x, domain) for e in nm.experts], dim=1)
    torch.testing.assert_close(nm.expert_outputs(x, domain), plain)  # factors start at 1 / 0
    with torch.no_grad():
        nm.domain_weight[0][1].mul_(2.0)  # change domain 1 only
    moved = nm.expert_outputs(x, domain)
    torch.testing.assert_close(moved[domain != 1], plain[domain != 1])
    assert not torch.allclose(moved[domain == 1], plain[domain == 1])


@pytest.mark.parametrize(
    "fusion,gate,k", list(itertools.product(["concat", "sum", "netmul"], ["linear", "softmax"], [1, 3]))
)
def test_adi_backbone_shapes(fusion, gate, k):
    bb = ADIBackbone(10, D, num_experts=k, hidden=(12,), out=6, gate=gate, fusion=fusion,
                     domain_embedding=nn.Embedding(D, E))
    assert isinstance(bb, Backbone)
    out = bb(torch.randn(B, 10), torch.arange(B) % D)
    assert bb.out_dim == (18 if fusion == "concat" else 6)  # eq. 13: three parts of width H
    assert out.shape == (B, bb.out_dim)
    assert bb.last_gate_weights.shape == (B, k)
    with pytest.raises(ValueError, match="unknown fusion"):
        ADIBackbone(10, D, fusion="product")
    with pytest.raises(ValueError, match="f_domain"):  # the fusion gates or eq. 8's gate read it
        ADIBackbone(10, D, fusion=fusion, gate_input="features" if fusion != "netmul" else "domain")


def test_mlp_backbone_is_a_backbone():
    bb = MLPBackbone(10, D, (12, 6))
    assert isinstance(bb, Backbone) and bb.out_dim == 6
    assert bb(torch.randn(B, 10), torch.arange(B) % D).shape == (B, 6)
    assert set(BACKBONES) >= {"adi", "mlp"}


# -----------------------------------------------------------------------------
# embeddings and towers


def test_field_embeddings_shapes_and_padding():
    schema = make_schema()
    shared = SharedEmbeddings(schema, E)
    assert set(shared.tables) == {"user_id", "gender", "item_id", "cat"}  # one table per vocab
    user = FieldEmbeddings(schema, "user", shared)
    item = FieldEmbeddings(schema, "item", shared)
    features, _ = make_batch()
    features["hist_all"][0] = 0  # an all-padding history
    eu, ei = user(features), item(features)
    assert eu.shape == (B, 4, E) and ei.shape == (B, 3, E)
    assert torch.isfinite(eu).all()
    assert torch.equal(eu[0, 2], torch.zeros(E))
    # masked mean: padding does not dilute the mean of the real entries
    table = shared.tables["item_id"].weight
    torch.testing.assert_close(eu[1, 2], table[features["hist_all"][1, :3]].mean(0))
    with pytest.raises(KeyError, match="missing"):
        user({"user_id": features["user_id"]})


def test_all_padding_sequence_no_nan_through_model():
    model = TwoTowerModel(make_schema(), D, TwoTowerConfig(**TINY))
    features, domain = make_batch()
    features["hist_all"].zero_()
    features["hist_domain"].zero_()
    u = model.user_embedding(features, domain)
    assert torch.isfinite(u).all()
    u.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


COMBOS = list(
    itertools.product(["se", "va", "lt", "none"], ["concat", "sum", "netmul"], ["linear", "softmax"])
)


@pytest.mark.parametrize("dial,fusion,gate", COMBOS)
def test_tower_shapes_every_combination(dial, fusion, gate):
    cfg = TwoTowerConfig(**TINY, dial=dial, fusion=fusion, gate=gate, shared_experts=2)
    model = TwoTowerModel(make_schema(), D, cfg)
    features, domain = make_batch()
    u, i = model(features, domain)
    assert u.shape == (B, 4) and i.shape == (B, 4)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(B))  # l2_normalize
    assert model.score(u, i).shape == (B,)
    assert model.score(u.unsqueeze(1), i.unsqueeze(0)).shape == (B, B)
    model.eval()
    assert model.item_embedding(features, domain).shape == (B, 4)


@pytest.mark.parametrize("domain_forward", [True, False])
def test_tower_without_l2_and_forward_options(domain_forward):
    cfg = TwoTowerConfig(**TINY, l2_normalize=False, domain_forward=domain_forward)
    model = TwoTowerModel(make_schema(), D, cfg)
    features, domain = make_batch()
    assert model.user_embedding(features, domain).shape == (B, 4)
    assert isinstance(model.user_tower.forward_net, DomainExperts) == domain_forward


def test_shared_table_is_same_parameter_and_gradients_reach_both_towers():
    model = TwoTowerModel(make_schema(), D, TwoTowerConfig(**TINY, exclude_fields=()))
    u_tab = model.user_tower.embeddings.shared.tables["item_id"].weight
    i_tab = model.item_tower.embeddings.shared.tables["item_id"].weight
    assert u_tab is i_tab
    features, domain = make_batch()
    u, i = model(features, domain)
    model.score(u, i).sum().backward()
    tables = model.embeddings.tables
    for vocab in ("user_id", "gender", "cat"):  # one side each
        assert tables[vocab].weight.grad.abs().sum() > 0, vocab
    assert model.embeddings.dense["ctr"].weight.grad.abs().sum() > 0
    # the item table gets gradient from the user's history and from the target item
    g_hist = torch.autograd.grad(model.score(*model(features, domain)).sum(), u_tab)[0]
    assert g_hist[features["hist_all"][0, 0]].abs().sum() > 0
    assert g_hist[features["item_id"][0]].abs().sum() > 0
    assert torch.equal(g_hist[0], torch.zeros(E))  # padding row never trains
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters() == n_unique


def test_dnn_preset_ignores_domain():
    model = TwoTowerModel(make_schema(), D, build_config("dnn", **TINY))
    features, _ = make_batch()
    for train in (True, False):
        model.train(train)
        outs = [model(features, torch.full((B,), d, dtype=torch.long)) for d in range(D)]
        mixed = model(features, torch.arange(B) % D)
        for u, i in [*outs, mixed]:
            torch.testing.assert_close(u, outs[0][0])
            torch.testing.assert_close(i, outs[0][1])


def test_adi_preset_depends_on_domain():
    model = TwoTowerModel(make_schema(), D, build_config("adi-se", **TINY)).eval()
    features, _ = make_batch()
    a = model.user_embedding(features, torch.zeros(B, dtype=torch.long))
    b = model.user_embedding(features, torch.ones(B, dtype=torch.long))
    assert not torch.allclose(a, b)


# -----------------------------------------------------------------------------
# config and registry


def test_registry_presets_and_overrides():
    assert set(MODELS) >= {"adi-se", "adi-va", "adi-lt", "dnn"}
    assert build_config("adi-va").dial == "va"
    assert build_config("adi-lt").dial == "lt"
    dnn = build_config("dnn")
    assert (dnn.backbone, dnn.dial, dnn.dsbn, dnn.domain_forward) == ("mlp", "none", False, False)
    cfg = build_config("adi-se", fusion="sum", dial="va", shared_experts=3, dsbn=False, expert_hidden=[8])
    got = (cfg.fusion, cfg.dial, cfg.shared_experts, cfg.dsbn, cfg.expert_hidden)
    assert got == ("sum", "va", 3, False, (8,))
    with pytest.raises(ValueError, match="adi-se"):
        build_config("nope")
    with pytest.raises(ValueError, match="unknown config fields"):
        build_config("adi-se", fuson="sum")


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(fusion="mul"), "fusion"),
        (dict(gate="relu"), "gate"),
        (dict(dial="xx"), "dial"),
        (dict(backbone="nope"), "backbone"),
        (dict(embedding_dim=0), "embedding_dim"),
        (dict(expert_hidden=(8, 0)), "expert_hidden"),
        (dict(dropout=1.0), "dropout"),
        (dict(history_dropout="sometimes"), r"history_dropout must be in \[0, 1\) or 'auto'"),
        (dict(history_dropout=1.0), "history_dropout"),
        (dict(item_tower="tiny"), r"item_tower must be one of \('full', 'linear', 'auto'\), got 'tiny'"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        TwoTowerConfig(**bad)


def _timed_and_timeless():
    """The same 200 interactions as two one-domain datasets: with timestamps (an ordered history) and without."""
    import numpy as np
    from adirec.data.build import RawInteractions, build_dataset
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 20, 200).astype(str).astype(object), rng.integers(0, 30, 200).astype(str).astype(object)
    timed = build_dataset("timed", ["a"], RawInteractions(u, i, np.zeros(200, np.int64), None, np.arange(200)))
    timeless = build_dataset("timeless", ["a"], RawInteractions(u, i, np.zeros(200, np.int64)))
    return timed, timeless


def test_auto_history_dropout_follows_the_resolved_history_encoder():
    from adirec.models.config import AUTO_HISTORY_DROPOUT
    timed, timeless = _timed_and_timeless()
    auto = TwoTowerConfig(history_encoder="auto", history_dropout="auto")
    assert auto.resolved(1).history_dropout == "auto"  # without the schema the encoder is not known yet
    got = {name: auto.resolved(1, d.schema) for name, d in (("timed", timed), ("timeless", timeless))}
    assert (got["timed"].history_encoder, got["timed"].history_dropout) == ("transformer", 0.0)
    assert (got["timeless"].history_encoder, got["timeless"].history_dropout) == ("mean", AUTO_HISTORY_DROPOUT)
    for encoder, want in (("mean", AUTO_HISTORY_DROPOUT), ("recency", 0.0), ("transformer", 0.0)):
        assert TwoTowerConfig(history_encoder=encoder, history_dropout="auto").resolved(1).history_dropout == want
    assert TwoTowerConfig(history_dropout=0.1).resolved(1, timeless.schema).history_dropout == 0.1  # a number stays
    model = TwoTowerModel(timeless.schema, 1, TwoTowerConfig(**TINY, history_dropout="auto"))
    assert model.user_tower.embeddings.history_dropout == AUTO_HISTORY_DROPOUT


def test_auto_item_tower_is_linear_under_the_transformer_encoder_only():
    from adirec.models.towers import IdentityBackbone
    timed, timeless = _timed_and_timeless()
    auto = TwoTowerConfig(history_encoder="auto", item_tower="auto")
    assert auto.resolved(1).item_tower == "auto"  # without the schema the encoder is not known yet
    assert auto.resolved(1, timed.schema).item_tower == "linear"
    assert auto.resolved(1, timeless.schema).item_tower == "full"
    for encoder, want in (("mean", "full"), ("recency", "full"), ("transformer", "linear")):
        assert TwoTowerConfig(history_encoder=encoder, item_tower="auto").resolved(1).item_tower == want
    assert TwoTowerConfig(history_encoder="transformer", item_tower="full").resolved(1).item_tower == "full"
    for data, linear in ((timed, True), (timeless, False)):
        model = TwoTowerModel(data.schema, 1, TwoTowerConfig(**TINY, history_encoder="auto", item_tower="auto"))
        assert model.config.item_tower == ("linear" if linear else "full")
        assert isinstance(model.item_tower.backbone, IdentityBackbone) == linear
        assert not isinstance(model.user_tower.backbone, IdentityBackbone)
    for preset in ("adi-plus", "dnn-plus"):
        assert build_config(preset).item_tower == "auto"
    assert all(build_config(name).item_tower == "full" for name in MODELS if not name.endswith("-plus"))


def test_model_rejects_bad_inputs():
    with pytest.raises(ValueError, match="num_domains"):
        TwoTowerModel(make_schema(), 0)
    model = TwoTowerModel(make_schema(), D, TwoTowerConfig(**TINY))
    features, _ = make_batch()
    with pytest.raises(ValueError, match="out of range"):
        model.user_embedding(features, torch.full((B,), D, dtype=torch.long))


@pytest.mark.parametrize("item_tower_norm", [False, True])
def test_item_tower_norm_switch(item_tower_norm):
    from adirec.models.config import TwoTowerConfig
    from adirec.models.adi import TwoTowerModel
    from adirec.models.layers import DomainSpecificBatchNorm
    schema = make_schema()
    model = TwoTowerModel(schema, D, TwoTowerConfig(item_tower_norm=item_tower_norm))
    norms = lambda tower: [m for m in tower.modules() if isinstance(m, (nn.BatchNorm1d, DomainSpecificBatchNorm))]
    assert bool(norms(model.item_tower)) == item_tower_norm
    assert norms(model.user_tower)  # the user tower always normalises
    feats, domain = make_batch()
    model.train()
    full = model.item_embedding(feats, domain)
    half = model.item_embedding({k: v[:B // 2] for k, v in feats.items()}, domain[:B // 2])
    # without batch statistics an item's vector does not depend on the rest of the batch
    assert torch.allclose(full[:B // 2], half, atol=1e-6) == (not item_tower_norm)


def test_excluded_fields_have_no_table():
    model = TwoTowerModel(make_schema(), D, TwoTowerConfig(**TINY))
    assert "user_id" not in model.embeddings.tables  # excluded by default
    assert "user_id" in TwoTowerModel(make_schema(), D, TwoTowerConfig(**TINY, exclude_fields=())).embeddings.tables


def test_config_fields_declare_their_flags():
    import argparse
    from adirec.options import add_options, given_options
    parser = argparse.ArgumentParser()
    add_options(parser, TwoTowerConfig)
    args = parser.parse_args(["--shared-experts", "domains+1", "--no-dial-per-domain", "--se-in-experts",
                              "--gate-input", "features", "--expert-hidden", "8,4", "--fusion", "sum"])
    given = given_options(args, TwoTowerConfig)
    assert given == {"shared_experts": "domains+1", "dial_per_domain": False, "se_in_experts": True,
                     "gate_input": "features", "expert_hidden": (8, 4), "fusion": "sum"}
    cfg = TwoTowerConfig(**given)
    assert cfg.resolved(D).shared_experts == D + 1
    assert given_options(parser.parse_args(["--shared-experts", "3"]), TwoTowerConfig) == {"shared_experts": 3}
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
        parser.parse_args(["--gate-input", "items"])
