"""PlanCache: keyed by structure, the last hit answered without hashing the key again."""

from compiler.cache import PlanCache


class _CountingHash(tuple):
    """A key that counts how often it is hashed."""

    hashes = 0

    def __hash__(self):
        type(self).hashes += 1
        return tuple.__hash__(self)


def test_the_last_hit_is_found_by_equality_and_other_keys_by_hash():
    cache = PlanCache()
    a, b = _CountingHash(("a", (3,))), _CountingHash(("b", (4,)))
    cache.put(a, "plan a")
    cache.put(b, "plan b")
    assert cache.get(_CountingHash(("a", (3,)))) == "plan a"     # hashed: not the last hit
    before = _CountingHash.hashes
    for _ in range(3):
        assert cache.get(_CountingHash(("a", (3,)))) == "plan a"  # the last hit: no hash
    assert _CountingHash.hashes == before
    assert cache.get(_CountingHash(("b", (4,)))) == "plan b"
    assert cache.get(("c",)) is None


def test_a_replaced_or_cleared_plan_is_not_answered_from_the_last_hit():
    cache = PlanCache()
    cache.put(("k",), "old")
    assert cache.get(("k",)) == "old"
    cache.put(("k",), "new")
    assert cache.get(("k",)) == "new"
    cache.clear()
    assert cache.get(("k",)) is None and len(cache) == 0
