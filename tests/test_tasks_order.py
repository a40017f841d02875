"""The deterministic example order: seeded shuffles per epoch, host shards, resumed epochs."""

import numpy as np
import pytest

from rlvr_jax.tasks.order import epoch_order, iterate_examples


def test_epoch_order_shuffles_by_seed_and_shards_by_host():
    shards = [epoch_order(103, seed=7, epoch=0, process_index=p, process_count=4) for p in range(4)]
    assert all(len(shard) == 103 // 4 for shard in shards)
    union = np.concatenate(shards)
    assert len(set(union.tolist())) == len(union) == 100  # disjoint, 3 dropped
    np.testing.assert_array_equal(epoch_order(103, 7, 0, 1, 4), shards[1])  # reproducible
    full = epoch_order(103, seed=7, epoch=0)
    assert sorted(full.tolist()) == list(range(103))
    assert full.tolist() != list(range(103))
    assert full.tolist() != epoch_order(103, seed=8, epoch=0).tolist()
    assert full.tolist() != epoch_order(103, seed=7, epoch=1).tolist()
    with pytest.raises(ValueError, match="cannot be shared"):
        epoch_order(3, 0, 0, 0, 4)


def test_iterate_examples_over_epochs():
    source = [{"id": str(i)} for i in range(5)]
    stream = list(iterate_examples(source, seed=1, process_index=0, process_count=1, num_epochs=2))
    assert len(stream) == 10
    assert sorted(e["id"] for e in stream[:5]) == sorted(e["id"] for e in stream[5:])
    resumed = list(
        iterate_examples(
            source, seed=1, process_index=0, process_count=1, num_epochs=1, start_epoch=1
        )
    )
    assert resumed == stream[5:]
    with pytest.raises(ValueError, match="process_index 2 not in"):
        next(iterate_examples(source, seed=1, process_index=2, process_count=2))
