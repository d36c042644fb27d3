-- portcullis-rate-limit: bans and quotas for one request, atomically, in one round trip.
--
-- KEYS, three per quota: state, ban, strikes.
-- ARGV[1]: now in microseconds, or '' for the server's TIME.
-- Then ten per quota: kind (1 smooth, 2 strict window), count, period (us), burst,
--   op (0 check only, 1 check then charge, 2 peek: check only and count no strike,
--   3 refund one charge: a reservation given back),
--   ban strikes (-1: no bans), ban window (us), ban duration (us), ban label,
--   dry run (1: the quota only reports; its refusals refuse nothing and count no strike).
-- Returns four integers per quota: status (1 allowed, 0 refused, 2 banned, 3 banned
--   now), remaining, retry after (us), reset (us). Nothing is charged unless every quota
--   that is not a dry run allows; a dry-run quota that refuses is not charged.

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end

local quotas = (#ARGV - 1) / 10

local function ms(us)
  return math.max(1, math.ceil(us / 1000))
end

-- GCRA, as governor computes it.
local function smooth(key, count, period, burst, charge)
  local t = math.max(1, math.floor(period / count))
  local tau = t * (burst - 1)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  if now < tat - tau then
    -- Refused: the reset reported is the retry time, so `t` agrees with Retry-After.
    return 0, 0, tat - tau - now, tat - tau - now
  end
  local basis = tat
  if charge then
    basis = tat + t
    redis.call('SET', key, string.format('%.0f', basis), 'PX', ms(basis - now) + 1)
  end
  local remaining = math.min(burst, math.floor((now + tau + t - basis) / t))
  return 1, remaining, 0, basis - now
end

-- Never more than `count` within any `period`: a sorted set of request times.
local function strict(key, count, period, charge)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local used = redis.call('ZCARD', key)
  if used >= count then
    local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
    return 0, 0, oldest + period - now, oldest + period - now
  end
  if charge then
    -- Within one microsecond `used` only grows, so the member is unique.
    redis.call('ZADD', key, now, string.format('%.0f.%d', now, used))
    redis.call('PEXPIRE', key, ms(period) + 1)
    used = used + 1
  end
  local reset = 0
  if used > 0 then
    reset = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]) + period - now
  end
  return 1, count - used, 0, reset
end

local function measure(i, charge)
  local a = 1 + (i - 1) * 10
  local kind, count, period, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local state = KEYS[(i - 1) * 3 + 1]
  if kind == 1 then
    return smooth(state, count, period, burst, charge)
  end
  return strict(state, count, period, charge)
end

-- Gives back one charge: GCRA's arrival time moves back one interval; a strict window
-- loses its newest request.
local function refund(i)
  local a = 1 + (i - 1) * 10
  local kind, count, period = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local key = KEYS[(i - 1) * 3 + 1]
  if kind == 1 then
    local tat = tonumber(redis.call('GET', key))
    if tat then
      local back = tat - math.max(1, math.floor(period / count))
      if back <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.0f', back), 'PX', ms(back - now) + 1)
      end
    end
  else
    redis.call('ZPOPMAX', key)
  end
  return 1, 0, 0, 0
end

local out = {}
local refused = false

for i = 1, quotas do
  local a = 1 + (i - 1) * 10
  local op, strikes = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local dry = ARGV[a + 10] == '1'
  local status, remaining, retry, reset
  if op == 3 then
    status, remaining, retry, reset = refund(i)
  else
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
        local count = redis.call('INCR', strike_key)
        if count == 1 then
          redis.call('PEXPIRE', strike_key, ms(tonumber(ARGV[a + 7])))
        end
        if count > strikes then
          local duration = tonumber(ARGV[a + 8])
          redis.call('SET', KEYS[(i - 1) * 3 + 2], ARGV[a + 9], 'PX', ms(duration))
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
end

if not refused then
  for i = 1, quotas do
    local a = 1 + (i - 1) * 10
    local o = (i - 1) * 4
    if tonumber(ARGV[a + 5]) == 1 and out[o + 1] == 1 then
      local status, remaining, retry, reset = measure(i, true)
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = status, remaining, math.floor(retry), math.floor(reset)
    end
  end
end

return out
