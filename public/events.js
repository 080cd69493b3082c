// Recent events on the Wallet tab (owner and admin): what the wallet
// reported (low balance, purchases, settings changes…), newest first, with a
// short summary of each and how its delivery is going. The first page is
// asked again with each fresh wallet view, so new events and delivery
// progress show up; "Load more" follows the API's cursor (pager.js).
import { orgPath, packNamesById } from './api.js';
import { describeChange, settingName } from './audit.js';
import { reasonText } from './auto-top-up.js';
import { $, labelledCell, localTime, showError } from './dom.js';
import { formatCredits, formatDay, formatLocalTime, formatMoney } from './format.js';
import { fetchPage } from './pager.js';
import { roleName } from './roles.js';

const PAGE_SIZE = 20;
const LABELS = ['When', 'Event', 'Details', 'Delivery'];

const TYPE_NAMES = {
  'wallet.low_balance': 'Low balance',
  'wallet.depleted': 'Out of credits',
  'wallet.daily_cap_reached': 'Daily cap reached',
  'purchase.succeeded': 'Purchase succeeded',
  'purchase.failed': 'Purchase failed',
  'auto_top_up.failed': 'Automatic top-up failed',
  'settings.changed': 'Settings changed',
  'purchase.refunded': 'Purchase refunded',
  'purchase.disputed': 'Payment disputed',
  'purchase.dispute_closed': 'Dispute closed',
};
const SOURCE_NAMES = { auto_top_up: 'automatic top-up', owner: 'bought by the owner' };
const DELIVERY_NAMES = { pending: 'Pending', delivered: 'Delivered', failing: 'Failing' };

const credits = (amount) => `${formatCredits(amount)} credits`;
const sourceName = (source) => SOURCE_NAMES[source] ?? String(source ?? '').replaceAll('_', ' ');
const declined = (code) => (code ? ` (${code})` : '');
/** ", N credits already spent were not recovered" when a refund could not take everything back. */
const unrecovered = (d) => (d.credits_unrecovered && d.credits_unrecovered !== '0'
  ? `; ${credits(d.credits_unrecovered)} were already spent and are not taken back`
  : '');
/** Packs are priced in usd, so refunds of their payments are too. */
const refundedMoney = (cents) => formatMoney(cents, 'usd');
const DISPUTE_ENDS = {
  won: (d) => `Dispute won: ${credits(d.credits_reinstated)} given back.`,
  lost: () => 'Dispute lost: the credits taken back stay taken back.',
  closed: () => 'Dispute closed without a decision: nothing more is taken or given back.',
};

/** One line about an event's data, as people read it. */
function summarize(event, packName) {
  const d = event.data ?? {};
  switch (event.type) {
    case 'wallet.low_balance':
      return `${credits(d.available)} available, under the alert threshold of ${credits(d.threshold)}.`;
    case 'wallet.depleted':
      return `No credits available: balance ${credits(d.balance)}, available ${credits(d.available)}.`;
    case 'wallet.daily_cap_reached':
      return `Daily cap of ${credits(d.daily_cap)} reached on ${formatDay(d.day, { dateStyle: 'medium' })} (UTC) with ` +
        `${credits(d.spent_today)} spent; AI features resume at ${formatLocalTime(d.resumes_at)}.`;
    case 'purchase.succeeded':
      return `${packName(d.pack_id)}, ${sourceName(d.source)}: ${credits(d.credits)} for ${formatMoney(d.amount_cents, d.currency)}.`;
    case 'purchase.failed':
      return `${packName(d.pack_id)}, ${sourceName(d.source)}: the payment failed${declined(d.decline_code)}; no credits were added.`;
    case 'auto_top_up.failed':
      return `Automatic top-up stopped: ${reasonText(d.reason)}${declined(d.decline_code)}.`;
    case 'purchase.refunded':
      return `${refundedMoney(d.amount_refunded_cents)} of a purchase (${sourceName(d.source)}) refunded in all: ` +
        `${credits(d.credits_taken_back)} taken back now${unrecovered(d)}.`;
    case 'purchase.disputed':
      return `The bank disputed a purchase (${sourceName(d.source)}): ${credits(d.credits_reversed)} taken back; ` +
        'automatic top-up, if it was on, is off until the owner enables it again.';
    case 'purchase.dispute_closed':
      return (DISPUTE_ENDS[d.status] ?? DISPUTE_ENDS.closed)(d);
    case 'settings.changed':
      return `${settingName(d.setting)} by ${d.sub} (${roleName(d.role)}): ${describeChange(d, packName).join('; ')}.`;
    default:
      // A type this page does not know yet: its data as the API wrote it.
      return JSON.stringify(d);
  }
}

export function createEventsView(session, walletView) {
  const org = session.org;
  let events = []; // shown, newest first
  let hasMore = false;
  let packNames = null;
  let loading = null;

  $('events').hidden = false;
  const packName = (id) => packNames?.[id] ?? id;

  const cell = (row, className) => labelledCell(row, LABELS, className);

  function render() {
    const body = $('events-body');
    body.replaceChildren();
    for (const event of events) {
      const row = document.createElement('tr');
      row.dataset.id = event.id;
      row.dataset.type = event.type;
      cell(row).append(localTime(event.created_at));
      // One wrapper, so the phone layout keeps the name and the type together beside their label.
      const type = document.createElement('div');
      const name = document.createElement('span');
      name.textContent = TYPE_NAMES[event.type] ?? event.type;
      const code = document.createElement('code');
      code.textContent = event.type;
      type.append(name, ' ', code);
      cell(row, 'event-type').append(type);
      cell(row, 'details').textContent = summarize(event, packName);
      const { status, attempts } = event.delivery ?? {};
      cell(row, `delivery ${status ?? ''}`).textContent =
        `${DELIVERY_NAMES[status] ?? status} · ${attempts} attempt${attempts === 1 ? '' : 's'}`;
      body.append(row);
    }
    $('events-empty').hidden = events.length > 0;
    $('events-more').hidden = !hasMore;
  }

  /** One page: the newest (no cursor) or the one after `cursor`. */
  async function page(cursor) {
    packNames ??= await packNamesById();
    return fetchPage(orgPath(org, 'events'), PAGE_SIZE, cursor);
  }

  async function run(work) {
    if (loading) return loading;
    $('events-error').hidden = true;
    loading = (async () => {
      try {
        await work();
        render();
      } catch (err) {
        showError($('events-error'), `Events could not be loaded: ${err.message}`);
      } finally {
        loading = null;
      }
    })();
    return loading;
  }

  /** The newest page again, merged over what is shown so pages loaded with "Load more" stay. */
  const refresh = () => run(async () => {
    const newest = await page();
    const fresh = new Set(newest.data.map((e) => e.id));
    // The page reaches what was shown: fresh copies (delivery moves on) on top of the older rest.
    if (events.length && fresh.has(events[0].id)) {
      const older = events.filter((e) => !fresh.has(e.id));
      if (older.length === 0) hasMore = newest.has_more;
      events = [...newest.data, ...older];
    } else {
      events = newest.data;
      hasMore = newest.has_more;
    }
  });

  $('events-more').addEventListener('click', () => run(async () => {
    const next = await page(events.at(-1)?.id);
    events = [...events, ...next.data];
    hasMore = next.has_more;
  }));

  walletView.onWallet(() => refresh());
}
