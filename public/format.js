// Formatting for the dashboard. Credit amounts arrive as exact decimal
// strings and money as integer cents; both stay exact here: arithmetic is
// done on BigInt units (1/10,000 credit) and Intl formats decimal strings
// without turning them into floating-point numbers.

export const UNITS_PER_CREDIT = 10_000n;
const DECIMAL = /^(\d+)(?:\.(\d+))?$/;

/** The amount as BigInt units, or null when it is not a valid API amount. */
export function toUnits(text) {
  const match = DECIMAL.exec(String(text).trim());
  if (!match) return null;
  const fraction = (match[2] ?? '').replace(/0+$/, '');
  if (fraction.length > 4) return null;
  return BigInt(match[1]) * UNITS_PER_CREDIT + BigInt(fraction.padEnd(4, '0'));
}

/** BigInt units as the API writes amounts: "12.5", "0.0035", "200". */
export function fromUnits(units) {
  const whole = units / UNITS_PER_CREDIT;
  const fraction = (units % UNITS_PER_CREDIT).toString().padStart(4, '0').replace(/0+$/, '');
  return fraction ? `${whole}.${fraction}` : `${whole}`;
}

/**
 * Why `text` is not an acceptable credit amount between 0 (excluded) and
 * `max` (included), or null when it is.
 */
export function creditAmountProblem(text, max) {
  const trimmed = String(text ?? '').trim();
  if (trimmed === '') return 'Enter an amount of credits.';
  if (!DECIMAL.test(trimmed)) return 'Enter a number of credits such as 500 or 12.5, without a sign or unit.';
  const units = toUnits(trimmed);
  if (units === null) return 'Use at most 4 decimal places.';
  if (units <= 0n) return 'The amount must be more than 0.';
  const maxUnits = toUnits(max);
  if (maxUnits !== null && units > maxUnits) return `The amount can be at most ${formatCredits(max)} credits.`;
  return null;
}

const creditFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 4 });

/** A decimal credit string for display, grouped in the reader's locale. */
export function formatCredits(text) {
  // Intl formats a numeric string as an exact decimal (no float rounding).
  return toUnits(text) === null ? String(text) : creditFormat.format(String(text).trim());
}

/** Integer cents of `currency` as money, e.g. 5000, "usd" → "$50.00". */
export function formatMoney(cents, currency) {
  if (!Number.isSafeInteger(cents) || !currency) return '';
  const sign = cents < 0 ? '-' : '';
  const abs = Math.abs(cents);
  const decimal = `${sign}${Math.trunc(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
  return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() }).format(decimal);
}

/** num / den as a decimal string with `digits` fractional digits, rounded half up. */
export function ratio(num, den, digits) {
  if (den === 0n) return null;
  const scale = 10n ** BigInt(digits);
  const scaled = (num * scale * 2n + den) / (den * 2n);
  const whole = scaled / scale;
  if (digits === 0) return `${whole}`;
  return `${whole}.${(scaled % scale).toString().padStart(digits, '0')}`;
}

/** Share of `part` in `whole` (decimal credit strings) as "42.5 %", or "" when whole is 0. */
export function formatShare(part, whole) {
  const [p, w] = [toUnits(part), toUnits(whole)];
  if (p === null || !w) return '';
  return new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 }).format(ratio(p, w, 3));
}

/** What one credit costs in a pack, in the pack's currency: "$0.0095". */
export function pricePerCredit(pack) {
  const credits = toUnits(pack.credits);
  if (!credits) return '';
  // dollars per credit = cents / 100 / credits; 4 decimals of the currency unit.
  const value = ratio(BigInt(pack.price_cents) * UNITS_PER_CREDIT, credits * 100n, 4);
  return new Intl.NumberFormat(undefined, {
    style: 'currency',
    currency: pack.currency.toUpperCase(),
    minimumFractionDigits: 4,
  }).format(value);
}

/**
 * How many more credits per unit of money `pack` gives than `base`, as a
 * whole percentage (0 for the base pack itself), or null when not comparable.
 */
export function bonusPercent(pack, base) {
  const [c, b] = [toUnits(pack.credits), toUnits(base.credits)];
  if (!c || !b || pack.currency !== base.currency) return null;
  // (c / price) / (b / base_price) - 1, rounded down to a whole percent.
  const num = c * BigInt(base.price_cents);
  const den = b * BigInt(pack.price_cents);
  return Number(((num - den) * 100n) / den);
}

/** Whole percent of `part` in `whole` (credit strings), capped at 100, for bars. */
export function percentOf(part, whole) {
  const [p, w] = [toUnits(part), toUnits(whole)];
  if (p === null || !w) return 0;
  const pct = (p * 100n) / w;
  return Number(pct > 100n ? 100n : pct);
}

const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });
const weekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });

/** An RFC 3339 time in the reader's time zone. */
export function formatDateTime(iso) {
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : dateTimeFormat.format(at);
}

/** "09:00 GMT+9 (Tue, 3 Mar)": a time in the reader's zone, with its date. */
export function formatLocalTime(iso) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return iso;
  return `${timeFormat.format(at)} (${weekdayFormat.format(at)})`;
}

/** A YYYY-MM-DD date as a short label; parsed as UTC so it never shifts a day. */
export function formatDay(date, options = { day: 'numeric', month: 'short' }) {
  const at = new Date(`${date}T00:00:00Z`);
  return new Intl.DateTimeFormat(undefined, { ...options, timeZone: 'UTC' }).format(at);
}

/** The UTC date `days` days before `date` (YYYY-MM-DD). */
export function daysBefore(date, days) {
  const at = new Date(`${date}T00:00:00Z`);
  at.setUTCDate(at.getUTCDate() - days);
  return at.toISOString().slice(0, 10);
}

const FEATURE_NAMES = {
  chat: 'Chat',
  auto_triage: 'Auto-triage',
  error_analysis: 'Error analysis',
  incident_timeline: 'Incident timelines',
  release_analysis: 'Release analysis',
  nl_alerts: 'Natural-language alerts',
};

/** The AI features the wallet is configured with (wrangler.toml FEATURES), in display order. */
export const FEATURE_IDS = Object.keys(FEATURE_NAMES);

/** A feature id as people read it; unknown ids are shown spelled out. */
export function featureName(id) {
  return FEATURE_NAMES[id] ?? String(id).replaceAll('_', ' ');
}

const KIND_NAMES = {
  trial_grant: 'Trial credit',
  purchase: 'Purchase',
  // A share of a purchase refunded in Stripe, taken back (never below zero).
  refund_reversal: 'Refund',
  // The unspent credits of a purchase whose payment the bank disputed, taken back.
  dispute_reversal: 'Dispute',
  // What a dispute took, given back once the dispute was won.
  dispute_reinstatement: 'Dispute won',
};

/** Transaction kinds that take credits back; every other kind the Transactions tab lists adds them. */
export const TAKEN_BACK_KINDS = new Set(['refund_reversal', 'dispute_reversal']);

/** Whether an entry of `kind` removed credits (its `credits` are always positive; the kind says the direction). */
export const takesCredits = (kind) => TAKEN_BACK_KINDS.has(kind) || kind === 'debit' || kind === 'capture';

/** A ledger entry's kind as people read it; a purchase automatic top-up made says so (`source`). */
export function kindName(kind, source) {
  if (kind === 'purchase' && source === 'auto_top_up') return 'Automatic top-up';
  return KIND_NAMES[kind] ?? String(kind).replaceAll('_', ' ');
}
