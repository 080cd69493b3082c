#!/usr/bin/env bash
# Development only: puts a Stripe test payment method on file (attached to the
# organization's Stripe customer, created if needed, and made its default) on
# the running `make dev` worker, so the organization's owner can buy a pack.
#
# Usage: scripts/test-card.sh <org> [payment method]
#   pm_card_visa                 (default) charges succeed
#   pm_card_chargeCustomerFail   attaches, then every charge is declined
set -euo pipefail
org="${1:?usage: scripts/test-card.sh <org> [pm_card_visa]}"
payment_method="${2:-pm_card_visa}"
base="${WALLET_URL:-http://127.0.0.1:8787}"
[[ "$org" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || { echo "bad organization id: $org" >&2; exit 2; }
[[ "$payment_method" =~ ^pm_[A-Za-z0-9_]{1,60}$ ]] || { echo "bad payment method: $payment_method" >&2; exit 2; }
status=$(curl -sS -o /dev/stderr -w '%{http_code}' -X POST "$base/dev/orgs/$org/payment-method" \
  -H 'content-type: application/json' -d "{\"payment_method\":\"$payment_method\"}")
echo >&2
[ "$status" = 200 ]
