"""Tests of the comparison methods: shapes, parameter budget, equivalences, tiny training runs."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from adirec.data.batches import FeatureStore, iterate_batches
from adirec.data.sources import load_source
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.config import TwoTowerConfig
from adirec.models.adi import TwoTowerModel
from adirec.models.baselines import (
    CrossStitchBackbone,
    MMoEBackbone,
    PLEBackbone,
    SharedBottomBackbone,
    StarBackbone,
)
from adirec.models.experts import BACKBONES, ADIBackbone, Backbone, DomainGate, MLPBackbone
from adirec.models.layers import MLP, HiddenSE, SEAdaptation
from adirec.models.per_domain import PerDomainModel
from adirec.train.per_domain import fit_per_domain
from adirec.data.split import restrict_to_domain
from adirec.models.registry import (
    MODELS,
    Preset,
    SE_LAYOUTS,
    budget_matched_config,
    build_config,
    build_model,
    match_parameter_budget,
    parameter_counts,
    train_defaults,
)
from adirec.train.config import TrainConfig
from adirec.train.loop import Trainer, TwoTowerScorer

D, B = 3, 24
TINY = dict(embedding_dim=8, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=8)
NEURAL = ["dnn", "dnn-blind", "dnn-single", "shared-bottom", "cross-stitch", "mmoe", "ple", "star",
          "adi-lt", "adi-va", "adi-se", "adi-se-max"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def data():
    return load_source("synthetic:tiny")


def batch(data, n: int = B):
    """Real features of n training rows, every domain present."""
    tr = data.splits["train"]
    rows = np.concatenate([np.flatnonzero(tr.domain == d)[: n // D] for d in range(D)])
    store = FeatureStore(data)
    domain = torch.as_tensor(tr.domain[rows])
    features = store.user_features(tr.user[rows], domain, exclude_item=tr.item[rows])
    features |= store.item_features(tr.item[rows], domain)
    return features, domain


def test_every_method_is_a_preset():
    assert set(NEURAL) <= set(MODELS)
    assert {"shared-bottom", "cross-stitch", "mmoe", "ple", "star"} <= set(BACKBONES)


# -----------------------------------------------------------------------------
# presets with their default options

# name: (gate kind, gate input, shared experts, specific experts per domain, self-training)
PRESETS = {
    "adi-se": ("linear", "domain", 1, 1, True),
    "adi-va": ("linear", "domain", 1, 1, True),
    "adi-lt": ("linear", "domain", 1, 1, True),
    "adi-se-max": ("linear", "domain", 3, 1, True),
    "adi-plus": ("linear", "domain", 1, 1, False),  # adirec's preset: ADI-SE's towers, own training
    "dnn-plus": (None, None, 0, 0, False),
    "dnn": (None, None, 0, 0, False),
    "dnn-blind": (None, None, 0, 0, False),
    "dnn-single": (None, None, 0, 0, False),
    "shared-bottom": (None, None, 0, 0, False),
    "cross-stitch": (None, None, 0, 0, False),
    "mmoe": ("softmax", "features", D + 1, 0, False),  # D + 1 experts (ADI paper, section 5.1.4)
    "ple": ("softmax", "features", 1, 1, False),
    "star": (None, None, 0, 0, False),
}


def expert_counts(backbone) -> tuple[int, int]:
    """(shared experts, domain-specific experts per domain) of a backbone."""
    if isinstance(backbone, ADIBackbone):
        return len(backbone.shared.experts), 0 if backbone.specific is None else 1
    if isinstance(backbone, MMoEBackbone):
        return len(backbone.experts), 0
    if isinstance(backbone, PLEBackbone):
        return len(backbone.levels[0].shared), len(backbone.levels[0].specific)
    return 0, 0


def test_every_preset_is_listed_here():
    assert set(PRESETS) == set(MODELS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_defaults_and_one_training_step(data, name):
    torch.set_num_threads(1)
    kind, source, n_shared, n_specific, self_training = PRESETS[name]
    config = build_config(name, num_domains=D)
    model = build_model(name, data.schema, D)
    towers = [model.user_tower] if isinstance(model, TwoTowerModel) else [model.models[0].user_tower]
    tower = towers[0]
    gates = {(m.kind, m.source) for m in tower.modules() if isinstance(m, DomainGate)}
    assert gates == (set() if kind is None else {(kind, source)})
    assert expert_counts(tower.backbone) == (n_shared, n_specific)
    if name.startswith("adi"):
        assert isinstance(tower.adaptation, SEAdaptation) == (config.dial == "se")
        assert tower.adaptation.per_domain and config.dsbn and config.fusion == "concat"
        assert model.embeddings.domain is not None  # f_domain, read by the gates
    else:
        assert config.dial == "none"
    defaults = train_defaults(name)
    assert defaults["self_training"] == {"enabled": self_training}
    assert defaults.get("corpus_negatives_only", True) == (name != "dnn-blind")
    # one training step on one batch, with the preset's training defaults, lowers that batch's loss;
    # a small rate, as Adam's first step moves every weight by about lr, which can overshoot
    tcfg = TrainConfig(**{**defaults, "batch_size": 256, "num_negatives": 0, "lr": 1e-3,
                          "progress": False, "seed": 0})
    trainer = Trainer(model, data, tcfg, report_split="test", protocol="full")
    first = next(iterate_batches(trainer.train_data.splits["train"], 256, shuffle=True, seed=0))
    model.train()
    torch.manual_seed(0)  # the same dropout masks and samples for both losses
    before, _ = trainer.loss(first, 0.0)
    trainer.optimizer.zero_grad(set_to_none=True)
    before.backward()
    trainer.optimizer.step()
    torch.manual_seed(0)
    after, _ = trainer.loss(first, 0.0)
    assert after.item() < before.item(), (name, before.item(), after.item())


def test_dnn_blind_knows_nothing_of_domains(data):
    model = build_model("dnn-blind", data.schema, D)
    read = [f.name for f in model.user_tower.embeddings.fields + model.item_tower.embeddings.fields]
    assert read and not any(data.schema[n].per_domain for n in read)
    assert model.embeddings.domain is None
    assert isinstance(model.user_tower.backbone, MLPBackbone) and not model.config.dsbn
    assert not model.config.domain_forward and model.config.dial == "none"
    features, domain = batch(data)
    # the per-domain fields of another domain (rows shifted): dnn-blind does not move, dnn does
    per_domain = [f.name for f in data.schema.fields if f.per_domain]
    assert per_domain
    moved = {k: (v.roll(1, dims=0) if k in per_domain else v) for k, v in features.items()}
    dnn = build_model("dnn", data.schema, D)
    for train in (True, False):
        model.train(train)
        dnn.train(train)
        for d in range(D):  # any domain indicator: the same vectors
            same = torch.full_like(domain, d)
            torch.testing.assert_close(model.user_embedding(moved, same), model.user_embedding(features, domain))
            torch.testing.assert_close(model.item_embedding(moved, same), model.item_embedding(features, domain))
        assert not torch.allclose(dnn.user_embedding(moved, domain), dnn.user_embedding(features, domain))


def test_domain_dependent_defaults_resolve_with_the_number_of_domains(data):
    assert build_config("mmoe").shared_experts == "domains+1"  # not known yet
    assert build_config("mmoe", num_domains=5).shared_experts == 6
    assert build_config("mmoe", num_domains=5, shared_experts=2).shared_experts == 2  # the user's
    model = build_model("mmoe", data.schema, D, build_config("mmoe"))
    assert model.config.shared_experts == D + 1 and len(model.user_tower.backbone.experts) == D + 1
    assert build_config("adi-se", num_domains=5) == build_config("adi-se")


def test_adi_plus_on_one_domain_is_dnn_plus(data):
    one = restrict_to_domain(data, 0)
    assert one.num_domains == 1
    # on one domain: dnn-plus's config, the user's options still on top
    assert build_config("adi-plus", num_domains=1) == build_config("dnn-plus", num_domains=1)
    assert build_config("adi-plus", num_domains=1, dropout=0.1).dropout == 0.1
    # on several, or not known yet: ADI's backbone
    several = TwoTowerConfig(**MODELS["adi-plus"].model)
    assert build_config("adi-plus", num_domains=D) == several.resolved(D)
    assert build_config("adi-plus") == several and several.backbone == "adi" and several.expert_out == 32
    # the model itself: the same parameters, initialised the same
    torch.manual_seed(0)
    adi = build_model("adi-plus", one.schema, 1)
    torch.manual_seed(0)
    dnn = build_model("dnn-plus", one.schema, 1)
    assert isinstance(adi.user_tower.backbone, MLPBackbone)
    assert adi.state_dict().keys() == dnn.state_dict().keys()
    for k, v in adi.state_dict().items():
        torch.testing.assert_close(v, dnn.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown TwoTowerConfig fields.*one_domain"):
        Preset("x", {}, one_domain={"no_such_field": 1})


# -----------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("name", NEURAL)
def test_forward_backward_shapes(data, name):
    model = build_model(name, data.schema, D, build_config(name, **TINY)).train()
    features, domain = batch(data)
    u, i = model(features, domain)
    assert u.shape == (len(domain), 8) and i.shape == (len(domain), 8)
    model.score(u, i).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    assert model.user_embedding(features, domain).shape == (len(domain), 8)
    assert model.num_parameters() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("cls,kwargs", [
    (SharedBottomBackbone, dict(hidden=(12, 6))),
    (CrossStitchBackbone, dict(layers=(12, 6))),
    (StarBackbone, dict(layers=(12, 6))),
    (PLEBackbone, dict(layers=(12, 6), num_shared=2, num_specific=2, levels=2)),
])
def test_backbones_follow_the_protocol(cls, kwargs):
    bb = cls(10, D, **kwargs)
    assert isinstance(bb, Backbone) and bb.out_dim == 6
    x, domain = torch.randn(B, 10, requires_grad=True), torch.arange(B) % D
    out = bb(x, domain)
    assert out.shape == (B, 6)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_mmoe_backbone_protocol():
    bb = MMoEBackbone(10, (12, 6), 3, D)
    assert isinstance(bb, Backbone) and bb.out_dim == 6
    assert bb(torch.randn(B, 10), torch.arange(B) % D).shape == (B, 6)
    assert bb.last_gate_weights.shape == (B, 3)


# -----------------------------------------------------------------------------
# equivalences


def test_dnn_with_one_domain_is_a_dnn_single_submodel(data):
    dnn = TwoTowerModel(data.schema, 1, build_config("dnn", **TINY))
    single = PerDomainModel(data.schema, D, build_config("dnn-single", **TINY))
    sub = single.models[1]
    shapes = {k: tuple(v.shape) for k, v in dnn.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in sub.state_dict().items()}  # same names and shapes
    sub.load_state_dict(dnn.state_dict())
    features, _ = batch(data)
    zeros = torch.zeros(B, dtype=torch.long)
    for train in (True, False):
        dnn.train(train)
        sub.train(train)
        torch.testing.assert_close(sub(features, zeros), dnn(features, zeros), rtol=0, atol=0)


def test_per_domain_model_routes_rows_and_sees_only_its_domain(data):
    """Full-data features through PerDomainModel == each sub-model on its one-domain data."""
    model = PerDomainModel(data.schema, D, build_config("dnn-single", **TINY)).eval()
    te = data.splits["test"]
    full = FeatureStore(data)
    domain = torch.as_tensor(te.domain)
    u = model.user_embedding(full.user_features(te.user, domain), domain)
    v = model.item_embedding(full.item_features(te.item, domain), domain)
    for d in range(D):
        rows = np.flatnonzero(te.domain == d)
        own = FeatureStore(restrict_to_domain(data, d))
        zeros = torch.zeros(len(rows), dtype=torch.long)
        u_own = model.models[d].user_embedding(own.user_features(te.user[rows], zeros), zeros)
        v_own = model.models[d].item_embedding(own.item_features(te.item[rows], zeros), zeros)
        torch.testing.assert_close(u[rows], u_own, rtol=0, atol=0)
        torch.testing.assert_close(v[rows], v_own, rtol=0, atol=0)
    # a user's one-domain history differs from the all-domain one somewhere: the swap matters
    both = full.user_features(te.user, domain)
    assert not torch.equal(both["hist_all"], both["hist_domain"])


@pytest.mark.parametrize("train", [True, False])
def test_star_with_unit_factors_is_the_shared_network(train):
    star = StarBackbone(10, D, (12, 6)).train(train)
    plain = MLP(10, (12, 6), num_domains=D, dsbn=True)
    plain.load_state_dict(star.shared.state_dict())  # the shared weights alone
    plain.train(train)
    x, domain = torch.randn(B, 10), torch.tensor([2, 0, 1, 1] * (B // 4))
    torch.testing.assert_close(star(x, domain), plain(x, domain))
    with torch.no_grad():  # a domain factor away from 1 moves that domain only
        star.domain_weight[0][1].mul_(1.5)
        star.domain_bias[1][2].add_(0.3)
    star.eval()
    plain.load_state_dict(star.shared.state_dict())
    plain.eval()
    moved, base = star(x, domain), plain(x, domain)
    torch.testing.assert_close(moved[domain == 0], base[domain == 0])
    assert not torch.allclose(moved[domain == 1], base[domain == 1])
    assert not torch.allclose(moved[domain == 2], base[domain == 2])


def test_star_uses_partitioned_norm_and_network_multiplication():
    star = StarBackbone(10, D, (12, 6))
    assert star.shared.dsbn  # partitioned normalisation = domain-specific BN
    assert star.domain_weight[0].shape == (D, 12, 10) and star.domain_bias[1].shape == (D, 6)
    x, domain = torch.randn(4, 10), torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        star.domain_weight[0][1].zero_()
        star.domain_bias[0][1].fill_(0.5)
    star.eval()
    # domain 1's first layer is then W * 0 + (b + 0.5): its output does not depend on x
    out = star(torch.cat([x[:2], torch.randn(2, 10)]), domain)
    out2 = star(torch.cat([x[:2], torch.randn(2, 10)]), domain)
    torch.testing.assert_close(out[2:], out2[2:])
    torch.testing.assert_close(out[:2], out2[:2])


@pytest.mark.parametrize("train", [True, False])
def test_mmoe_with_one_expert_is_that_expert(train):
    mmoe = MMoEBackbone(10, (12, 6), 1, D).train(train)
    twin = copy.deepcopy(mmoe.experts[0])
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    out = mmoe(x, domain)
    torch.testing.assert_close(mmoe.last_weights, torch.ones(B, 1))
    torch.testing.assert_close(out, twin(x, domain))


@pytest.mark.parametrize("gate", ["softmax", "linear"])
def test_ple_gate_weights_sum_to_one(gate):
    ple = PLEBackbone(10, D, (12, 6), num_shared=2, num_specific=3, levels=2, gate=gate)
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    ple(x, domain)
    for level in ple.levels:
        w = level.last_weights
        assert w.shape == (B, 5) and (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(B))
    assert ple.levels[0].shared_gate is not None and ple.levels[1].shared_gate is None


def test_ple_output_is_the_gated_mix_of_shared_and_own_experts():
    ple = PLEBackbone(10, D, (12, 6), num_shared=1, num_specific=1).eval()
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    out = ple(x, domain)
    cgc = ple.levels[0]
    w = cgc.last_weights
    shared = cgc.shared[0](x, domain)
    own = torch.stack([cgc.specific[0].nets[int(d)](x[b:b + 1], torch.zeros(1, dtype=torch.long))[0]
                       for b, d in enumerate(domain)])
    torch.testing.assert_close(out, w[:, :1] * shared + w[:, 1:] * own)


@pytest.mark.parametrize("train", [True, False])
def test_cross_stitch_with_identity_units_is_independent_columns(train):
    cs = CrossStitchBackbone(10, D, (12, 6)).train(train)
    torch.testing.assert_close(cs.stitch[0].sum(-1), torch.ones(D))  # rows of the mix sum to 1
    assert cs.stitch[0][0, 0] > cs.stitch[0][0, 1]  # mostly its own column at the start
    with torch.no_grad():
        for alpha in cs.stitch:
            alpha.copy_(torch.eye(D))
    twins = copy.deepcopy(cs.columns)
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    out = cs(x, domain)
    for d in range(D):
        rows = domain == d
        torch.testing.assert_close(out[rows], twins[d](x, domain)[rows])


def test_cross_stitch_mixes_columns():
    cs = CrossStitchBackbone(10, D, (12, 6)).eval()
    x, domain = torch.randn(B, 10), torch.arange(B) % D
    before = cs(x, domain)
    with torch.no_grad():
        cs.columns[2].linears[0].weight.add_(1.0)  # change column 2 only
    after = cs(x, domain)
    assert not torch.allclose(after[domain == 0], before[domain == 0])  # reached through the stitch


# -----------------------------------------------------------------------------
# SE layouts (their block counts and placement: test_equations.py)


@pytest.mark.parametrize("layout", list(SE_LAYOUTS))
def test_se_layouts_build_and_train(data, layout):
    cfg = build_config("adi-se", **SE_LAYOUTS[layout], **TINY)
    model = TwoTowerModel(data.schema, D, cfg)
    features, domain = batch(data)
    u, i = model(features, domain)
    model.score(u, i).sum().backward()
    for m in model.user_tower.modules():
        if isinstance(m, SEAdaptation):  # every SE block takes part
            assert m.w1.grad is not None and m.w1.grad.abs().sum() > 0
            assert m.last_weights.shape[0] > 0


def test_hidden_se_reweights_each_unit():
    se = HiddenSE(6, D, reduction=2)
    h, domain = torch.randn(B, 6), torch.arange(B) % D
    out = se(h, domain)
    w = se.field_weights(h.unsqueeze(-1), domain)  # (B, 6): one weight per unit and row
    torch.testing.assert_close(out, h * w)
    assert se.w1.shape == (D, 6, 3)


@pytest.mark.parametrize("bad,match", [
    (dict(se_in_experts=True, backbone="mlp"), "se_in_experts"),
    (dict(se_in_experts=1), "se_in_experts must be a bool"),
    (dict(dial_per_domain="no"), "dial_per_domain must be a bool"),
    (dict(per_domain_features=None), "per_domain_features must be a bool"),
    (dict(gate_input="items"), "gate_input"),
    (dict(backbone="ple", gate_input="domain"), "PLE"),
    (dict(shared_experts="domains+2"), "shared_experts"),
    (dict(shared_experts=0), "shared_experts"),
    (dict(specific_experts=0), "specific_experts"),
    (dict(ple_levels=0), "ple_levels"),
])
def test_new_config_fields_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        TwoTowerConfig(**bad)


def test_config_from_an_older_run_names_the_unknown_fields():
    saved = {**dataclasses.asdict(build_config("adi-se")), "se_placements": []}
    with pytest.raises(ValueError, match=r"run/config.json: unknown model config fields \['se_placements'\]"):
        TwoTowerConfig.from_dict(saved, source="run/config.json")
    assert TwoTowerConfig.from_dict(dataclasses.asdict(build_config("mmoe"))) == build_config("mmoe")


def test_netmul_with_se_in_experts():
    bb = ADIBackbone(10, D, hidden=(12,), out=6, fusion="netmul", se_in_experts=True,
                     domain_embedding=torch.nn.Embedding(D, 4))
    assert bb(torch.randn(B, 10), torch.arange(B) % D).shape == (B, 6)
    assert all(e.inner_se is not None for e in bb.shared.experts)


# -----------------------------------------------------------------------------
# parameter budget


def test_every_method_within_ten_percent_of_adi_se(data):
    ref = parameter_counts("adi-se", data.schema, D)
    for name in NEURAL:
        cfg = budget_matched_config(name, data.schema, D)
        counts = parameter_counts(name, data.schema, D, cfg)
        assert abs(counts["dense"] - ref["dense"]) <= 0.1 * ref["dense"], (name, counts, ref)
        assert counts["total"] == counts["dense"] + counts["embedding"]
        # the count without the meta trick is the same
        if name in ("mmoe", "dnn-single"):
            assert build_model(name, data.schema, D, cfg).num_parameters() == counts["total"]
    # the same inputs: one set of tables per model (per sub-model for dnn-single); ADI has one
    # more, the domain indicator's embedding f_domain (D x E) that its gates read
    assert parameter_counts("star", data.schema, D)["embedding"] == ref["embedding"] - D * 64
    assert parameter_counts("dnn-single", data.schema, D)["embedding"] == D * (ref["embedding"] - D * 64)


def test_budget_matching_scales_the_backbone_widths(data):
    target = parameter_counts("adi-se", data.schema, D)["dense"]
    unscaled = parameter_counts("dnn", data.schema, D)["dense"]
    assert unscaled < 0.5 * target  # a plain dnn is far smaller at the same widths
    cfg = match_parameter_budget("dnn", data.schema, D, target)
    assert cfg.expert_hidden[0] > 256 and cfg.expert_out > 128
    default = build_config("dnn")  # only the backbone widths move
    assert (cfg.forward_hidden, cfg.output_dim, cfg.embedding_dim) == (
        default.forward_hidden, default.output_dim, default.embedding_dim)
    assert match_parameter_budget("adi-va", data.schema, D, target) == build_config("adi-va")  # already in
    with pytest.raises(ValueError, match="no backbone width"):
        match_parameter_budget("dnn", data.schema, D, 10)  # the head alone is larger
    with pytest.raises(ValueError, match="target_params"):
        match_parameter_budget("dnn", data.schema, D, 0)


# -----------------------------------------------------------------------------
# training


def random_recall(data, split: str, k: int) -> float:
    """Expected Recall@k of a uniformly random ranking of the ``full`` protocol, mean over
    domains: per query, each relevant item among the c ranked candidates (the domain corpus
    without the user's training positives) is in the top k with probability min(1, k / c)."""
    tr, te = data.splits["train"], data.splits[split]
    seen: dict[int, set] = {}
    for u, i in zip(tr.user[tr.weight > 0].tolist(), tr.item[tr.weight > 0].tolist()):
        seen.setdefault(u, set()).add(i)
    per_domain = []
    for d in range(data.num_domains):
        corpus = set(data.corpus[d].tolist())
        rows = (te.domain == d) & (te.weight > 0)
        targets: dict[int, list] = {}
        for u, i in zip(te.user[rows].tolist(), te.item[rows].tolist()):
            targets.setdefault(u, []).append(i)
        recalls = []
        for u, items in targets.items():
            candidates = corpus - seen.get(u, set())
            p = min(1.0, k / len(candidates))
            recalls.append(sum(p for i in items if i in candidates) / len(items))
        per_domain.append(np.mean(recalls))
    return float(np.mean(per_domain))


@pytest.mark.parametrize("name", NEURAL)
def test_tiny_training_beats_random_ranking(data, name):
    torch.set_num_threads(1)
    model = build_model(name, data.schema, D, build_config(name, **TINY))
    cfg = TrainConfig(epochs=3, batch_size=128, num_negatives=64, lr=0.003, temperature=0.1,
                      patience=0, progress=False, seed=0)
    if isinstance(model, PerDomainModel):
        fit_per_domain(model, data, cfg, report_split="test", protocol="full")
    else:
        Trainer(model, data, cfg, report_split="test", protocol="full").fit()
    k = 10
    scorer = TwoTowerScorer(model, FeatureStore(data), data.num_items)
    got = evaluate(scorer, data, split="test", protocol="full", ks=[k], seen=SeenItems(data))
    recall = got.metrics(data.domains)[f"recall@{k}"]["mean"]
    chance = random_recall(data, "test", k)
    assert 0.03 < chance < 0.2
    assert recall > 1.5 * chance, (name, recall, chance)


# -----------------------------------------------------------------------------
# dnn-single: data restriction and run directories


def test_restrict_to_domain(data):
    one = restrict_to_domain(data, 2)
    assert one.domains == ["d3"] and one.num_domains == 1
    for s in ("train", "valid", "test"):
        full = data.splits[s]
        assert len(one.splits[s]) == int((full.domain == 2).sum())
        assert (one.splits[s].domain == 0).all()
        np.testing.assert_array_equal(one.splits[s].item, full.item[full.domain == 2])
    np.testing.assert_array_equal(one.corpus[0], data.corpus[2])
    assert one.schema is data.schema and len(one.item_keys) == len(data.item_keys)
    for k, v in data.item_domain_table.items():
        np.testing.assert_array_equal(one.item_domain_table[k][0], v[2])
    with pytest.raises(ValueError, match="outside"):
        restrict_to_domain(data, 3)


def test_restrict_keeps_candidate_lists(data):
    from adirec.data.dataset import Candidates, MultiDomainData
    te = data.splits["test"]
    cands = Candidates(te.user, te.domain, np.stack([te.item, np.full(len(te), -1)], axis=1))
    with_c = MultiDomainData(**{**{f: getattr(data, f) for f in (
        "name", "domains", "schema", "user_keys", "item_keys", "splits", "user_table", "item_table",
        "user_domain_table", "item_domain_table", "corpus", "meta")}, "candidates": {"test": cands}})
    one = restrict_to_domain(with_c, 1)
    c = one.candidates["test"]
    np.testing.assert_array_equal(c.user, te.user[te.domain == 1])
    assert (c.domain == 0).all() and c.items.shape == (int((te.domain == 1).sum()), 2)


def test_dnn_single_run_directory(tmp_path, data):
    from adirec.data.spec import DataSpec
    from adirec.runs import evaluate_run, load_run, train_run
    torch.set_num_threads(1)
    tcfg = TrainConfig(epochs=1, batch_size=256, num_negatives=32, progress=False, patience=0)
    out = tmp_path / "run"
    summary = train_run(DataSpec(source="synthetic:tiny"), "dnn-single", out, model_overrides=TINY,
                        train_config=tcfg, data=data, match_budget=True)
    assert set(summary["best_epoch"]) == set(data.domains)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "summary.json", "metrics.jsonl"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["domain"] for r in rows] == data.domains  # one epoch per sub-model
    model, _, cfg = load_run(out, data)
    assert isinstance(model, PerDomainModel) and cfg["model"] == "dnn-single"
    ref = parameter_counts("adi-se", data.schema, D, build_config("adi-se", **TINY))["dense"]
    dense = parameter_counts("dnn-single", data.schema, D, model.config)["dense"]
    assert abs(dense - ref) <= 0.1 * ref  # match_budget took effect and was saved
    report = evaluate_run(out, data=data, ks=[10])
    assert report["params"] == model.num_parameters() == summary["params"]
    assert set(report["metrics"]["recall@10"]) == {*data.domains, "mean"}
