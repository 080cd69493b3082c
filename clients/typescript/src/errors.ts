// The API's error codes (crates/wallet-core/src/api.rs `ApiError`, one
// declaration each) with their HTTP status, and the one error class the
// client throws. tests/e2e/client-unit.test.mjs fails when this list and the
// server's drift apart.

import type { ErrorDetails } from './types.ts';

/** Every code the API answers, with its status. */
export const ERROR_STATUS = {
  invalid_json: 400,
  invalid_signature: 400,
  unauthorized: 401,
  insufficient_credits: 402,
  forbidden: 403,
  not_found: 404,
  wallet_not_found: 404,
  hold_not_found: 404,
  purchase_not_found: 404,
  method_not_allowed: 405,
  idempotency_key_reused: 409,
  wallet_owner_conflict: 409,
  payment_method_required: 409,
  too_many_active_holds: 409,
  hold_not_active: 409,
  balance_limit_reached: 409,
  payload_too_large: 413,
  invalid_request: 422,
  unknown_model: 422,
  daily_cap_reached: 429,
  feature_cap_reached: 429,
  rate_limited: 429,
  internal_error: 500,
  payment_provider_unavailable: 503,
  ledger_storage_full: 507,
} as const;

/** A code the API answers. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/**
 * Codes of failures the client sees itself: `network_error` (no answer: the
 * connection failed or the attempt timed out) and `unexpected_response` (an
 * answer that is not the API's JSON, e.g. from a proxy in between).
 */
export type ClientErrorCode = 'network_error' | 'unexpected_response';

export type WalletErrorCode = ErrorCode | ClientErrorCode;

/**
 * What every method throws: `code` says what happened (match on it, not on
 * the message), `status` is the HTTP status (0 when nothing answered).
 */
export class WalletError extends Error {
  readonly code: WalletErrorCode;
  readonly status: number;
  readonly details: ErrorDetails;
  /** Seconds the API asked to wait (Retry-After), when it did. */
  readonly retryAfterSeconds: number | null;
  /** Requests sent for this operation, retries included. */
  readonly attempts: number;

  constructor(
    code: WalletErrorCode,
    status: number,
    message: string,
    options: { details?: ErrorDetails; retryAfterSeconds?: number | null; attempts?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WalletError';
    this.code = code;
    this.status = status;
    this.details = options.details ?? {};
    this.retryAfterSeconds = options.retryAfterSeconds ?? null;
    this.attempts = options.attempts ?? 1;
  }
}

/** True for codes the API declares (so a proxy's odd JSON is not mistaken for one). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_STATUS, code);
}
