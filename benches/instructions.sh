#!/usr/bin/env bash
# Instructions per request for each scenario of benches/instructions.rs, counted by
# callgrind inside `drive` only. Needs valgrind (apt-get install -y valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench instructions --no-run >/dev/null 2>&1
bin=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*instructions[^"]*"' | tail -n1 | cut -d'"' -f4)
iterations=${ITERATIONS:-5000}
out=$(mktemp -d)
printf '%-28s %12s\n' scenario "Ir/request"
for scenario in floor allow/10 allow/100000 allow_resolved/100000 reject/100000 allow_xff_5_hops/100000 \
    role_router_floor role_router_allow/10 role_router_allow/1000 role_router_deny/1000 \
    api_key_floor api_key_allow/1 api_key_allow/10000 api_key_reject_malformed/1 api_key_reject_unknown/1 \
    audit_floor audit_disabled audit_memory \
    rate_limit_floor rate_limit_allow/1 rate_limit_allow/10000 rate_limit_allow_resolved/1 rate_limit_reject/1 \
    jwt_floor jwt_allow_cached jwt_allow_uncached jwt_reject_malformed \
    mtls_floor mtls_allow_cached mtls_allow_uncached mtls_reject_unknown; do
    file="$out/$(echo "$scenario" | tr / _).cg"
    valgrind --tool=callgrind --toggle-collect='*common::drive*' --callgrind-out-file="$file" \
        "$bin" "$scenario" "$iterations" >/dev/null 2>&1
    total=$(grep -E '^summary:|^totals:' "$file" | head -n1 | awk '{print $2}')
    printf '%-28s %12d\n' "$scenario" $((total / iterations))
done
rm -rf "$out"
