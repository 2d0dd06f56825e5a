"""Block bookkeeping of the paged KV cache: prefix sharing, reference counts, LRU eviction, the bound."""

from bessemer.infer.blocks import BlockManager, block_digests


def test_digests_name_the_whole_prefix_not_just_the_block():
    a = block_digests([1, 2, 3, 4, 5, 6], 2, 3)
    b = block_digests([9, 9, 3, 4, 5, 6], 2, 3)
    assert a[0] != b[0] and a[1] != b[1]  # same tokens in block 1, different parents
    assert block_digests([1, 2, 3, 4, 7], 2, 2) == a[:2]


def test_a_second_prompt_reuses_the_first_ones_full_blocks():
    m = BlockManager(num_blocks=10, block_size=4)
    first = m.allocate(list(range(10)), 12)  # blocks for positions 0-11; prompt blocks 0-3, 4-7 are full
    assert first.cached_tokens == 0 and len(first.table) == 3
    # a request arriving while that prefill has not run waits for it rather than computing it twice
    assert m.allocate(list(range(10)) + [50], 14) is None
    m.computed(first)
    second = m.allocate(list(range(10)) + [50, 51], 16)
    assert second.cached_tokens == 8 and second.table[:2] == first.table[:2]
    assert second.table[2:] and not set(second.table[2:]) & set(first.table)
    # at least the last prompt token is computed: a prompt of exactly two blocks reuses one
    assert m.allocate(list(range(8)), 8).cached_tokens == 4


def test_released_blocks_stay_cached_until_evicted_oldest_first():
    m = BlockManager(num_blocks=4, block_size=2)
    a = m.allocate([1, 2, 3, 4, 5], 6)
    a_blocks = list(a.table)
    m.computed(a)
    m.release(a)
    assert m.available == 4 and m.cached == 2  # the two full prompt blocks; the partial one is free
    b = m.allocate([1, 2, 3, 4, 9], 6)  # reuses both cached blocks, though nobody held them
    assert b.cached_tokens == 4 and b.table[:2] == a_blocks[:2]
    m.computed(b)
    assert m.available == 1
    # a prompt that shares nothing needs 4 blocks: it waits while b holds 3
    assert m.allocate([7] * 7, 8) is None
    m.release(b)
    c = m.allocate([7] * 7, 8)  # evicts every cached block to make room
    assert c is not None and m.available == 0
    assert m.allocate([1, 2, 3, 4, 9], 6) is None
    m.computed(c)
    m.release(c)
    assert m.available == 4 and m.cached == 3  # c's three full prompt blocks


def test_eviction_takes_the_least_recently_released_block():
    m = BlockManager(num_blocks=4, block_size=2)
    old = m.allocate([1, 2, 3], 4)
    m.computed(old)
    m.release(old)
    new = m.allocate([5, 6, 7], 4)
    m.computed(new)
    m.release(new)
    assert m.cached == 2
    other = m.allocate([8], 6)  # three blocks: the two never used, then the oldest cached
    m.computed(other)
    m.release(other)
    assert m.cached == 1
    assert m.allocate([1, 2, 3], 4).cached_tokens == 0
    assert m.allocate([5, 6, 7], 4).cached_tokens == 2


def test_extend_names_lets_the_next_turn_reuse_the_reply():
    m = BlockManager(num_blocks=8, block_size=2)
    turn1 = [1, 2, 3]
    a = m.allocate(turn1, 8)
    m.computed(a)
    reply = [4, 5, 6, 7]
    m.extend_names(a, turn1 + reply, written=6)  # positions 0-5 computed: blocks 0, 1, 2 full
    m.release(a)
    b = m.allocate(turn1 + reply + [8, 9], 12)
    assert b.cached_tokens == 6


def test_without_prefix_cache_nothing_is_shared_and_everything_is_freed():
    m = BlockManager(num_blocks=4, block_size=2, prefix_cache=False)
    a = m.allocate([1, 2, 3, 4, 5], 6)
    m.computed(a)
    b = m.allocate([1, 2, 3, 4, 5], 2)
    assert b.cached_tokens == 0 and not set(a.table) & set(b.table)
    m.release(a)
    m.release(b)
    assert m.available == 4 and m.cached == 0
