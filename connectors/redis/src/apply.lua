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
-- Values are never decoded: a partial change (unchanged TOAST columns not
-- sent) is completed by copying the stored members' JSON text as it is, so
-- numbers keep every digit (cjson would keep 14 significant digits).
--
-- A row that moved to a new target (key or field changed) in an update that
-- left TOASTed columns unchanged is written by a move operation (HPM, SM,
-- HMM, VM, JPM: args start with the old key and its sub): the unchanged
-- values are copied from the OLD target's stored entry in the same call,
-- before the operation that follows removes it (tombstone at the same
-- version). A move is skipped when the new target already holds this
-- version or a newer one (a replay, or a later change of the new key that
-- ran first), and when the old target's version is this one or newer (the
-- old entry is already removed by this change, or holds a later row under
-- the old key): never copied from a newer row, never dead-lettered for it.
--
-- Returns one entry per operation: 1 applied, 0 skipped (stale, or a partial
-- change of an expired entry), or the error text of the Redis command that
-- failed (WRONGTYPE...) or of a partial change that cannot be completed
-- (INCOMPLETE...); an operation that failed leaves its version untouched.
local prefix = ARGV[1]
local tomb_ttl = tonumber(ARGV[2])

-- The position of the closing quote of the JSON string opening at `i`.
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if not k then return nil end
    if string.byte(s, k) == 34 then return k end
    j = k + 2
  end
end

-- The position of the last character of the JSON value starting at `i`.
local function value_end(s, i)
  local c = string.byte(s, i)
  if c == 34 then return string_end(s, i) end
  if c == 123 or c == 91 then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '[%[%]{}"]', j)
      if not k then return nil end
      c = string.byte(s, k)
      if c == 34 then
        k = string_end(s, k)
        if not k then return nil end
      elseif c == 123 or c == 91 then
        depth = depth + 1
      else
        depth = depth - 1
        if depth == 0 then return k end
      end
      j = k + 1
    end
  end
  local k = string.find(s, '[%s,}%]]', i)
  if not k then return nil end
  return k - 1
end

-- The members of the JSON object text `s`: name -> the member's raw text
-- (`"name":value`, exactly as stored; the last of duplicate names wins), or
-- nil when `s` is not a JSON object. No value is decoded.
local function members(s)
  local out = {}
  local pos = string.find(s, '%S')
  if not pos or string.byte(s, pos) ~= 123 then return nil end
  pos = string.find(s, '%S', pos + 1)
  if pos and string.byte(s, pos) == 125 then return out end
  while pos do
    if string.byte(s, pos) ~= 34 then return nil end
    local kend = string_end(s, pos)
    if not kend then return nil end
    local name = string.sub(s, pos + 1, kend - 1)
    if string.find(name, '\\', 1, true) then
      local ok, decoded = pcall(cjson.decode, string.sub(s, pos, kend))
      if not ok or type(decoded) ~= 'string' then return nil end
      name = decoded
    end
    local colon = string.find(s, '%S', kend + 1)
    if not colon or string.byte(s, colon) ~= 58 then return nil end
    local vstart = string.find(s, '%S', colon + 1)
    if not vstart then return nil end
    local vend = value_end(s, vstart)
    if not vend then return nil end
    out[name] = string.sub(s, pos, kend) .. ':' .. string.sub(s, vstart, vend)
    pos = string.find(s, '%S', vend + 1)
    if not pos then return nil end
    local c = string.byte(s, pos)
    if c == 125 then return out end
    if c ~= 44 then return nil end
    pos = string.find(s, '%S', pos + 1)
  end
  return nil
end

-- The row JSON `new` completed with the columns ARGV[first..last]
-- (unchanged TOAST, absent from `new`) copied from the stored JSON object
-- `old` as raw text. Returns nil and the first column that cannot be copied
-- when `old` is absent, not an object, or lacks it.
local function merge(old, new, first, last)
  local stored = type(old) == 'string' and members(old) or nil
  if not stored then return nil, ARGV[first] end
  local extra = {}
  for j = first, last do
    local m = stored[ARGV[j]]
    if m == nil then return nil, ARGV[j] end
    extra[#extra + 1] = m
  end
  local body = string.sub(new, 2, -2)
  if body ~= '' then body = body .. ',' end
  return '{' .. body .. table.concat(extra, ',') .. '}'
end

-- A partial change that cannot be completed: the stored entry (or its copy
-- of column `col`) is gone and no newer version says why. With a TTL the
-- entry expired (a cache miss, as after any expiry): skipped. Without one,
-- writing the change would store a row lacking `col` as if complete:
-- refused, so the record is dead-lettered with the reason.
local function target(key, sub)
  if sub ~= '_key' then return key .. ' [' .. sub .. ']' end
  return key
end

-- `src`/`src_sub`: for a move, the old target the value was to be copied from.
local function incomplete(key, sub, col, ttl, src, src_sub)
  if ttl > 0 then return 0 end
  local held = 'Redis holds no stored value of it to keep'
  if src then held = 'the old entry ' .. target(src, src_sub) .. ' holds no stored value of it to copy' end
  return 'INCOMPLETE pgfanout: ' .. target(key, sub) .. ': the change leaves column ' .. tostring(col)
    .. ' unchanged (TOAST, not sent) and ' .. held .. '; not written'
    .. ' (REPLICA IDENTITY FULL sends it; pgfanout backfill or verify --repair restores the row)'
end

-- HDEL of many fields, in slices (unpack has a stack limit).
local function hdel_all(key, fields)
  for i = 1, #fields, 1000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- A whole row: the hash `key` becomes exactly the field/value pairs
-- t[first..last]; fields no column maps to (NULL now, dropped, or written by
-- someone else) go.
local function hash_replace(key, t, first, last)
  local n = (last - first + 1) / 2
  if n > 0 then
    for i = first, last, 2000 do
      redis.call('HSET', key, unpack(t, i, math.min(i + 1999, last)))
    end
    if redis.call('HLEN', key) > n then
      local keep = {}
      for j = first, last, 2 do keep[t[j]] = true end
      local stray = {}
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if not keep[f] then stray[#stray + 1] = f end
      end
      hdel_all(key, stray)
    end
  else
    redis.call('DEL', key)
  end
end

-- Operations that copy unchanged values from a moved row's old target.
local MOVES = { HPM = true, SM = true, HMM = true, VM = true, JPM = true }

local function apply(code, key, sub, ver, ttl, a, last)
  local vkey = prefix .. key
  local cur = redis.call('HGET', vkey, sub)
  local move = MOVES[code]
  if cur then
    if cur > ver then return 0 end
    if cur == ver and (move or (code == 'X' and ARGV[a + 1] == '1')) then return 0 end
  end
  local src, src_sub
  if move then
    src, src_sub = ARGV[a], ARGV[a + 1]
    local src_ver = redis.call('HGET', prefix .. src, src_sub)
    if src_ver and src_ver >= ver then return 0 end
    a = a + 2
  end
  local removed = false
  if code == 'H' then
    hash_replace(key, ARGV, a, last)
  elseif code == 'HPM' then
    -- HP args; the unchanged fields come from the old hash, and the new
    -- hash is the whole row.
    local nset = tonumber(ARGV[a])
    local nnull = tonumber(ARGV[a + nset + 1])
    local t = {}
    for j = a + 1, a + nset do t[#t + 1] = ARGV[j] end
    for j = a + nset + nnull + 2, last do
      local v = redis.call('HGET', src, ARGV[j])
      if not v then return incomplete(key, sub, ARGV[j], ttl, src, src_sub) end
      t[#t + 1] = ARGV[j]
      t[#t + 1] = v
    end
    hash_replace(key, t, 1, #t)
  elseif code == 'SM' then
    local v, col = merge(redis.call('GET', src), ARGV[a], a + 1, last)
    if not v then return incomplete(key, sub, col, ttl, src, src_sub) end
    redis.call('SET', key, v)
  elseif code == 'HMM' then
    local v, col = merge(redis.call('HGET', src, src_sub), ARGV[a], a + 1, last)
    if not v then return incomplete(key, sub, col, ttl, src, src_sub) end
    redis.call('HSET', key, sub, v)
  elseif code == 'VM' then
    -- The value reads only unchanged columns: the old target's value is
    -- the new one. Args: the column.
    local v
    if src_sub == '_key' then v = redis.call('GET', src) else v = redis.call('HGET', src, src_sub) end
    if not v then return incomplete(key, sub, ARGV[a], ttl, src, src_sub) end
    if sub == '_key' then redis.call('SET', key, v) else redis.call('HSET', key, sub, v) end
  elseif code == 'JPM' then
    -- JP args: the old document (which must hold the unchanged columns)
    -- becomes the new one, then the columns sent are set.
    local ntoast = tonumber(ARGV[a])
    for j = a + 1, a + ntoast do
      local t = redis.call('JSON.TYPE', src, ARGV[j])
      if type(t) ~= 'table' or #t == 0 then return incomplete(key, sub, ARGV[j], ttl, src, src_sub) end
    end
    redis.call('JSON.SET', key, '$', redis.call('JSON.GET', src))
    for j = a + ntoast + 1, last, 2 do redis.call('JSON.SET', key, ARGV[j], ARGV[j + 1]) end
  elseif code == 'HP' then
    -- A row without its unchanged TOAST columns: those fields stay as
    -- stored, and must be there. Args: nset, pairs, nnull, nulls, toast.
    local nset = tonumber(ARGV[a])
    local nnull = tonumber(ARGV[a + nset + 1])
    for j = a + nset + nnull + 2, last do
      if redis.call('HEXISTS', key, ARGV[j]) == 0 then return incomplete(key, sub, ARGV[j], ttl) end
    end
    if nset > 0 then redis.call('HSET', key, unpack(ARGV, a + 1, a + nset)) end
    if nnull > 0 then redis.call('HDEL', key, unpack(ARGV, a + nset + 2, a + nset + 1 + nnull)) end
  elseif code == 'HF' then
    redis.call('HSET', key, sub, ARGV[a])
  elseif code == 'HM' then
    local v, col = merge(redis.call('HGET', key, sub), ARGV[a], a + 1, last)
    if not v then return incomplete(key, sub, col, ttl) end
    redis.call('HSET', key, sub, v)
  elseif code == 'HFD' then
    redis.call('HDEL', key, sub)
    removed = true
  elseif code == 'D' then
    redis.call('DEL', key)
    removed = true
  elseif code == 'S' then
    local v = ARGV[a]
    if last > a then
      local col
      v, col = merge(redis.call('GET', key), v, a + 1, last)
      if not v then return incomplete(key, sub, col, ttl) end
    end
    redis.call('SET', key, v)
  elseif code == 'J' then
    redis.call('JSON.SET', key, '$', ARGV[a])
  elseif code == 'JP' then
    -- Args: ntoast, the unchanged columns' paths, then path/value pairs.
    local ntoast = tonumber(ARGV[a])
    for j = a + 1, a + ntoast do
      local t = redis.call('JSON.TYPE', key, ARGV[j])
      if type(t) ~= 'table' or #t == 0 then return incomplete(key, sub, ARGV[j], ttl) end
    end
    for j = a + ntoast + 1, last, 2 do redis.call('JSON.SET', key, ARGV[j], ARGV[j + 1]) end
  elseif code == 'V' then
    -- The value reads only unchanged TOAST columns: it stays as stored, and
    -- must be there. Args: the column.
    local present
    if sub == '_key' then present = redis.call('EXISTS', key) else present = redis.call('HEXISTS', key, sub) end
    if present == 0 then return incomplete(key, sub, ARGV[a], ttl) end
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
  else
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
