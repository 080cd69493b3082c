// When to send a request again, and after how long: pure functions of the
// attempt, the answer and the policy, so their bounds are tested without a
// network.

/** Bounds on the retries of one operation. */
export interface RetryPolicy {
  /** Requests in all, the first included (1 = never retry). */
  maxAttempts: number;
  /** The first backoff; each next one doubles. */
  baseDelayMs: number;
  /** The largest backoff between two attempts (Retry-After may ask for more). */
  maxDelayMs: number;
  /** The most the operation waits in all; a Retry-After past it ends the retries at once. */
  maxTotalDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 5,
  baseDelayMs: 200,
  maxDelayMs: 5_000,
  maxTotalDelayMs: 30_000,
});

/**
 * Statuses worth sending again: 429 (a cap or a read limit; Retry-After says
 * when) and 5xx (the request may not have been applied; the same
 * Idempotency-Key makes a resend safe), except 507 (`ledger_storage_full`:
 * the organization's storage stays full until an operator acts). Never 402,
 * 409, 422 or any other 4xx: the same request would be refused the same way.
 */
export function isRetryableStatus(status: number): boolean {
  return status === 429 || (status >= 500 && status <= 599 && status !== 507);
}

/**
 * Milliseconds Retry-After asks for: delay-seconds or an HTTP date (RFC 9110
 * §10.2.3); null when absent or unreadable.
 */
export function retryAfterMs(header: string | null, nowMs: number): number | null {
  if (header === null) return null;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - nowMs);
}

/**
 * The wait before attempt `attempt + 1` after `attempt` failed (attempts count
 * from 1), or null to give up. Exponential backoff with equal jitter:
 * between half and all of min(maxDelayMs, baseDelayMs · 2^(attempt−1)),
 * `random` in [0, 1). A Retry-After is honoured as a lower bound. Gives up
 * after maxAttempts, or when the wait would take the operation's waiting past
 * maxTotalDelayMs (`waitedMs` so far).
 */
export function delayBeforeRetry(
  policy: RetryPolicy,
  attempt: number,
  waitedMs: number,
  retryAfter: number | null,
  random: number,
): number | null {
  if (attempt >= policy.maxAttempts) return null;
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  const backoff = Math.floor(ceiling / 2 + (random * ceiling) / 2);
  const delay = retryAfter === null ? backoff : Math.max(retryAfter, backoff);
  return waitedMs + delay > policy.maxTotalDelayMs ? null : delay;
}
