"""Backbones: causality, left-padding invariance, BERT4Rec masking, external item tables."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from llmemb.backbones import (
    BACKBONES,
    BackboneConfig,
    FixedItemEmbedding,
    IdItemEmbedding,
    build_backbone,
    build_id_backbone,
    left_pad,
)
from llmemb.backbones.bert4rec import MASK_ID
from llmemb.item_tables import AdaptedItemEmbedding
from llmemb.losses import full_softmax_ce

N_ITEMS = 30


def make(name: str, max_len: int = 8, **kw) -> nn.Module:
    torch.manual_seed(0)
    cfg = BackboneConfig(name=name, hidden=16, max_len=max_len, n_heads=2, dropout=0.3, **kw)
    return build_id_backbone(cfg, N_ITEMS).eval()


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_states_ignore_future_items(name):
    model = make(name)
    seq = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2]])
    changed = seq.clone()
    changed[0, 5:] = torch.tensor([11, 12, 13])
    a, b = model.hidden_states(seq), model.hidden_states(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)


def test_bert4rec_is_bidirectional():
    model = make("bert4rec")
    seq = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2]])
    changed = seq.clone()
    changed[0, -1] = 20
    assert not torch.allclose(model.hidden_states(seq)[:, 2], model.hidden_states(changed)[:, 2], atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_more_left_padding_changes_nothing(name):
    model = make(name, max_len=10)
    history = [[5, 2, 8, 1], [7], [3, 3, 9, 14, 21, 6, 2]]
    narrow = model.encode(left_pad(history, 7))
    wide = model.encode(left_pad(history, 10))
    assert torch.allclose(narrow, wide, atol=1e-5)
    # one user alone gives the same vector as inside a batch with other lengths
    alone = model.encode(left_pad(history[1:2], 3))
    assert torch.allclose(alone, narrow[1:2], atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_padding_invariance_does_not_rely_on_a_zero_padding_row(name):
    torch.manual_seed(0)
    table = torch.randn(N_ITEMS + 1, 16)  # row 0 deliberately not zero
    model = build_backbone(BackboneConfig(name=name, hidden=16, max_len=10, n_heads=2), FixedItemEmbedding(table))
    model.eval()
    history = [[5, 2, 8, 1], [7]]
    assert torch.allclose(model.encode(left_pad(history, 4)), model.encode(left_pad(history, 10)), atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_padded_rows_are_finite_and_zero(name):
    model = make(name).train()
    inputs = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 4], [0] * 8, [1, 2, 3, 4, 5, 6, 7, 8]])
    states = model.hidden_states(inputs)
    assert torch.isfinite(states).all()
    assert (states[inputs == 0] == 0).all()
    loss = full_softmax_ce(states, torch.tensor([[0] * 7 + [5], [0] * 8, [2] * 8]), model.item_embedding.table())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_encode_keeps_the_most_recent_max_len_items():
    model = make("sasrec", max_len=4)
    long = torch.tensor([[9, 9, 9, 1, 2, 3, 4]])
    assert torch.allclose(model.encode(long), model.encode(long[:, -4:]), atol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        model.hidden_states(long)


def test_causal_training_pairs_shift_and_skip_the_first_item():
    model = make("sasrec")
    seq = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9, 10]])
    inputs, targets = model.training_pairs(seq)
    assert inputs.tolist() == [[0, 0, 0, 5, 6, 7, 8, 9]]
    assert targets.tolist() == [[0, 0, 0, 6, 7, 8, 9, 10]]


# ------------------------------------------------------------------ BERT4Rec
def test_bert4rec_cloze_masking_properties():
    model = make("bert4rec", max_len=20, mask_ratio=0.3)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 21, (400,), generator=g)
    seqs = torch.zeros(400, 21, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        seqs[row, 21 - n:] = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    inputs, targets = model.training_pairs(seqs, torch.Generator().manual_seed(7))
    original = seqs[:, 1:]
    masked = inputs == MASK_ID
    assert inputs.shape == targets.shape == original.shape
    assert torch.equal(masked, targets != 0)                   # targets exactly at masked positions
    assert torch.equal(targets[masked], original[masked])      # ... and they are the hidden items
    assert torch.equal(inputs[~masked], original[~masked])     # everything else untouched
    assert not masked[original == 0].any()                     # padding is never masked
    nonempty = (original != 0).any(1)
    assert masked[nonempty].any(1).all()                       # at least one mask per sequence
    ratio = masked.sum() / (original != 0).sum()
    assert 0.27 < float(ratio) < 0.36                          # ~mask_ratio (+ forced ones)
    again = model.training_pairs(seqs, torch.Generator().manual_seed(7))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


def test_bert4rec_mask_last_prob_one_always_masks_the_last_item():
    model = make("bert4rec", max_len=6, mask_ratio=0.1, mask_last_prob=1.0)
    seqs = torch.randint(1, N_ITEMS + 1, (50, 7), generator=torch.Generator().manual_seed(0))
    inputs, targets = model.training_pairs(seqs, torch.Generator().manual_seed(0))
    assert (inputs[:, -1] == MASK_ID).all()
    assert torch.equal(targets[:, -1], seqs[:, -1])


def test_bert4rec_encode_appends_the_mask_token():
    model = make("bert4rec", max_len=5)
    full = torch.tensor([[1, 2, 3, 4, 5]])
    expected = model.hidden_states(torch.tensor([[2, 3, 4, 5, MASK_ID]]))[:, -1]
    assert torch.allclose(model.encode(full), expected, atol=1e-6)
    short = torch.tensor([[0, 0, 7, 8]])
    expected = model.hidden_states(torch.tensor([[0, 0, 7, 8, MASK_ID]]))[:, -1]
    assert torch.allclose(model.encode(short), expected, atol=1e-6)
    # the mask token is the model's own parameter, not a row of the item table
    assert model.item_embedding.table().shape[0] == N_ITEMS + 1
    assert any(name == "mask_embedding" for name, _ in model.named_parameters())


# -------------------------------------------------------- external item tables
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_scores_follow_the_given_table(name):
    torch.manual_seed(0)
    cfg = BackboneConfig(name=name, hidden=16, max_len=8, n_heads=2)
    table_a = torch.randn(N_ITEMS + 1, 16)
    table_a[0] = 0
    model = build_backbone(cfg, FixedItemEmbedding(table_a)).eval()
    history = left_pad([[3, 4, 5]], 8)
    user = model.encode(history)
    assert torch.allclose(model.score_all(user), user @ table_a.T, atol=1e-5)
    candidates = torch.tensor([[1, 7, 30]])
    assert torch.allclose(model.score_candidates(user, candidates), (user @ table_a.T)[:, [1, 7, 30]], atol=1e-5)

    # swap the table (RAT / serving): the same backbone now scores with the new one
    table_b = table_a.flip(0).clone()
    table_b[0] = 0
    backbone_state = model.backbone_state_dict()
    assert not any(k.startswith("item_embedding.") for k in backbone_state)
    swapped = build_backbone(cfg, FixedItemEmbedding(table_b)).eval()
    swapped.load_backbone_state_dict(backbone_state)
    user_b = swapped.encode(history)
    assert torch.allclose(swapped.score_all(user_b), user_b @ table_b.T, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_gradients_reach_an_external_adapter(name):
    torch.manual_seed(0)
    source = torch.randn(N_ITEMS + 1, 24)
    source[0] = 0
    adapter = nn.Sequential(nn.Linear(24, 32), nn.Linear(32, 16))
    embedding = AdaptedItemEmbedding(source, adapter, freeze=True)
    model = build_backbone(BackboneConfig(name=name, hidden=16, max_len=8, n_heads=2), embedding)
    seqs = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3, 2, 1]])
    inputs, targets = model.training_pairs(seqs, torch.Generator().manual_seed(0))
    loss = full_softmax_ce(model.hidden_states(inputs), targets, model.item_embedding.table())
    loss.backward()
    assert adapter[0].weight.grad is not None and adapter[0].weight.grad.abs().sum() > 0
    assert embedding.source.grad is None  # the frozen LLM/PCA table stays frozen


def test_build_backbone_rejects_unknown_names_and_mismatched_tables():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone(BackboneConfig(name="transformer4rec"), IdItemEmbedding(5, 64))
    with pytest.raises(ValueError, match="hidden"):
        build_backbone(BackboneConfig(name="sasrec", hidden=32), IdItemEmbedding(5, 64))


def test_a_backbone_section_with_an_unknown_key_is_refused_naming_it():
    assert BackboneConfig.from_dict({"name": "gru4rec", "hidden": 8}).hidden == 8
    with pytest.raises(ValueError, match=r"^backbone: unknown key\(s\) hiden; known: .*hidden"):
        BackboneConfig.from_dict({"name": "sasrec", "hiden": 8})
