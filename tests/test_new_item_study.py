"""trainer/studies/new_item_study.py: the rank-matching rule places new items exactly as the text-only model
ranks them (g = 1) and moves warm targets down only by the new items placed above them."""
from __future__ import annotations

import torch

from trainer.studies.new_item_study import matched_ranks, plain_ranks


def test_rank_matching_keeps_the_text_models_rank_of_new_items_and_shifts_warm_ones():
    gen = torch.Generator().manual_seed(0)
    users, items = 40, 30
    hybrid = torch.randn(users, items, generator=gen)
    text = torch.randn(users, items, generator=gen)
    hybrid[:, 0] = text[:, 0] = -float("inf")            # padding
    cold = torch.zeros(items, dtype=torch.bool)
    cold[torch.tensor([3, 7, 11, 19, 25])] = True
    targets = torch.randint(1, items, (users,), generator=gen)
    ranks = matched_ranks(hybrid, text, cold, targets, g=1.0)
    text_ranks = plain_ranks(text, targets)
    warm_hybrid = plain_ranks(hybrid.masked_fill(cold, -float("inf")), targets)   # among warm items only
    for u in range(users):
        t = int(targets[u])
        if cold[t]:
            assert ranks[u] == text_ranks[u]
        else:
            warm = ~cold & torch.isfinite(hybrid[u])
            places = (text[u][warm][None, :] > text[u][cold][:, None]).sum(1)
            assert ranks[u] == warm_hybrid[u] + int((places <= warm_hybrid[u]).sum())
    pushed = matched_ranks(hybrid, text, cold, targets, g=4.0)
    is_cold = cold[targets]
    assert bool((pushed[is_cold] >= ranks[is_cold]).all()) and bool((pushed[~is_cold] <= ranks[~is_cold]).all())
