// The client: one method per API operation an AI feature needs, each sent
// with its own idempotency key (reused on every retry) and retried within
// the policy's bounds; withHold wraps an AI call in a hold.

import { WalletError, isErrorCode } from './errors.ts';
import { DEFAULT_RETRY_POLICY, delayBeforeRetry, isRetryableStatus, retryAfterMs } from './retry.ts';
import type { RetryPolicy } from './retry.ts';
import type {
  Amount,
  BatchDebitItem,
  BatchDebitReply,
  CaptureBody,
  DebitBody,
  Debit,
  ErrorBody,
  ErrorDetails,
  Hold,
  HoldBody,
  LedgerPage,
  LedgerQuery,
  Pack,
  RatesReply,
  Usage,
  UsageEstimate,
  UsageQuery,
  UsageReport,
  Wallet,
} from './types.ts';

export interface WalletClientOptions {
  /** Where the API is, e.g. "https://wallet.example.com". */
  baseUrl: string;
  /** The organization every call is for. */
  org: string;
  /** A bearer token (a `service` token to debit and hold), or a function asked before each request (to refresh it). */
  token: string | (() => string | Promise<string>);
  /** Bounds on retries (merged over DEFAULT_RETRY_POLICY). */
  retry?: Partial<RetryPolicy>;
  /** Each attempt's limit; one that takes longer counts as a network error and is retried. Default 10,000 ms. */
  timeoutMs?: number;
  /** Headers added to every request. */
  headers?: Record<string, string>;
  /** Defaults to the global fetch. */
  fetch?: typeof fetch;
  /** A new idempotency key for an operation; defaults to crypto.randomUUID(). */
  newIdempotencyKey?: () => string;
  /** Waits between attempts; defaults to setTimeout. */
  sleep?: (ms: number) => Promise<void>;
  /** The jitter's source, in [0, 1); defaults to Math.random. */
  random?: () => number;
}

/** Options of an operation that changes the wallet. */
export interface WriteOptions {
  /** The operation's key; a new one by default. Pass your own to make a retry of your own code the same operation. */
  idempotencyKey?: string;
}

/** What withHold reserves before the AI call: an estimate to price, or an amount. */
export type WithHoldParams = {
  feature: string;
  userId?: string;
  projectId?: string;
  /** Seconds before the hold releases by itself if neither captured nor released (1–3600, default 300). */
  ttlSeconds?: number;
  /** The hold's key; a new one by default. */
  idempotencyKey?: string;
} & ({ usageEstimate: UsageEstimate; amount?: never } | { amount: Amount; usageEstimate?: never });

/** What the AI call used, returned by withHold's callback: its token usage, or a capture body ({usage} or {amount}). */
export type Spent = UsageReport | CaptureBody;

type Query = Record<string, string | number | undefined>;

interface Request {
  method: 'GET' | 'POST';
  path: string;
  query?: Query;
  body?: unknown;
  idempotencyKey?: string;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const wait = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class WalletClient {
  readonly org: string;
  readonly retryPolicy: RetryPolicy;
  readonly #base: string;
  readonly #token: () => string | Promise<string>;
  readonly #timeoutMs: number;
  readonly #headers: Record<string, string>;
  readonly #fetch: typeof fetch;
  readonly #newKey: () => string;
  readonly #sleep: (ms: number) => Promise<void>;
  readonly #random: () => number;

  constructor(options: WalletClientOptions) {
    const token = options.token;
    this.org = options.org;
    this.retryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.#base = options.baseUrl.replace(/\/+$/, '');
    this.#token = typeof token === 'string' ? () => token : token;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#headers = { ...options.headers };
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#newKey = options.newIdempotencyKey ?? (() => crypto.randomUUID());
    this.#sleep = options.sleep ?? wait;
    this.#random = options.random ?? Math.random;
  }

  // -------------------------------------------------------------------------
  // Spending (service token)

  /** Debits credits for a call whose cost is known: an amount, or usage priced by the rate card. */
  debit(body: DebitBody, options: WriteOptions = {}): Promise<Debit> {
    const idempotencyKey = options.idempotencyKey ?? this.#newKey();
    return this.#send({ method: 'POST', path: this.#orgPath('debits'), body, idempotencyKey });
  }

  /**
   * Up to 1,000 debits in one round trip, applied in order; each item has
   * its own key (a new one where missing), so a resent batch applies each at
   * most once. A refused item does not throw: its result carries the error.
   */
  debitBatch(items: (DebitBody & { idempotency_key?: string })[]): Promise<BatchDebitReply> {
    const debits = items.map((item) => ({ ...item, idempotency_key: item.idempotency_key ?? this.#newKey() }) as BatchDebitItem);
    return this.#send({ method: 'POST', path: this.#orgPath('debits/batch'), body: { debits } });
  }

  /** Reserves credits before a call whose cost is known only afterwards. */
  hold(body: HoldBody, options: WriteOptions = {}): Promise<Hold> {
    const idempotencyKey = options.idempotencyKey ?? this.#newKey();
    return this.#send({ method: 'POST', path: this.#orgPath('holds'), body, idempotencyKey });
  }

  /** Debits what the call cost (at most once; the same capture again answers as the first) and releases the rest. */
  capture(holdId: string, body: CaptureBody): Promise<Hold> {
    return this.#send({ method: 'POST', path: this.#holdPath(holdId, 'capture'), body });
  }

  /** Releases a hold (releasing it again answers as the first release did). */
  release(holdId: string): Promise<Hold> {
    return this.#send({ method: 'POST', path: this.#holdPath(holdId, 'release'), body: {} });
  }

  /**
   * Holds, runs `call` (the AI call), captures what it returns it used and
   * answers the captured hold. If `call` throws, the hold is released and
   * the error rethrown; if the API refuses the capture as invalid (422), the
   * hold is released and that error thrown. A hold that could not be
   * released (the API unreachable) releases itself at its expires_at.
   */
  async withHold(params: WithHoldParams, call: (hold: Hold) => Promise<Spent>): Promise<Hold> {
    const hold = await this.hold(holdBody(params), { idempotencyKey: params.idempotencyKey ?? this.#newKey() });
    let body: CaptureBody;
    try {
      body = captureBody(await call(hold));
    } catch (error) {
      await this.#releaseOrLeave(hold.id);
      throw error;
    }
    try {
      return await this.capture(hold.id, body);
    } catch (error) {
      if (error instanceof WalletError && error.status === 422) await this.#releaseOrLeave(hold.id);
      throw error;
    }
  }

  // -------------------------------------------------------------------------
  // Reads

  /** The balance, what is held and where today's caps stand: always exact. */
  wallet(): Promise<Wallet> {
    return this.#send({ method: 'GET', path: this.#orgPath('wallet') });
  }

  /** Usage by feature, member, model and day (a dashboard role's token: owner, admin, member or viewer). */
  usage(query: UsageQuery = {}): Promise<Usage> {
    return this.#send({ method: 'GET', path: this.#orgPath('usage'), query: { ...query } });
  }

  /** One page of the ledger, newest first (owner or admin). */
  ledger(query: LedgerQuery = {}): Promise<LedgerPage> {
    return this.#send({ method: 'GET', path: this.#orgPath('ledger'), query: { ...query } });
  }

  /** The rate card: every rate, ordered by model then effective_from. */
  rates(): Promise<RatesReply> {
    return this.#send({ method: 'GET', path: '/v1/rates' });
  }

  /** The credit packs on sale. */
  packs(): Promise<Pack[]> {
    return this.#send({ method: 'GET', path: '/v1/packs' });
  }

  // -------------------------------------------------------------------------
  // Transport

  #orgPath(rest: string): string {
    return `/v1/orgs/${encodeURIComponent(this.org)}/${rest}`;
  }

  #holdPath(holdId: string, action: string): string {
    return this.#orgPath(`holds/${encodeURIComponent(holdId)}/${action}`);
  }

  async #releaseOrLeave(holdId: string): Promise<void> {
    try {
      await this.release(holdId);
    } catch {
      // The hold releases itself at its expires_at; the caller's error matters more.
    }
  }

  /** Sends one operation, again after a network error, a 5xx or a 429, within the retry policy. */
  async #send<T>(request: Request): Promise<T> {
    const url = this.#base + request.path + queryString(request.query);
    const body = request.body === undefined ? undefined : JSON.stringify(request.body);
    let waitedMs = 0;
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.#attempt<T>(request, url, body, attempt);
      if (outcome.done) return outcome.value;
      const delay = outcome.retryable
        ? delayBeforeRetry(this.retryPolicy, attempt, waitedMs, outcome.retryAfterMs, this.#random())
        : null;
      if (delay === null) throw outcome.error;
      await this.#sleep(delay);
      waitedMs += delay;
    }
  }

  async #attempt<T>(request: Request, url: string, body: string | undefined, attempt: number): Promise<Outcome<T>> {
    const headers: Record<string, string> = {
      accept: 'application/json',
      ...this.#headers,
      authorization: `Bearer ${await this.#token()}`,
    };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (request.idempotencyKey !== undefined) headers['idempotency-key'] = request.idempotencyKey;
    let status: number;
    let text: string;
    let retryAfter: string | null;
    try {
      const signal = AbortSignal.timeout(this.#timeoutMs);
      const response = await this.#fetch(url, { method: request.method, headers, body: body ?? null, signal });
      status = response.status;
      retryAfter = response.headers.get('retry-after');
      text = await response.text();
    } catch (cause) {
      const message = `${request.method} ${request.path}: no answer (${describe(cause)})`;
      const error = new WalletError('network_error', 0, message, { attempts: attempt, cause });
      return { done: false, error, retryable: true, retryAfterMs: null };
    }
    if (status >= 200 && status <= 299) {
      try {
        return { done: true, value: JSON.parse(text) as T };
      } catch (cause) {
        const error = new WalletError('unexpected_response', status, `${request.method} ${request.path}: the answer is not JSON`, { attempts: attempt, cause });
        return { done: false, error, retryable: false, retryAfterMs: null };
      }
    }
    const error = errorFromAnswer(request, status, text, retryAfter, attempt);
    const retryable = isRetryableStatus(status);
    return { done: false, error, retryable, retryAfterMs: retryAfterMs(retryAfter, Date.now()) };
  }
}

type Outcome<T> =
  | { done: true; value: T }
  | { done: false; error: WalletError; retryable: boolean; retryAfterMs: number | null };

function holdBody(params: WithHoldParams): HoldBody {
  const attribution = {
    feature: params.feature,
    ...(params.userId === undefined ? {} : { user_id: params.userId }),
    ...(params.projectId === undefined ? {} : { project_id: params.projectId }),
    ...(params.ttlSeconds === undefined ? {} : { ttl_seconds: params.ttlSeconds }),
  };
  if (params.usageEstimate !== undefined) return { ...attribution, usage_estimate: params.usageEstimate };
  if (params.amount !== undefined) return { ...attribution, amount: params.amount };
  throw new TypeError('withHold needs usageEstimate or amount');
}

function captureBody(spent: Spent): CaptureBody {
  if (spent !== null && typeof spent === 'object') {
    if ('model' in spent) return { usage: spent };
    if ('usage' in spent && spent.usage !== undefined) return { usage: spent.usage };
    if ('amount' in spent && typeof spent.amount === 'string') return { amount: spent.amount };
  }
  throw new TypeError('the call given to withHold must return its usage ({model, input_tokens, output_tokens}) or {amount}');
}

function queryString(query: Query | undefined): string {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined) params.set(name, String(value));
  }
  const text = params.toString();
  return text === '' ? '' : `?${text}`;
}

/** The API's error from its JSON body, or unexpected_response when the body is not one. */
function errorFromAnswer(request: Request, status: number, text: string, retryAfter: string | null, attempt: number): WalletError {
  const seconds = retryAfter !== null && /^\d+$/.test(retryAfter.trim()) ? Number(retryAfter.trim()) : null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const error = (parsed as Partial<ErrorBody> | undefined)?.error;
  if (error === undefined || error === null || typeof error !== 'object' || typeof error.code !== 'string') {
    const message = `${request.method} ${request.path}: ${status} without the API's error body`;
    return new WalletError('unexpected_response', status, message, { retryAfterSeconds: seconds, attempts: attempt });
  }
  const { code, message, ...details } = error;
  // A code this version does not know yet is passed on as the API named it.
  const known = isErrorCode(code) ? code : (code as never);
  return new WalletError(known, status, String(message ?? code), {
    details: details as ErrorDetails,
    retryAfterSeconds: seconds,
    attempts: attempt,
  });
}

function describe(cause: unknown): string {
  if (cause instanceof Error) return cause.name === 'TimeoutError' ? 'timed out' : cause.message;
  return String(cause);
}
