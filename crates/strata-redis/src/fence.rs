//! The Lua scripts that make L2 writes safe under races.
//!
//! Stored layout: `stamp u64 LE | envelope`, where `stamp` is the Redis server time (ms) of the write, set by the
//! script itself. Ordering by server time makes "was this written after my load started?" independent of node
//! clocks. Every entry write goes through a script; readers strip the stamp.
//!
//! `FILL` (a load's result) stores only if
//! 1. its lease token, when it has one, is still the key's lease (an `invalidate` or expiry voids it), and
//! 2. nothing newer is stored: when both the stored entry (value or tombstone) and the fill carry a version, a
//!    smaller fill version loses; otherwise anything stamped at or after the load's start (the server time its
//!    L2 lookup returned) wins — so a load that began before an invalidation or a newer write never lands.
//!
//! Stamps have millisecond resolution and ties go to what is stored: a load that starts in the same millisecond as
//! an invalidation is refused (the caller still gets its value; only the cache fill is skipped).
//!
//! A load whose start is unknown (its lookup failed) passes `0`, so it never overwrites anything stamped. A write
//! (`WRITE`) skips rule 2's time test: it is newer than what it replaces unless versions say otherwise.
//! `INVALIDATE` stores a tombstone for the hold-off and deletes the lease.
//!
//! A fill is stamped with its load's start (not the time it lands): the data is as old as the read that produced
//! it, so a barrier raised while the load ran (`RAISE_BARRIER`) covers it, and a load that started earlier but
//! lands later is refused by rule 2. Writes and tombstones are stamped with the server time.
//!
//! `LEASE` grants at most one lease per key per minimum interval (a marker key with that TTL), so a key whose loads
//! keep failing or whose holders keep dying does not send every node to the source in turn.

use redis::Script;

const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- stamp, flags and version (or nil) of a stored entry; nil if the bytes are not ours.
local function meta(v)
  if not v or #v < 46 or string.sub(v, 9, 10) ~= 'ST' then return nil end
  local stamp = struct.unpack('<I8', v, 1)
  local flags = string.byte(v, 12)
  local version = nil
  if bit.band(flags, 2) ~= 0 then version = struct.unpack('<I8', v, 41) end
  return stamp, flags, version
end
"#;

/// KEYS: entry, lease. ARGV: envelope, px, started_at (-1 write, 0 unknown), version (-1 none), token ('' none).
/// Returns 1 stored, 0 lease lost, 2 superseded.
const FILL: &str = r#"
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end
local now = now_ms()
local stamp, flags, version = meta(redis.call('GET', KEYS[1]))
if stamp then
  local newv = tonumber(ARGV[4])
  local started = tonumber(ARGV[3])
  if version and newv >= 0 then
    if newv < version then return 2 end
  elseif started >= 0 and stamp >= started then
    return 2
  end
end
local started = tonumber(ARGV[3])
local stamp_as = now
if started > 0 then stamp_as = started end
redis.call('SET', KEYS[1], struct.pack('<I8', stamp_as) .. ARGV[1], 'PX', ARGV[2])
if ARGV[5] ~= '' then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// KEYS: entry, lease. ARGV: tombstone envelope, hold-off px. Returns the server time of the tombstone.
const INVALIDATE: &str = r#"
local now = now_ms()
redis.call('SET', KEYS[1], struct.pack('<I8', now) .. ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return now
"#;

/// KEYS: entry. Returns {stored bytes or nil, server time ms}.
const LOOKUP: &str = r#"
return {redis.call('GET', KEYS[1]), now_ms()}
"#;

/// KEYS: entries. Returns {{stored bytes or nil, ...}, server time ms}.
const LOOKUP_MANY: &str = r#"
return {redis.call('MGET', unpack(KEYS)), now_ms()}
"#;

/// KEYS: lease, grant marker. ARGV: token, px, min interval ms (0: none). Returns 1 granted, 0 held, 2 rate-limited.
const LEASE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if tonumber(ARGV[3]) > 0 and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 2 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// KEYS: lease. ARGV: token. Deletes the lease if it is still the token's.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// KEYS: barrier hash. ARGV: field, keep ms. Raises the barrier to the server time, prunes barriers older than
/// `keep` and keeps the hash alive at least `keep`. Returns the barrier's time.
const RAISE_BARRIER: &str = r#"
local now = now_ms()
local keep = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], now)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) + keep < now then redis.call('HDEL', KEYS[1], all[i]) end
end
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return now
"#;

pub(crate) struct Scripts {
    pub fill: Script,
    pub invalidate: Script,
    pub lookup: Script,
    pub lookup_many: Script,
    pub lease: Script,
    pub release: Script,
    pub raise_barrier: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            fill: with_prelude(FILL),
            invalidate: with_prelude(INVALIDATE),
            lookup: with_prelude(LOOKUP),
            lookup_many: with_prelude(LOOKUP_MANY),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            raise_barrier: with_prelude(RAISE_BARRIER),
        }
    }
}
