"""RAT's alignment loss as the methods add it: over the batch's distinct targets, in the three forms."""
from __future__ import annotations

import pytest
import torch

from llmemb.contrastive import symmetric_contrastive_loss
from llmemb.methods import METHODS, RATConfig, get_method
from tests.method_fixtures import aligned_model, alignment_loss


def test_uses_alignment_truth_table():
    on = RATConfig(alpha=0.01)
    off = RATConfig(alpha=0.0)
    expected = {"none": False, "llm2x": False, "llmemb": True, "hybrid": True, "wo_scft": True, "wo_adapter": True,
                "wo_freeze": True, "wo_align": False}
    assert {m: get_method(m).uses_alignment(on) for m in METHODS} == expected
    assert not any(get_method(m).uses_alignment(off) for m in METHODS)




@pytest.mark.parametrize("variant", ["paper", "infonce"])
def test_alignment_loss_value_over_distinct_targets(variant):
    model, id_table = aligned_model()
    rat = RATConfig(alpha=0.3, align_temperature=2.0, align_similarity="dot", align_loss=variant)
    extra = alignment_loss(id_table, rat)
    targets = torch.tensor([[0, 4, 7, 4], [0, 0, 12, 7]])
    inputs = torch.ones_like(targets)
    value = extra(model, inputs, targets)
    ids = torch.tensor([4, 7, 12])
    with torch.no_grad():
        e = model.item_embedding.table()[ids]
        direct = 0.3 * symmetric_contrastive_loss(e, id_table[ids].detach(), 2.0, "dot",
                                                  exclude_positive=(variant == "paper"))
        # duplicates counted: a different (wrong) value
        dup = torch.tensor([4, 7, 4, 12, 7])
        with_dups = 0.3 * symmetric_contrastive_loss(model.item_embedding.table()[dup], id_table[dup].detach(),
                                                     2.0, "dot", exclude_positive=(variant == "paper"))
    assert torch.isclose(value, direct, atol=1e-6)
    assert not torch.isclose(value, with_dups, atol=1e-4)
    # the order of targets in the batch does not matter
    assert torch.isclose(extra(model, inputs, targets.flip(1)), value, atol=1e-6)


def test_align_max_items_aligns_on_a_uniform_draw_of_that_many_distinct_targets():
    model, id_table = aligned_model()
    targets = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 2, 3]])   # 10 distinct items
    inputs = torch.ones_like(targets)
    rat = RATConfig(alpha=1.0, align_max_items=4)
    torch.manual_seed(5)
    capped = alignment_loss(id_table, rat)(model, inputs, targets)
    torch.manual_seed(5)   # the draw the hook makes, from torch's generator
    chosen = torch.unique(targets)[torch.randperm(10)[:4]]
    with torch.no_grad():
        e = model.item_embedding.table()[chosen]
        direct = symmetric_contrastive_loss(e, id_table[chosen].detach(), 2.0, "dot", exclude_positive=True)
    assert torch.isclose(capped, direct, atol=1e-6)
    full = alignment_loss(id_table, RATConfig(alpha=1.0))(model, inputs, targets)
    assert not torch.isclose(capped, full, atol=1e-4)
    # at or under the cap nothing is drawn: the loss is the uncapped one
    small = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(alignment_loss(id_table, rat)(model, small, small),
                       alignment_loss(id_table, RATConfig(alpha=1.0))(model, small, small))
    for bad in (1, 0, 2.5, "8"):
        with pytest.raises(ValueError, match="rat.align_max_items"):
            RATConfig.from_dict({"align_max_items": bad})


def test_alignment_loss_paper_and_infonce_differ_and_alpha_scales():
    model, id_table = aligned_model()
    targets = torch.tensor([[1, 2, 3, 5]])
    paper = alignment_loss(id_table, RATConfig(alpha=1.0))(model, targets, targets)
    infonce = alignment_loss(id_table, RATConfig(alpha=1.0, align_loss="infonce"))(model, targets, targets)
    small = alignment_loss(id_table, RATConfig(alpha=0.01))(model, targets, targets)
    assert not torch.isclose(paper, infonce)
    assert torch.isclose(small, 0.01 * paper, rtol=1e-5)


def test_alignment_loss_does_not_train_the_id_table():
    model, id_table = aligned_model()
    extra = alignment_loss(id_table, RATConfig(alpha=1.0))
    loss = extra(model, torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 2, 3, 9]]))
    assert loss.requires_grad and loss.item() != 0
    loss.backward()
    assert id_table.grad is None
    grads = [p.grad for p in model.item_embedding.adapter.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_alignment_loss_is_zero_with_fewer_than_two_distinct_targets():
    model, id_table = aligned_model()
    extra = alignment_loss(id_table, RATConfig(alpha=1.0))
    for targets in (torch.tensor([[0, 5, 5, 0]]), torch.zeros(2, 3, dtype=torch.long)):
        value = extra(model, torch.ones_like(targets), targets)
        assert value.item() == 0.0 and value.dtype == torch.float32
    assert extra(model, torch.ones(1, 2, dtype=torch.long), torch.tensor([[5, 6]])).item() != 0.0



def test_soft_variant_reaches_the_extra_loss_and_differs_from_paper():
    model, id_table = aligned_model()
    targets = torch.tensor([[1, 2, 3, 5]])
    soft = alignment_loss(id_table, RATConfig(alpha=1.0, align_loss="soft"))(model, targets, targets)
    paper = alignment_loss(id_table, RATConfig(alpha=1.0))(model, targets, targets)
    assert torch.isfinite(soft) and not torch.isclose(soft, paper)
    with pytest.raises(ValueError, match="align_loss"):
        RATConfig.from_dict({"align_loss": "clip"})
