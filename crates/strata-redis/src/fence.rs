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
redis.call('SET', KEYS[1], struct.pack('<I8', now) .. ARGV[1], 'PX', ARGV[2])
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

pub(crate) struct Scripts {
    pub fill: Script,
    pub invalidate: Script,
    pub lookup: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            fill: with_prelude(FILL),
            invalidate: with_prelude(INVALIDATE),
            lookup: with_prelude(LOOKUP),
        }
    }
}
