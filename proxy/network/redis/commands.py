"""Envoy 1.40's Redis command tables and key hashing; no I/O.

Job: which commands the splitter handles and how (by their first key, EVAL's key after
numkeys, OBJECT's key after the subcommand, MGET/MSET and the summed multi-key ones split per
key, transactions), the commands Envoy supports that ftproxy does not build yet, the hash tag of a key and
the 64-bit MurmurHash2 Envoy hashes keys with (source/common/common/hash.cc, seed 0xc70f6907)
for a RING_HASH or MAGLEV cluster's pick.
"""

from __future__ import annotations

import struct

__all__ = ["SIMPLE", "EVAL", "OBJECT", "SUM_RESULT", "TRANSACTION", "MULTI_KEY", "STAT_COMMANDS",
           "NOT_BUILT", "CLUSTER_SCOPE", "RANDOM_SHARD", "KNOWN", "WITHOUT_ARGS", "murmur_hash2", "hash_tag"]

# Hash to one server by their first key (args[1]).
SIMPLE = frozenset((
    "append", "bf.add", "bf.card", "bf.exists", "bf.info", "bf.insert", "bf.loadchunk", "bf.madd",
    "bf.mexists", "bf.reserve", "bf.scandump", "bitcount", "bitfield", "bitfield_ro", "bitpos",
    "decr", "decrby", "dump", "expire", "expireat", "geoadd", "geodist", "geohash", "geopos",
    "georadius_ro", "georadiusbymember_ro", "geosearch", "get", "getbit", "getdel", "getex",
    "getrange", "getset", "hdel", "hexists", "hexpire", "hexpireat", "hexpiretime", "hget",
    "hgetall", "hincrby", "hincrbyfloat", "hkeys", "hlen", "hmget", "hmset", "hpersist", "hpexpire",
    "hpexpireat", "hpexpiretime", "hpttl", "hscan", "hset", "hsetnx", "hstrlen", "httl", "hvals",
    "incr", "incrby", "incrbyfloat", "lindex", "linsert", "llen", "lmove", "lpop", "lpush", "lpushx",
    "lrange", "lrem", "lset", "ltrim", "persist", "pexpire", "pexpireat", "pfadd", "pfcount",
    "psetex", "pttl", "restore", "rpop", "rpush", "rpushx", "sadd", "scard", "set", "setbit",
    "setex", "setnx", "setrange", "sismember", "smembers", "spop", "srandmember", "srem", "sscan",
    "strlen", "ttl", "type", "xack", "xadd", "xautoclaim", "xclaim", "xdel", "xlen", "xpending",
    "xrange", "xrevrange", "xtrim", "zadd", "zcard", "zcount", "zincrby", "zlexcount", "zpopmin",
    "zpopmax", "zrange", "zrangebylex", "zrangebyscore", "zrank", "zrem", "zremrangebylex",
    "zremrangebyrank", "zremrangebyscore", "zrevrange", "zrevrangebylex", "zrevrangebyscore",
    "zrevrank", "zscan", "zscore", "copy", "rpoplpush", "smove", "sunion", "sdiff", "sinter",
    "sinterstore", "zunionstore", "zinterstore", "pfmerge", "georadius", "georadiusbymember",
    "rename", "sort", "sort_ro", "zmscore", "sdiffstore", "msetnx", "substr", "zrangestore",
    "zunion", "zdiff", "sunionstore", "smismember", "hrandfield", "geosearchstore", "zdiffstore",
    "zinter", "zrandmember", "bitop", "lpos", "renamenx",
))
EVAL = frozenset(("eval", "evalsha"))          # key: args[3] (after the script and numkeys)
OBJECT = frozenset(("object",))                # key: args[2] (after the subcommand)
SUM_RESULT = frozenset(("del", "exists", "touch", "unlink"))   # per key, integers summed

# Envoy 1.40 handles these too (INFO, SUBSCRIBE/UNSUBSCRIBE/SPUBLISH);
# ftproxy answers them with
# "ERR command '<name>' is not supported by ftproxy yet".
NOT_BUILT = frozenset(("info", "subscribe", "unsubscribe", "spublish"))
LOCAL_STATS = frozenset(("hello", "publish", "scan", "info.shard"))   # with stats, handled by proxy_filter.py
# Sent to every host of the catch-all cluster, or to one at random (cluster_scope.py).
CLUSTER_SCOPE = frozenset(("script", "flushall", "flushdb", "slowlog", "config", "keys", "select", "role"))
RANDOM_SHARD = frozenset(("cluster", "randomkey"))

TRANSACTION = frozenset(("multi", "exec", "discard", "watch", "unwatch"))   # transaction.py
MULTI_KEY = frozenset(("del", "mget", "mset", "touch", "unlink", "msetnx"))   # whole in a transaction

# The commands with stats `redis.<prefix>.command.<name>.{total,success,error}`.
STAT_COMMANDS = (SIMPLE | EVAL | OBJECT | SUM_RESULT | TRANSACTION | {"mget", "mset"} | NOT_BUILT
                 | CLUSTER_SCOPE | RANDOM_SHARD | LOCAL_STATS)
LOCAL = frozenset(("auth", "ping", "echo", "time", "quit", "client"))
KNOWN = STAT_COMMANDS | LOCAL
# Valid with no argument after the command name (others need at least one).
WITHOUT_ARGS = frozenset(("ping", "time", "flushall", "flushdb", "randomkey", "quit", "role",
                          "info", "hello", "multi", "exec", "discard", "watch", "unwatch"))

_M = 0xc6a4a7935bd1e995
_MASK = (1 << 64) - 1
_SEED = 0xc70f6907


def murmur_hash2(key: bytes, seed: int = _SEED) -> int:
    """Envoy's MurmurHash::murmurHash2 (64-bit, libstdc++'s _Hash_bytes)."""
    n = len(key)
    h = (seed ^ ((n * _M) & _MASK)) & _MASK
    aligned = n & ~7
    for w in struct.unpack_from("<%dQ" % (n >> 3), key) if aligned else ():
        d = (w * _M) & _MASK
        d = ((d ^ (d >> 47)) * _M) & _MASK
        h = ((h ^ d) * _M) & _MASK
    if n & 7:
        h = ((h ^ int.from_bytes(key[aligned:], "little")) * _M) & _MASK
    h = ((h ^ (h >> 47)) * _M) & _MASK
    return h ^ (h >> 47)


def hash_tag(key: bytes) -> bytes:
    """The part of `key` that is hashed with enable_hashtagging: between the first `{` and the
    next `}` when that is not empty (redis-cluster's rule), else the whole key."""
    start = key.find(b"{")
    if start < 0:
        return key
    end = key.find(b"}", start + 1)
    if end <= start + 1:
        return key
    return key[start + 1:end]
