"""The Responses API conversation store (core.responses_api.store): memory LRU and TTL, Redis shared by replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from core.config import ResponsesConfig
from core.responses_api.store import (
    MemoryResponseStore,
    RedisResponseStore,
    StoredResponse,
    StoreUnavailable,
    _encode,
    build_store,
)
from tests.harness import free_port


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def item(response_id: str, owner: str | None = "alice", native: str | None = None,
         chain: tuple[str, ...] = ()) -> StoredResponse:
    return StoredResponse(
        id=response_id, owner=owner,
        response={"id": response_id, "object": "response", "status": "completed",
                  "output": [{"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": "héllo", "annotations": []}]}]},
        input_items=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "héllo"}],
        native=native, created_at=1_700_000_000.5, previous=chain[-1] if chain else None, chain=list(chain),
    )


# --- memory ---------------------------------------------------------------------------------------------------

def test_memory_evicts_the_least_recently_used_and_get_refreshes_recency() -> None:
    async def go() -> None:
        store = MemoryResponseStore(ttl=100, max_entries=2)
        await store.put(item("resp_a"))
        await store.put(item("resp_b"))
        assert await store.get("resp_a") == item("resp_a")   # a is now more recent than b
        await store.put(item("resp_c"))                      # evicts b
        assert len(store) == 2
        assert await store.get("resp_b") is None
        assert await store.get("resp_a") is not None and await store.get("resp_c") is not None
        await store.put(item("resp_d"))                      # a was read before c: a goes
        assert await store.get("resp_a") is None
        assert await store.get("resp_c") is not None and await store.get("resp_d") is not None

    run(go())


def test_memory_evicts_past_its_byte_budget_and_counts_replacements_once() -> None:
    async def go() -> None:
        one = len(json.dumps(dataclasses.asdict(item("resp_a")), ensure_ascii=False, separators=(",", ":")))
        store = MemoryResponseStore(ttl=100, max_entries=100, max_bytes=2 * one + one // 2)
        await store.put(item("resp_a"))
        await store.put(item("resp_b"))
        await store.put(item("resp_b"))                      # a replacement is not counted twice
        assert len(store) == 2 and store.size == 2 * one
        await store.put(item("resp_c"))                      # three do not fit: the least recent goes
        assert await store.get("resp_a") is None and len(store) == 2 and store.size == 2 * one
        await store.delete("resp_b")
        assert store.size == one
        tiny = MemoryResponseStore(ttl=100, max_entries=100, max_bytes=10)
        await tiny.put(item("resp_big"))                     # alone over the budget, the newest stays
        assert await tiny.get("resp_big") is not None

    run(go())


def test_memory_eviction_order_without_reads_is_insertion_order() -> None:
    async def go() -> list[str]:
        store = MemoryResponseStore(ttl=100, max_entries=3)
        for name in "abcde":
            await store.put(item(f"resp_{name}"))
        return [name for name in "abcde" if await store.get(f"resp_{name}") is not None]

    assert run(go()) == ["c", "d", "e"]


def test_memory_entries_expire_ttl_after_put_and_reads_do_not_extend_them() -> None:
    now = [0.0]

    async def go() -> None:
        store = MemoryResponseStore(ttl=10, max_entries=10, clock=lambda: now[0])
        await store.put(item("resp_a"))
        now[0] = 5
        await store.put(item("resp_b"))
        now[0] = 9.9
        assert await store.get("resp_a") is not None     # a read does not extend a's life
        now[0] = 10
        assert await store.get("resp_a") is None and len(store) == 1
        assert await store.get("resp_b") is not None
        now[0] = 15
        assert await store.get("resp_b") is None
        assert not await store.delete("resp_b")

    run(go())


def test_memory_get_many_in_order_with_none_for_the_missing_and_refreshes_recency_and_ttl() -> None:
    now = [0.0]

    async def go() -> None:
        store = MemoryResponseStore(ttl=10, max_entries=3, clock=lambda: now[0])
        await store.put(item("resp_a"))
        await store.put(item("resp_b", chain=("resp_a",)))
        await store.put(item("resp_c", chain=("resp_a", "resp_b")))
        assert await store.get_many([]) == []
        got = await store.get_many(["resp_b", "resp_nope", "resp_a"])
        assert got == [item("resp_b", chain=("resp_a",)), None, item("resp_a")]
        await store.put(item("resp_d"))                      # c is now the least recently used, not a or b
        assert await store.get("resp_c") is None
        now[0] = 5
        assert [found is not None for found in await store.get_many(["resp_a", "resp_b"])] == [True] * 2
        now[0] = 12                                          # d expired at 10; a and b were read at 5 (to 15)
        assert await store.get_many(["resp_a", "resp_b", "resp_d"]) == [item("resp_a"), item("resp_b", chain=(
            "resp_a",)), None]
        now[0] = 30                                          # the read at 12 gave them until 22
        assert await store.get_many(["resp_a", "resp_b"]) == [None, None] and len(store) == 0

    run(go())


def test_memory_delete_and_replace() -> None:
    async def go() -> None:
        store = MemoryResponseStore(ttl=100, max_entries=10)
        await store.put(item("resp_a"))
        await store.put(item("resp_a", owner="bob"))
        got = await store.get("resp_a")
        assert got is not None and got.owner == "bob" and len(store) == 1
        assert await store.delete("resp_a") is True
        assert await store.delete("resp_a") is False
        assert await store.get("resp_a") is None

    run(go())


def test_memory_store_is_not_changed_through_what_was_put_or_got() -> None:
    async def go() -> None:
        store = MemoryResponseStore(ttl=100, max_entries=10)
        original = item("resp_a")
        await store.put(original)
        original.messages.append({"role": "user", "content": "later"})
        got = await store.get("resp_a")
        assert got is not None and len(got.messages) == 2
        got.messages.clear()
        again = await store.get("resp_a")
        assert again is not None and len(again.messages) == 2

    run(go())


# --- redis ----------------------------------------------------------------------------------------------------

def test_redis_round_trip_with_ttl_on_the_key(redis_url: str) -> None:
    async def go() -> None:
        store = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:resp:")
        await store.put(item("resp_r1", native="openai/gpt"))
        assert await store.get("resp_r1") == item("resp_r1", native="openai/gpt")
        assert await store.get("resp_nope") is None
        await store.close()

    run(go())
    client = redis.Redis.from_url(redis_url)
    assert 55_000 < client.pttl("t:resp:resp_r1") <= 60_000
    raw = client.get("t:resp:resp_r1")
    assert isinstance(raw, bytes) and b'"owner":"alice"' in raw
    client.close()

    async def delete() -> tuple[bool, bool, StoredResponse | None]:
        store = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:resp:")
        try:
            return await store.delete("resp_r1"), await store.delete("resp_r1"), await store.get("resp_r1")
        finally:
            await store.close()

    assert run(delete()) == (True, False, None)


def test_redis_get_many_in_one_round_trip_in_order_and_refreshes_every_ttl(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    async def put() -> None:
        store = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:many:")
        await store.put(item("resp_m1"))
        await store.put(item("resp_m2", chain=("resp_m1",)))
        await store.close()

    run(put())
    for key in ("t:many:resp_m1", "t:many:resp_m2"):
        client.pexpire(key, 5_000)                           # as if put long ago

    def calls(command: str) -> int:
        stats = client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    async def go() -> tuple[list[StoredResponse | None], list[StoredResponse | None]]:
        store = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:many:")
        try:
            return await store.get_many(["resp_m2", "resp_gone", "resp_m1"]), await store.get_many([])
        finally:
            await store.close()

    before = {command: calls(command) for command in ("mget", "get", "pexpire")}
    got, empty = run(go())
    assert got == [item("resp_m2", chain=("resp_m1",)), None, item("resp_m1")] and empty == []
    assert {command: calls(command) - before[command] for command in before} == {"mget": 1, "get": 0, "pexpire": 3}
    assert 55_000 < client.pttl("t:many:resp_m1") <= 60_000 and 55_000 < client.pttl("t:many:resp_m2") <= 60_000
    assert client.exists("t:many:resp_gone") == 0            # refreshing a missing id does not create it
    client.close()


def test_a_value_this_version_did_not_write_reads_as_absent(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("t:foreign:resp_j", "not json")
    client.set("t:foreign:resp_k", '{"id": "resp_k", "unknown": 1}')
    client.set("t:foreign:resp_n", "[1, 2]")
    client.set("t:foreign:resp_c", _encode(item("resp_c")).replace('"chain":[]', '"chain":"resp_a"'))
    # What the version that kept the whole conversation in each response wrote: no `previous`, no `chain`.
    old = {k: v for k, v in json.loads(_encode(item("resp_o"))).items() if k not in ("previous", "chain")}
    client.set("t:foreign:resp_o", json.dumps(old))
    client.close()

    async def go() -> list[StoredResponse | None]:
        store = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:foreign:")
        try:
            ids = ["resp_j", "resp_k", "resp_n", "resp_c", "resp_o"]
            return [*[await store.get(response_id) for response_id in ids], *await store.get_many(ids)]
        finally:
            await store.close()

    assert run(go()) == [None] * 10


def test_two_stores_on_one_redis_see_each_others_entries(redis_url: str) -> None:
    async def go() -> None:
        one = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:shared:")
        two = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:shared:")
        other = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:other:")
        await one.put(item("resp_s1", owner=None))
        got = await two.get("resp_s1")
        assert got is not None and got.owner is None and got.messages == item("resp_s1").messages
        assert await other.get("resp_s1") is None
        assert await two.delete("resp_s1") is True
        assert await one.get("resp_s1") is None
        for store in (one, two, other):
            await store.close()

    run(go())


def test_redis_entries_expire(redis_url: str) -> None:
    async def go() -> None:
        store = RedisResponseStore(redis_url, ttl=0.2, timeout=2.0, key_prefix="t:exp:")
        await store.put(item("resp_e"))
        assert await store.get("resp_e") is not None
        await asyncio.sleep(0.4)
        assert await store.get("resp_e") is None
        await store.close()

    run(go())


def test_unreachable_redis_is_unavailable_quickly_without_the_host_in_the_message() -> None:
    port = free_port()

    async def go() -> None:
        store = RedisResponseStore(f"redis://:hunter2@127.0.0.1:{port}/0", ttl=60, timeout=0.2, key_prefix="p:")
        for call in (store.get("resp_x"), store.put(item("resp_x")), store.delete("resp_x")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await call
            assert time.monotonic() - started < 1.0
            message = str(caught.value)
            assert "127.0.0.1" not in message and str(port) not in message and "hunter2" not in message
            assert f"127.0.0.1:{port}" in caught.value.where and "hunter2" not in caught.value.where
        await store.close()

    run(go())


# --- config ---------------------------------------------------------------------------------------------------

def test_config_defaults_build_a_memory_store() -> None:
    config = ResponsesConfig()
    assert config.store == "memory" and config.ttl_seconds == 30 * 24 * 3600 and config.max_entries == 10000
    store = build_store(config)
    assert isinstance(store, MemoryResponseStore) and store.max_entries == 10000


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache:6380/1", "unix:///tmp/redis.sock"])
def test_config_redis_url_builds_a_redis_store(url: str) -> None:
    config = ResponsesConfig(store=url, key_prefix="x:")
    store = build_store(config)
    assert isinstance(store, RedisResponseStore) and store.prefix == "x:"
    run(store.close())


@pytest.mark.parametrize("value", ["redis", "Memory", "http://127.0.0.1:6379", "postgres://u:s3cret@db/x", ""])
def test_config_rejects_other_stores_without_echoing_them(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ResponsesConfig(store=value)
    errors = caught.value.errors(include_input=False, include_url=False)
    assert errors[0]["loc"] == ("store",)
    assert "`memory` or a Redis URL" in errors[0]["msg"] and "s3cret" not in errors[0]["msg"]


@pytest.mark.parametrize("field, value", [("ttl_seconds", 0), ("max_entries", 0), ("redis_timeout_seconds", -1),
                                          ("stroe", "memory")])
def test_config_rejects_bad_numbers_and_unknown_keys(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        ResponsesConfig.model_validate({field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_config_fields_are_described_for_the_schema() -> None:
    properties = ResponsesConfig.model_json_schema()["properties"]
    assert all(properties[name].get("description") for name in ResponsesConfig.model_fields)
