// The wire types of the AI Wallet API (GET /openapi.json): request bodies and
// replies exactly as they travel, snake_case names included. Credit amounts
// are decimal strings, never numbers: money stays exact end to end.

/** Credits as an exact decimal string ("12.5", "0.0035"): at most 4 fractional digits, never a JSON number. */
export type Amount = string;
/** An RFC 3339 UTC instant, e.g. "2026-12-05T10:00:00.000Z". */
export type Instant = string;
/** A UTC calendar date, "YYYY-MM-DD". */
export type DateString = string;

export type Role = 'owner' | 'admin' | 'member' | 'viewer' | 'service';
/** Free-form string attributes of a debit: at most 20 keys, values of at most 500 characters. */
export type Metadata = Record<string, string>;

// ---------------------------------------------------------------------------
// Priced usage (SPEC §12): what an AI call used, priced by the rate card.

/**
 * What one AI call used (`usage` of a debit or capture; OpenAPI UsageReport);
 * the wallet prices it with the model's rate: ((input_tokens −
 * cached_input_tokens) × input_per_million + cached_input_tokens ×
 * cached_input_per_million + output_tokens × output_per_million) / 1,000,000
 * + per_request, rounded up to 0.0001 credit. Counts are integers 0–100,000,000.
 */
export interface UsageReport {
  /** A model of the rate card (GET /v1/rates); another is 422 unknown_model. */
  model: string;
  input_tokens: number;
  output_tokens: number;
  /** The part of input_tokens served from the prompt cache (default 0). */
  cached_input_tokens?: number;
}

/** The most a call may use, for a hold: input_tokens uncached and max_output_tokens output, at the rate in force. */
export interface UsageEstimate {
  model: string;
  input_tokens: number;
  max_output_tokens: number;
}

/** On a priced entry: what was used and the rate it was priced at. */
export interface PricedUsage {
  model: string;
  input_tokens: number;
  cached_input_tokens: number;
  output_tokens: number;
  /** rate_<model>_<effective_from as yyyymmddThhmmssZ> */
  rate_id: string;
}

/** Either an amount of credits or the usage to price, never both (422). */
export type Spend = { amount: Amount; usage?: never } | { usage: UsageReport; amount?: never };

// ---------------------------------------------------------------------------
// Request bodies

interface Attribution {
  /** One of the configured features (chat, auto_triage, …). */
  feature: string;
  user_id?: string;
  project_id?: string;
}

/** POST /v1/orgs/{org}/debits (with an Idempotency-Key header). */
export type DebitBody = Attribution & { metadata?: Metadata } & Spend;

/** One item of POST /v1/orgs/{org}/debits/batch: a debit with its own key. */
export type BatchDebitItem = DebitBody & { idempotency_key: string };

/** POST /v1/orgs/{org}/debits/batch: 1 to 1,000 items, applied in order. */
export interface BatchDebitBody {
  debits: BatchDebitItem[];
}

/** POST /v1/orgs/{org}/holds (with an Idempotency-Key header). */
export type HoldBody = Attribution & {
  /** Seconds until the hold releases by itself: 1–3600, default 300. */
  ttl_seconds?: number;
} & ({ amount: Amount; usage_estimate?: never } | { usage_estimate: UsageEstimate; amount?: never });

/**
 * POST /v1/orgs/{org}/holds/{hold_id}/capture: an amount (0 to the held
 * amount), or usage (holds from a usage_estimate only) priced at the hold's
 * rate; above the hold, the whole hold is captured and the rest recorded as unbilled.
 */
export type CaptureBody = Spend;

/** POST /v1/orgs (service): the signup hook. */
export interface SignupBody {
  org_id: string;
  owner_id: string;
  stripe_customer_id?: string;
}

/** PUT /v1/orgs/{org}/daily-cap (owner). */
export interface DailyCapBody {
  daily_cap: Amount;
}

/** PUT /v1/orgs/{org}/feature-caps (owner): null removes a feature's cap. */
export interface FeatureCapsBody {
  caps: Record<string, Amount | null>;
}

/** POST /v1/orgs/{org}/purchases (owner, with an Idempotency-Key header). */
export interface PurchaseBody {
  pack_id: string;
}

/** PUT /v1/orgs/{org}/auto-top-up (owner). */
export interface AutoTopUpBody {
  enabled: boolean;
  threshold?: Amount;
  pack_id?: string;
  monthly_limit?: number;
}

/** PUT /v1/orgs/{org}/alerts (owner): null turns the alert off. */
export interface AlertsBody {
  low_balance_threshold: Amount | null;
}

/** Query of GET …/ledger, …/transactions, …/audit and …/events. */
export interface PageQuery {
  /** 1–100, default 50. */
  limit?: number;
  /** An id from the previous page: the page continues after it. */
  starting_after?: string;
}

/** Query of GET …/ledger. */
export interface LedgerQuery extends PageQuery {
  from?: DateString;
  to?: DateString;
}

/** Query of GET …/usage: UTC dates, both included (default the last 30 days). */
export interface UsageQuery {
  from?: DateString;
  to?: DateString;
}

// ---------------------------------------------------------------------------
// Replies

export interface FeatureCap {
  feature: string;
  daily_cap: Amount;
  spent_today: Amount;
  held_today: Amount;
  cap_remaining: Amount;
}

/** GET /v1/orgs/{org}/wallet: always exact. */
export interface Wallet {
  org_id: string;
  balance: Amount;
  held: Amount;
  available: Amount;
  daily_cap: Amount;
  daily_cap_default: Amount;
  daily_cap_max: Amount;
  spent_today: Amount;
  held_today: Amount;
  cap_remaining: Amount;
  day: DateString;
  resets_at: Instant;
  status: 'active' | 'paused_daily_cap' | 'paused_no_credits';
  resumes_at: Instant | null;
  feature_caps: FeatureCap[];
}

export type EntryKind =
  | 'trial_grant'
  | 'purchase'
  | 'debit'
  | 'capture'
  | 'dispute_reversal'
  | 'refund_reversal'
  | 'dispute_reinstatement';

/** A ledger entry; amount is always positive, the kind says the direction. */
export interface LedgerEntry {
  id: string;
  kind: EntryKind;
  amount: Amount;
  balance_after: Amount;
  created_at: Instant;
  feature?: string | null;
  user_id?: string | null;
  project_id?: string | null;
  usage_day?: DateString;
  hold_id?: string;
  pack_id?: string;
  amount_cents?: number;
  currency?: string;
  payment_intent_id?: string;
  purchase_id?: string;
  metadata?: Metadata;
  source?: 'owner' | 'auto_top_up';
  /** Debits and captures priced from usage. */
  usage?: PricedUsage;
  /** A capture by usage that cost more than its hold: what was not taken (the whole hold was). */
  unbilled?: Amount;
}

/** 201 of POST …/debits: the entry and where today's cap stands. */
export interface Debit extends LedgerEntry {
  spent_today: Amount;
  cap_remaining: Amount;
}

export type HoldStatus = 'active' | 'captured' | 'released' | 'expired';

/** A hold, as POST …/holds, …/capture and …/release answer it. */
export interface Hold {
  id: string;
  status: HoldStatus;
  amount: Amount;
  feature: string;
  user_id?: string | null;
  project_id?: string | null;
  created_at: Instant;
  expires_at: Instant;
  captured_amount?: Amount | null;
  /** On captured holds: the capture's entry, null when 0 was captured. */
  entry?: LedgerEntry | null;
  /** Holds placed from a usage_estimate: the estimate, and the rate it and its capture by usage are priced at. */
  usage_estimate?: UsageEstimate;
  rate_id?: string;
  /** After a capture by usage: the usage captured and its rate. */
  captured_usage?: PricedUsage;
  /** After a capture by usage: what it cost beyond the hold ("0" when it fit). */
  unbilled?: Amount;
}

/** One result of a batch, in the order of the items. */
export interface BatchDebitResult {
  idempotency_key: string | null;
  /** What the single-debit route would have answered. */
  status: number;
  entry?: Debit;
  error?: ErrorBody['error'];
}

export interface BatchDebitReply {
  results: BatchDebitResult[];
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
}

export type LedgerPage = Page<LedgerEntry>;

export interface Transaction {
  id: string;
  created_at: Instant;
  kind: 'trial_grant' | 'purchase' | 'dispute_reversal' | 'refund_reversal' | 'dispute_reinstatement';
  pack_id: string | null;
  credits: Amount;
  amount_cents: number | null;
  currency: string | null;
  balance_after: Amount;
  source: 'owner' | 'auto_top_up' | null;
}

export type TransactionPage = Page<Transaction>;

export interface ModelUsage {
  model: string;
  credits: Amount;
  count: number;
  input_tokens: number;
  output_tokens: number;
  unbilled: Amount;
}

/** GET /v1/orgs/{org}/usage (any role but service). */
export interface Usage {
  from: DateString;
  to: DateString;
  days: number;
  today: DateString;
  total: Amount;
  count: number;
  by_feature: { feature: string; credits: Amount; count: number }[];
  by_member: { user_id: string | null; credits: Amount; count: number }[];
  by_member_truncated: boolean;
  /** Usage priced from tokens, per model, most credits first. */
  by_model: ModelUsage[];
  /** What captures by usage cost beyond their holds and was not taken, in all. */
  unbilled: Amount;
  daily: { date: DateString; credits: Amount }[];
  balance: Amount;
  trailing_7d: { from: DateString; to: DateString; credits: Amount };
  avg_daily_7d: Amount;
  projected_days_until_depletion: number | null;
}

/** A rate of the rate card (GET /v1/rates): credits per million tokens, and per call. */
export interface Rate {
  /** rate_<model>_<effective_from as yyyymmddThhmmssZ> */
  id: string;
  model: string;
  input_per_million: Amount;
  cached_input_per_million: Amount;
  output_per_million: Amount;
  per_request: Amount;
  effective_from: Instant;
  /** This model's rate in force now. */
  in_force: boolean;
}

export interface RatesReply {
  data: Rate[];
}

export interface Pack {
  id: string;
  name: string;
  credits: Amount;
  price_cents: number;
  currency: 'usd';
}

export interface PaymentMethod {
  has_payment_method: boolean;
  type?: string;
  brand?: string | null;
  last4?: string | null;
}

export interface Purchase {
  id: string;
  object: 'purchase';
  status: 'processing' | 'requires_action' | 'succeeded' | 'failed' | 'disputed' | 'canceled';
  pack_id: string;
  credits: Amount;
  amount_cents: number;
  currency: 'usd';
  payment_intent_id: string | null;
  client_secret?: string;
  decline_code?: string | null;
  credits_granted?: Amount;
  entry_id?: string | null;
  credits_reversed?: Amount;
  created_at: Instant;
  updated_at: Instant;
  source: 'owner' | 'auto_top_up';
  amount_refunded_cents?: number;
  credits_refunded?: Amount;
  credits_unrecovered?: Amount;
  dispute_status?: null | 'open' | 'won' | 'lost' | 'closed';
  credits_reinstated?: Amount;
}

export interface AutoTopUp {
  enabled: boolean;
  threshold: Amount | null;
  pack_id: string | null;
  monthly_limit: number;
  used_this_month: number;
  month: string;
  in_flight: boolean;
  in_flight_purchase_id: string | null;
  disabled_reason: null | 'payment_failed' | 'payment_method_required' | 'monthly_limit_reached' | 'payment_disputed';
}

export interface Alerts {
  low_balance_threshold: Amount | null;
  low_balance: boolean;
}

export interface AuditRecord {
  id: string;
  created_at: Instant;
  setting: 'daily_cap' | 'feature_caps' | 'auto_top_up' | 'alerts';
  sub: string;
  role: Role;
  before: unknown;
  after: unknown;
}

export type AuditPage = Page<AuditRecord>;

export type EventType =
  | 'wallet.low_balance'
  | 'wallet.depleted'
  | 'wallet.daily_cap_reached'
  | 'purchase.succeeded'
  | 'purchase.failed'
  | 'auto_top_up.failed'
  | 'settings.changed'
  | 'purchase.refunded'
  | 'purchase.disputed'
  | 'purchase.dispute_closed';

export interface WalletEvent {
  id: string;
  type: EventType;
  org_id: string;
  created_at: Instant;
  data: Record<string, unknown>;
  delivery: { status: 'pending' | 'delivered' | 'failing'; attempts: number };
}

export type EventPage = Page<WalletEvent>;

// ---------------------------------------------------------------------------
// Errors

/** Details the API gives with some error codes. */
export interface ErrorDetails {
  /** invalid_request, unknown_model: the field at fault. */
  field?: string;
  /** insufficient_credits */
  available?: Amount;
  requested?: Amount;
  /** daily_cap_reached, feature_cap_reached */
  resumes_at?: Instant;
  daily_cap?: Amount;
  feature_cap?: Amount;
  cap_remaining?: Amount;
  feature?: string;
  /** invalid_request on a capture above the hold */
  held?: Amount;
  /** hold_not_active */
  hold_status?: HoldStatus;
  /** too_many_active_holds */
  limit?: number;
  /** payload_too_large */
  limit_bytes?: number;
  [detail: string]: unknown;
}

/** Every error body: {"error": {"code", "message", …details}}. */
export interface ErrorBody {
  error: ErrorDetails & { code: string; message: string };
}
