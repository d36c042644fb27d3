-- portcullis-rate-limit: bans and quotas for one request, atomically, in one round trip.
--
-- KEYS, three per quota: state, ban, strikes.
-- ARGV[1]: now in microseconds, or '' for the server's TIME.
-- ARGV[2]: the lease TTL in microseconds (how long an instance may spend a lease).
-- Then thirteen per quota: kind (1 smooth, 2 strict window), count, period (us), burst,
--   op (0 check only, 1 check then charge one, 2 peek: check only and count no strike,
--   3 give back: a reservation refunded or a lease's unspent permits returned,
--   4 lease: check, then charge up to `want` permits for the instance to spend),
--   ban strikes (-1: no bans), ban window (us), ban duration (us), ban label,
--   dry run (1: the quota only reports; its refusals refuse nothing and count no strike),
--   want (op 4: how many permits the instance asks for), lease id (op 4: the name its
--   strict-window members take), give back (ops 3 and 4: what goes back first, see
--   `give_back`).
-- Returns six integers per quota: status (1 allowed, 0 refused, 2 banned, 3 banned
--   now), remaining, retry after (us), reset (us), permits granted (op 4), and the
--   smooth quota's arrival time after the grant (us; 0 otherwise). Nothing is charged
--   unless every quota that is not a dry run allows; a dry-run quota that refuses is
--   not charged.

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local ttl = tonumber(ARGV[2])

local ARGS = 13
local quotas = (#ARGV - 2) / ARGS

local function ms(us)
  return math.max(1, math.ceil(us / 1000))
end

local function arg(i, n)
  return ARGV[2 + (i - 1) * ARGS + n]
end

-- How many of `available` permits a lease takes: what was asked, but never more than
-- half of what is left, so that near the boundary every instance falls back to one
-- permit per round trip and the count there stays exact.
local function grant(want, available)
  if want <= 1 then return 1 end
  return math.max(1, math.min(want, math.floor(available / 2)))
end

-- GCRA, as governor computes it; a lease of k permits is k arrivals now.
local function smooth(key, count, period, burst, charge, want)
  local t = math.max(1, math.floor(period / count))
  local tau = t * (burst - 1)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  if now < tat - tau then
    -- Refused: the reset reported is the retry time, so `t` agrees with Retry-After.
    return 0, 0, tat - tau - now, tat - tau - now, 0, 0
  end
  local basis = tat
  local granted = 0
  if charge then
    granted = grant(want, math.floor((now + tau + t - tat) / t))
    basis = tat + granted * t
    redis.call('SET', key, string.format('%.0f', basis), 'PX', ms(basis - now) + 1)
  end
  local remaining = math.min(burst, math.floor((now + tau + t - basis) / t))
  return 1, remaining, 0, basis - now, granted, basis
end

-- Never more than `count` within any `period`: a sorted set of request times. A
-- lease's members are named `lease:i` and dated at the end of the lease, the latest
-- time the instance may spend them, so that none leaves the window early.
local function strict(key, count, period, charge, want, lease)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local used = redis.call('ZCARD', key)
  if used >= count then
    local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
    return 0, 0, oldest + period - now, oldest + period - now, 0, 0
  end
  local granted = 0
  if charge then
    if lease == '' then
      -- Within one microsecond `used` only grows, so the member is unique.
      redis.call('ZADD', key, now, string.format('%.0f.%d', now, used))
      granted = 1
    else
      granted = grant(want, count - used)
      local score = now
      if granted > 1 then score = now + ttl end
      local members = {}
      for i = 0, granted - 1 do
        members[#members + 1] = string.format('%.0f', score)
        members[#members + 1] = lease .. ':' .. i
      end
      redis.call('ZADD', key, unpack(members))
    end
    used = used + granted
  end
  local reset = 0
  if used > 0 then
    reset = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]) + period - now
  end
  if charge then
    -- The set lives as long as its newest member counts.
    redis.call('PEXPIRE', key, ms(reset) + 1)
  end
  return 1, count - used, 0, reset, granted, 0
end

local function measure(i, charge)
  local kind, count, period, burst = tonumber(arg(i, 1)), tonumber(arg(i, 2)), tonumber(arg(i, 3)), tonumber(arg(i, 4))
  local want, lease = tonumber(arg(i, 11)), arg(i, 12)
  local state = KEYS[(i - 1) * 3 + 1]
  if kind == 1 then
    return smooth(state, count, period, burst, charge, want)
  end
  return strict(state, count, period, charge, want, lease)
end

-- Gives back permits charged earlier. '' gives back one plain charge: GCRA's arrival
-- time moves back one interval; a strict window loses its newest request.
-- Smooth 'n tat': n permits of a lease granted when the arrival time became `tat`;
-- they move it back by no more than what is left of the lease's time, so that permits
-- whose time has passed are not given twice.
-- Strict 'lease i j ...': the members `lease:i`, `lease:j`, ... leave the window.
local function give_back(i)
  local spec = arg(i, 13)
  local kind, count, period = tonumber(arg(i, 1)), tonumber(arg(i, 2)), tonumber(arg(i, 3))
  local key = KEYS[(i - 1) * 3 + 1]
  if kind == 1 then
    local t = math.max(1, math.floor(period / count))
    local back = t
    if spec ~= '' then
      local n, granted = string.match(spec, '^(%d+) (%d+)$')
      if not n then return end
      back = math.min(tonumber(n) * t, math.max(0, tonumber(granted) - now))
      if back <= 0 then return end
    end
    local tat = tonumber(redis.call('GET', key))
    if tat then
      local moved = tat - back
      if moved <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.0f', moved), 'PX', ms(moved - now) + 1)
      end
    end
  elseif spec == '' then
    redis.call('ZPOPMAX', key)
  else
    local lease = string.match(spec, '^(%S+)')
    for n in string.gmatch(string.sub(spec, #lease + 1), '%d+') do
      redis.call('ZREM', key, lease .. ':' .. n)
    end
  end
end

local out = {}
local refused = false

for i = 1, quotas do
  local op, strikes = tonumber(arg(i, 5)), tonumber(arg(i, 6))
  local dry = arg(i, 10) == '1'
  local status, remaining, retry, reset = 1, 0, 0, 0
  if op == 3 or (op == 4 and arg(i, 13) ~= '') then
    give_back(i)
  end
  if op ~= 3 then
    local banned = -2
    if strikes >= 0 then
      banned = redis.call('PTTL', KEYS[(i - 1) * 3 + 2])
    end
    if banned > 0 then
      status, remaining, retry, reset = 2, 0, banned * 1000, banned * 1000
    else
      status, remaining, retry, reset = measure(i, false)
      if status == 0 and strikes >= 0 and op ~= 2 and not dry then
        local strike_key = KEYS[(i - 1) * 3 + 3]
        local struck = redis.call('INCR', strike_key)
        if struck == 1 then
          redis.call('PEXPIRE', strike_key, ms(tonumber(arg(i, 7))))
        end
        if struck > strikes then
          local duration = tonumber(arg(i, 8))
          redis.call('SET', KEYS[(i - 1) * 3 + 2], arg(i, 9), 'PX', ms(duration))
          redis.call('DEL', strike_key)
          status, retry, reset = 3, duration, duration
        end
      end
    end
  end
  if status ~= 1 and not dry then refused = true end
  out[#out + 1] = status
  out[#out + 1] = remaining
  out[#out + 1] = math.floor(retry)
  out[#out + 1] = math.floor(reset)
  out[#out + 1] = 0
  out[#out + 1] = 0
end

if not refused then
  for i = 1, quotas do
    local o = (i - 1) * 6
    local op = tonumber(arg(i, 5))
    if (op == 1 or op == 4) and out[o + 1] == 1 then
      local status, remaining, retry, reset, granted, tat = measure(i, true)
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = status, remaining, math.floor(retry), math.floor(reset)
      out[o + 5], out[o + 6] = granted, tat
    end
  end
end

return out
