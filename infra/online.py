"""The online feature store: the latest feature vector per entity, in Redis (or an in-process twin).

A write never replaces a newer vector with an older one (a late materialization of an older feature set
cannot roll an entity back): the compare-and-set runs in Redis as one Lua script per entity.
"""

from __future__ import annotations

import json
from typing import Any

from sluice.core.memory import MemoryOnline
from sluice.core.ports import OnlineStore
from sluice.core.settings import Settings

__all__ = ["MemoryOnline", "OnlineStore", "RedisOnline", "make_online"]

# KEYS[1] = entity hash; ARGV = event time, feature set, vector JSON
_SET_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'event_time')
if current and current > ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'event_time', ARGV[1], 'feature_set', ARGV[2], 'vector', ARGV[3])
return 1
"""


class RedisOnline:
    """Hashes `<namespace>:online:<dataset>:<entity>` holding event_time, feature_set and the vector as JSON."""

    def __init__(self, url: str, namespace: str):
        import redis

        self.redis = redis.Redis.from_url(url)
        self.prefix = f"{namespace}:online:"
        self.script = self.redis.register_script(_SET_IF_NEWER)

    def put_many(self, dataset: str, feature_set: str, vectors: dict[str, dict[str, Any]], time_field: str) -> int:
        """One pipelined round trip for all entities."""
        pipe = self.redis.pipeline(transaction=False)
        for entity, vector in vectors.items():
            self.script(keys=[f"{self.prefix}{dataset}:{entity}"],
                        args=[str(vector[time_field]), feature_set, json.dumps(vector, default=str)], client=pipe)
        return sum(int(r) for r in pipe.execute())

    def get(self, dataset: str, entity: str) -> dict[str, Any] | None:
        """HGETALL of the entity."""
        raw = self.redis.hgetall(f"{self.prefix}{dataset}:{entity}")
        if not raw:
            return None
        doc = {_text(k): _text(v) for k, v in raw.items()}
        return {"entity": entity, "event_time": doc["event_time"], "feature_set": doc["feature_set"],
                "features": json.loads(doc["vector"])}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def make_online(settings: Settings) -> OnlineStore:
    """Redis when the broker is Redis, else the in-process twin."""
    if settings.broker_is_memory:
        return MemoryOnline()
    return RedisOnline(settings.broker_url, settings.namespace)
