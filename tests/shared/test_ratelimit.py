import asyncio
import uuid

import redis.asyncio as aioredis

from shared import Limit, RateLimiter


def key() -> str:
    return f"rl-test:{uuid.uuid4().hex}"


async def test_a_hundred_concurrent_acquires_from_separate_clients_get_exactly_the_limit(infra):
    clients = [aioredis.Redis.from_url(infra.redis_url) for _ in range(4)]
    try:
        limiters = [RateLimiter(c) for c in clients]
        cap = Limit(key(), 10, 86_400)
        grants = await asyncio.gather(*(limiters[i % 4].acquire(cap) for i in range(100)))
        assert sum(1 for g in grants if g) == 10
        refused = [g for g in grants if not g]
        assert all(g.refused == cap and 0 < g.retry_after <= 86_400 for g in refused)
        assert await limiters[0].used(cap) == 10
    finally:
        for c in clients:
            await c.aclose()


async def test_a_released_grant_gives_exactly_its_slot_back(redis_client):
    limiter = RateLimiter(redis_client)
    cap = Limit(key(), 2, 60)
    first, second = await limiter.acquire(cap), await limiter.acquire(cap)
    assert first and second and not await limiter.acquire(cap)
    await limiter.release(first)
    await limiter.release(first)
    assert await limiter.used(cap) == 1
    assert await limiter.acquire(cap)
    assert not await limiter.acquire(cap)


async def test_several_limits_are_taken_all_or_none(redis_client):
    limiter = RateLimiter(redis_client)
    wide, narrow = Limit(key(), 5, 60), Limit(key(), 1, 60)
    assert await limiter.acquire(wide, narrow)
    refused = await limiter.acquire(wide, narrow)
    assert not refused and refused.refused == narrow
    assert await limiter.used(wide) == 1


async def test_a_counting_limit_never_refuses_but_its_grants_fill_a_capped_limit_on_the_same_key(redis_client):
    limiter = RateLimiter(redis_client)
    shared_key = key()
    for _ in range(3):
        assert await limiter.acquire(Limit(shared_key, None, 60))
    assert not await limiter.acquire(Limit(shared_key, 3, 60))
    assert await limiter.used(Limit(shared_key, 3, 60)) == 3


async def test_the_window_slides_and_retry_after_says_when_a_slot_frees(redis_client):
    limiter = RateLimiter(redis_client)
    cap = Limit(key(), 1, 0.3)
    assert await limiter.acquire(cap)
    refused = await limiter.acquire(cap)
    assert not refused and 0 < refused.retry_after <= 0.3
    assert await limiter.wait(cap, timeout=5)


async def test_wait_gives_up_at_its_timeout(redis_client):
    limiter = RateLimiter(redis_client)
    cap = Limit(key(), 1, 60)
    assert await limiter.acquire(cap)
    assert not await limiter.wait(cap, timeout=0.2)
