-- pgfanout: apply a run of versioned operations, in order, atomically per call.
--
-- ARGV[1] = version-hash prefix, ARGV[2] = tombstone TTL in seconds, then for
-- each operation: code, key, sub, version, ttl, nargs, args...
--
-- Every target (a whole key, or one field/member of a key, named by `sub`)
-- keeps the version of the last change applied to it in the companion hash
-- `prefix .. key`, field `sub`. Versions are fixed-width decimal strings, so
-- string order is version order. An operation whose stored version is
-- strictly newer is skipped (equal versions apply; stream appends skip equal
-- versions too unless the record is a snapshot row). Removals leave the
-- version behind as a tombstone that expires once the key is gone.
--
-- Returns one entry per operation: 1 applied, 0 skipped as stale, or the
-- error text of the Redis command that failed (WRONGTYPE...); an operation
-- that failed leaves its version untouched.
local prefix = ARGV[1]
local tomb_ttl = tonumber(ARGV[2])

-- Copies columns ARGV[first..last] from the stored JSON object `old` into the
-- JSON object text `new` (unchanged TOAST columns keep their stored value).
local function merge(old, new, first, last)
  if type(old) ~= 'string' then return new end
  local ok, doc = pcall(cjson.decode, old)
  if not ok or type(doc) ~= 'table' then return new end
  local extra = {}
  for j = first, last do
    local v = doc[ARGV[j]]
    if v ~= nil then extra[#extra + 1] = cjson.encode(ARGV[j]) .. ':' .. cjson.encode(v) end
  end
  if #extra == 0 then return new end
  local body = string.sub(new, 2, -2)
  if body ~= '' then body = body .. ',' end
  return '{' .. body .. table.concat(extra, ',') .. '}'
end

local function apply(code, key, sub, ver, ttl, a, last)
  local vkey = prefix .. key
  local cur = redis.call('HGET', vkey, sub)
  if cur then
    if cur > ver then return 0 end
    if cur == ver and code == 'X' and ARGV[a + 1] == '1' then return 0 end
  end
  local removed = false
  if code == 'H' then
    local nset = tonumber(ARGV[a])
    if nset > 0 then redis.call('HSET', key, unpack(ARGV, a + 1, a + nset)) end
    -- NULL columns are removed; a row never written before has none to remove.
    if cur and a + nset < last then redis.call('HDEL', key, unpack(ARGV, a + nset + 1, last)) end
  elseif code == 'HF' then
    redis.call('HSET', key, sub, ARGV[a])
  elseif code == 'HM' then
    redis.call('HSET', key, sub, merge(redis.call('HGET', key, sub), ARGV[a], a + 1, last))
  elseif code == 'HFD' then
    redis.call('HDEL', key, sub)
    removed = true
  elseif code == 'D' then
    redis.call('DEL', key)
    removed = true
  elseif code == 'S' then
    local v = ARGV[a]
    if last > a then v = merge(redis.call('GET', key), v, a + 1, last) end
    redis.call('SET', key, v)
  elseif code == 'J' then
    redis.call('JSON.SET', key, '$', ARGV[a])
  elseif code == 'JP' then
    if redis.call('EXISTS', key) == 0 then
      redis.call('JSON.SET', key, '$', ARGV[a])
    else
      for j = a + 1, last, 2 do redis.call('JSON.SET', key, ARGV[j], ARGV[j + 1]) end
    end
  elseif code == 'SA' then
    redis.call('SADD', key, sub)
  elseif code == 'SR' then
    redis.call('SREM', key, sub)
    removed = true
  elseif code == 'ZA' then
    redis.call('ZADD', key, ARGV[a], sub)
  elseif code == 'ZR' then
    redis.call('ZREM', key, sub)
    removed = true
  elseif code == 'X' then
    if ARGV[a] == '0' then
      redis.call('XADD', key, '*', unpack(ARGV, a + 2, last))
    else
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[a], '*', unpack(ARGV, a + 2, last))
    end
  elseif code ~= 'V' then
    return 'ERR pgfanout: unknown operation ' .. code
  end
  redis.call('HSET', vkey, sub, ver)
  if removed and redis.call('EXISTS', key) == 0 then
    redis.call('EXPIRE', vkey, tomb_ttl)
  elseif ttl > 0 then
    redis.call('EXPIRE', key, ttl)
    redis.call('EXPIRE', vkey, ttl)
  elseif cur or sub ~= '_key' then
    -- Clear a tombstone's expiry. A whole-key target with no stored version
    -- has no version hash yet, so there is nothing to clear.
    redis.call('PERSIST', vkey)
  end
  return 1
end

local out = {}
local i = 3
local n = #ARGV
while i <= n do
  local cnt = tonumber(ARGV[i + 5])
  local a = i + 6
  local ok, r = pcall(apply, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), a, a + cnt - 1)
  if ok then
    out[#out + 1] = r
  else
    if type(r) == 'table' then r = r.err end
    out[#out + 1] = tostring(r)
  end
  i = a + cnt
end
return out
