"""Dataset: k-core filtering, numbering, leave-one-out split, popularity, tail, save/load."""
import numpy as np
import pytest

from llmemb.data.dataset import Dataset


def interactions_from(sequences: dict[str, list[str]]) -> list[tuple[str, str, float]]:
    """One interaction per item of each user's list, at times 1, 2, 3, ..."""
    return [(u, i, float(t)) for u, items in sequences.items() for t, i in enumerate(items, start=1)]


def external_sequences(ds: Dataset) -> dict[str, list[str]]:
    return {u: [ds.item_ids[i - 1] for i in seq] for u, seq in zip(ds.user_ids, ds.sequences)}


def test_kcore_needs_several_rounds_and_reaches_the_fixed_point():
    # Round 1 drops user u4 (2 interactions) and item z (1). Without u4, item y
    # has 1 interaction and goes in round 2; without y, user u3 has 2 and goes
    # in round 3; without u3, item x has 1 and goes in round 4. A single pass
    # would keep u3, x and y.
    raw = {
        "u1": ["a", "b", "c"],
        "u2": ["a", "b", "c"],
        "u3": ["a", "y", "x"],
        "u4": ["y", "x"],
        "u5": ["a", "b", "c", "z", "x"],
    }
    ds = Dataset.from_interactions("toy", "item", interactions_from(raw), {}, user_core=3, item_core=2)
    assert external_sequences(ds) == {
        "u1": ["a", "b", "c"],
        "u2": ["a", "b", "c"],
        "u5": ["a", "b", "c"],
    }
    assert ds.filter_log["kcore_rounds"] >= 4
    assert ds.filter_log["raw_interactions"] == 16
    # The result is a fixed point: every user and item meets its threshold.
    counts = np.bincount(np.concatenate(ds.sequences), minlength=ds.n_items + 1)
    assert counts[1:].min() >= 2
    assert min(len(s) for s in ds.sequences) >= 3


def test_users_need_three_interactions_even_with_lower_core():
    raw = {"u1": ["a", "b"], "u2": ["a", "b", "c"], "u3": ["c", "a", "b"]}
    ds = Dataset.from_interactions("toy", "item", interactions_from(raw), {}, user_core=1, item_core=1)
    assert ds.user_ids == ["u2", "u3"]
    assert ds.filter_log["user_core"] == 3


def test_everything_filtered_raises():
    with pytest.raises(ValueError, match="no interactions left"):
        Dataset.from_interactions("toy", "item", interactions_from({"u": ["a", "b"]}), {}, 3, 1)


def test_sequences_are_time_ordered_ties_keep_input_order_and_ids_are_dense():
    rows = [
        ("u1", "c", 30.0),
        ("u1", "a", 10.0),
        ("u1", "b", 20.0),
        ("u2", "b", 5.0),
        ("u2", "d", 7.0),
        ("u2", "a", 7.0),  # same time as d: input order keeps d first
    ]
    ds = Dataset.from_interactions("toy", "item", rows, {}, user_core=3, item_core=1)
    assert external_sequences(ds) == {"u1": ["a", "b", "c"], "u2": ["b", "d", "a"]}
    # Items numbered by first appearance in time: b (5), d (7), a (7, later in input), c (30).
    assert ds.item_ids == ["b", "d", "a", "c"]
    assert sorted(set(np.concatenate(ds.sequences).tolist())) == [1, 2, 3, 4]
    assert ds.user_ids == ["u2", "u1"]  # ordered by first interaction


def test_require_attributes_drops_items_without_attributes():
    raw = {"u1": ["a", "b", "c", "d"], "u2": ["a", "b", "c", "d"]}
    attrs = {"a": {"title": "A"}, "b": {"title": "B"}, "c": {"title": "C"}}
    ds = Dataset.from_interactions("toy", "item", interactions_from(raw), attrs, 3, 1, require_attributes=True)
    assert ds.item_ids == ["a", "b", "c"]
    assert ds.filter_log["dropped_without_attributes"] == 2
    assert ds.item_attributes(ds.item_index()["b"]) == {"title": "B"}


@pytest.fixture
def ten_items() -> Dataset:
    # Training parts (all but the last two items) use items 1..6 with known counts;
    # valid/test targets are items 7..10, which a correct popularity never counts.
    sequences = [
        np.array([1, 1, 2, 7, 8]),
        np.array([1, 2, 3, 9, 10]),
        np.array([1, 2, 4, 5, 6, 7, 9]),
        np.array([1, 3, 10, 10]),
    ]
    return Dataset(
        name="ten",
        domain="item",
        user_ids=["u1", "u2", "u3", "u4"],
        item_ids=[f"i{k}" for k in range(1, 11)],
        sequences=sequences,
        attributes=[{"title": f"item {k}", "tags": ["x", "y"], "price": 1.5} for k in range(1, 11)],
        filter_log={"raw_interactions": 21},
    )


def test_split_leave_one_out(ten_items):
    split = ten_items.split()
    assert split.valid_target.tolist() == [7, 9, 7, 10]
    assert split.test_target.tolist() == [8, 10, 9, 10]
    assert [t.tolist() for t in split.train] == [[1, 1, 2], [1, 2, 3], [1, 2, 4, 5, 6], [1, 3]]
    assert [h.tolist() for h in split.valid_history] == [t.tolist() for t in split.train]
    assert [h.tolist() for h in split.test_history] == [
        [1, 1, 2, 7],
        [1, 2, 3, 9],
        [1, 2, 4, 5, 6, 7],
        [1, 3, 10],
    ]


def test_popularity_counts_only_training_parts(ten_items):
    pop = ten_items.popularity()
    assert pop.shape == (11,)
    assert pop.tolist() == [0, 5, 3, 2, 1, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("head_fraction,n_head", [(0.2, 2), (0.5, 5), (0.0, 0), (1.0, 10)])
def test_tail_mask_size_and_head_members(ten_items, head_fraction, n_head):
    tail = ten_items.tail_mask(head_fraction)
    assert tail.shape == (11,)
    assert not tail[0]  # padding is neither head nor tail
    assert int(tail.sum()) == 10 - n_head
    if n_head >= 2:
        assert not tail[1] and not tail[2]  # the two most popular are head items
    if n_head < 10:
        assert tail[10]


def test_stats_keys(ten_items):
    stats = ten_items.stats()
    for key in ("users", "items", "interactions", "density", "avg_length", "tail_items",
                "tail_share_of_train_interactions", "tail_share_of_test_targets", "filter_raw_interactions"):
        assert key in stats
    assert stats["users"] == 4 and stats["items"] == 10 and stats["interactions"] == 21
    assert stats["tail_items"] == 8


def test_save_load_round_trip(ten_items, tmp_path):
    ten_items.filter_log["skipped_lines"] = {"reviews.json": 2}
    ten_items.attributes[0]["title"] = "Café \"quoted\"\nline"
    ten_items.save(tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    assert back.name == "ten" and back.domain == "item"
    assert back.user_ids == ten_items.user_ids
    assert back.item_ids == ten_items.item_ids
    assert back.attributes == ten_items.attributes
    assert back.filter_log == ten_items.filter_log
    assert len(back.sequences) == len(ten_items.sequences)
    for a, b in zip(back.sequences, ten_items.sequences):
        assert a.dtype == np.int64
        assert a.tolist() == b.tolist()
    assert back.popularity().tolist() == ten_items.popularity().tolist()


# ------------------------------------------------------------ sparse regimes
def test_keep_last_cuts_each_sequence_and_renumbers_the_items_left(ten_items):
    cut = ten_items.keep_last(3)
    ext = {u: [cut.item_ids[i - 1] for i in s] for u, s in zip(cut.user_ids, cut.sequences)}
    # the last three items of each user, in time order, under their external ids
    assert ext == {"u1": ["i2", "i7", "i8"], "u2": ["i3", "i9", "i10"], "u3": ["i6", "i7", "i9"],
                   "u4": ["i3", "i10", "i10"]}
    # items nobody interacts with any more (i1, i4) are gone; the rest keep their relative order
    assert cut.item_ids == ["i2", "i3", "i6", "i7", "i8", "i9", "i10"]
    assert [cut.item_attributes(k)["title"] for k in range(1, cut.n_items + 1)] == \
        [f"item {k}" for k in (2, 3, 6, 7, 8, 9, 10)]
    assert all(s.min() >= 1 and s.max() <= cut.n_items for s in cut.sequences)
    assert cut.filter_log["last_items"] == 3 and cut.filter_log["items_before_last_items"] == 10
    assert ten_items.n_items == 10                 # the original is untouched
    with pytest.raises(ValueError, match="at least 3"):
        ten_items.keep_last(2)


def test_last_items_in_the_dataset_spec(tmp_path):
    from pathlib import Path

    from llmemb.data import load_dataset
    ml100k = Path(__file__).resolve().parents[1] / "data" / "ml-100k"
    spec = {"name": "ml", "format": "movielens", "path": str(ml100k), "domain": "movie",
            "user_core": 5, "item_core": 5}
    dense = load_dataset(spec)
    sparse = load_dataset({**spec, "last_items": 10})
    assert sparse.n_users == dense.n_users and {len(s) for s in sparse.sequences} == {10}
    assert sparse.n_items < dense.n_items
    # the cut keeps each user's most recent items: the same test targets
    assert [sparse.item_ids[t - 1] for t in sparse.split().test_target] == \
        [dense.item_ids[t - 1] for t in dense.split().test_target]
    for bad in (2, "10", True):
        with pytest.raises(ValueError, match="last_items"):
            load_dataset({**spec, "last_items": bad})
