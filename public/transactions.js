// The Transactions tab: every entry that is not AI usage (grants, purchases,
// and what refunds and disputes took back or gave back) with the running
// balance, paged with the API's cursor, and the CSV export of the whole history.
import { call, downloadFile, isRateLimited, orgPath, packCatalogue, retryWhenAllowed } from './api.js';
import { formatCredits, formatDateTime, formatMoney, kindName, takesCredits } from './format.js';

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 25;

/** What an entry of each kind did, for the type's tooltip. */
const KIND_HINTS = {
  refund_reversal: "Refunded in Stripe: the refunded share of the purchase's credits was taken back (never more than was available).",
  dispute_reversal: "The payment was disputed at the bank: the purchase's unspent credits were taken back.",
  dispute_reinstatement: 'The dispute was won: the credits it took were given back.',
};

/** The "Paid" column: what was paid (or refunded) for an entry, in words. */
function paidText(tx) {
  if (tx.amount_cents === null || tx.amount_cents === undefined) return tx.kind === 'trial_grant' ? 'Free' : '—';
  const money = formatMoney(tx.amount_cents, tx.currency);
  return tx.kind === 'refund_reversal' ? `${money} refunded` : money;
}

export function createTransactionsView(session) {
  const org = session.org;
  // Cursors of the pages shown so far: [undefined, id, id, …]; the last is the current page.
  let cursors = [undefined];
  let loading = false;
  let packNames = null;
  let cancelRetry = null; // a retry after 429 rate_limited, waiting

  async function loadPackNames() {
    try {
      const packs = await packCatalogue();
      packNames = Object.fromEntries(packs.map((p) => [p.id, p.name]));
    } catch {
      packNames = {}; // pack ids are shown as they are
    }
  }

  const LABELS = ['Date', 'Type', 'Pack', 'Credits', 'Paid', 'Balance after'];

  function cell(row, text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    td.dataset.label = LABELS[row.cells.length]; // shown on phones, where rows stack
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function render(page) {
    const body = $('tx-body');
    body.replaceChildren();
    for (const tx of page.data) {
      const row = document.createElement('tr');
      row.dataset.id = tx.id;
      const when = document.createElement('time');
      when.dateTime = tx.created_at;
      when.textContent = formatDateTime(tx.created_at);
      cell(row, '').append(when);
      row.dataset.kind = tx.kind;
      const type = cell(row, kindName(tx.kind, tx.source));
      if (KIND_HINTS[tx.kind]) type.title = KIND_HINTS[tx.kind];
      cell(row, tx.pack_id ? (packNames?.[tx.pack_id] ?? tx.pack_id) : '—');
      // `credits` is always positive: the kind says whether they were added or taken back.
      const out = takesCredits(tx.kind);
      cell(row, `${out ? '\u2212' : '+'}${formatCredits(tx.credits)}`, out ? 'num minus' : 'num plus');
      cell(row, paidText(tx), 'num');
      cell(row, formatCredits(tx.balance_after), 'num');
      body.append(row);
    }
    $('tx-empty').hidden = page.data.length > 0 || cursors.length > 1;
    $('tx-newer').disabled = cursors.length <= 1;
    $('tx-older').disabled = !page.has_more;
    $('tx-older').dataset.cursor = page.data.at(-1)?.id ?? '';
    $('tx-page').textContent = page.data.length ? `Page ${cursors.length}` : '';
  }

  async function load() {
    if (loading) return;
    loading = true;
    cancelRetry?.();
    cancelRetry = null;
    $('tx-error').hidden = true;
    try {
      if (!packNames) await loadPackNames();
      const cursor = cursors.at(-1);
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (cursor) query.set('starting_after', cursor);
      render(await call('GET', `${orgPath(org, 'transactions')}?${query}`));
    } catch (err) {
      const show = (text) => {
        $('tx-error').textContent = text;
        $('tx-error').hidden = false;
      };
      if (isRateLimited(err)) {
        cancelRetry = retryWhenAllowed(err, (text) => show(`Transactions: ${text}`), () => {
          cancelRetry = null;
          load();
        });
      } else {
        show(`Transactions could not be loaded: ${err.message}`);
      }
    } finally {
      loading = false;
    }
  }

  $('tx-older').addEventListener('click', () => {
    const cursor = $('tx-older').dataset.cursor;
    if (!cursor) return;
    cursors.push(cursor);
    load();
  });
  $('tx-newer').addEventListener('click', () => {
    if (cursors.length > 1) cursors.pop();
    load();
  });

  $('csv-download').addEventListener('click', async () => {
    const button = $('csv-download');
    const status = $('csv-status');
    button.disabled = true;
    status.className = 'message';
    status.textContent = 'Preparing the CSV file…';
    try {
      const name = await downloadFile(`${orgPath(org, 'transactions')}?format=csv`, `transactions-${org}.csv`);
      status.textContent = `Downloaded ${name}.`;
      status.className = 'message ok';
    } catch (err) {
      status.textContent = isRateLimited(err)
        ? `Too many requests right now: try the download again in ${err.retryAfter ?? 60} s.`
        : `The CSV file could not be downloaded: ${err.message}`;
      status.className = 'message error';
    } finally {
      button.disabled = false;
    }
  });

  return {
    show() {
      cursors = [undefined];
      load();
    },
  };
}
