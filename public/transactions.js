// The Transactions tab: every entry that is not AI usage (grants, purchases,
// and what refunds and disputes took back or gave back) with the running
// balance, paged with the API's cursor, and the CSV export of the whole history.
import { isRateLimited, orgPath, packNamesById, retryWhenAllowed } from './api.js';
import { setupCsvDownload } from './csv-download.js';
import { $, labelledCell, localTime, showError } from './dom.js';
import { formatCredits, formatMoney, kindName, takesCredits } from './format.js';
import { createPager, fetchPage } from './pager.js';

const PAGE_SIZE = 25;
const LABELS = ['Date', 'Type', 'Pack', 'Credits', 'Paid', 'Balance after'];

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
  let loading = false;
  let packNames = null;
  let cancelRetry = null; // a retry after 429 rate_limited, waiting
  const pager = createPager({
    newer: $('tx-newer'),
    older: $('tx-older'),
    pageNumber: $('tx-page'),
    empty: $('tx-empty'),
    load,
  });

  function cell(row, text, className) {
    const td = labelledCell(row, LABELS, className);
    td.textContent = text;
    return td;
  }

  function render(page) {
    const body = $('tx-body');
    body.replaceChildren();
    for (const tx of page.data) {
      const row = document.createElement('tr');
      row.dataset.id = tx.id;
      cell(row, '').append(localTime(tx.created_at));
      row.dataset.kind = tx.kind;
      const type = cell(row, kindName(tx.kind, tx.source));
      if (KIND_HINTS[tx.kind]) type.title = KIND_HINTS[tx.kind];
      cell(row, tx.pack_id ? (packNames[tx.pack_id] ?? tx.pack_id) : '—');
      // `credits` is always positive: the kind says whether they were added or taken back.
      const out = takesCredits(tx.kind);
      cell(row, `${out ? '\u2212' : '+'}${formatCredits(tx.credits)}`, out ? 'num minus' : 'num plus');
      cell(row, paidText(tx), 'num');
      cell(row, formatCredits(tx.balance_after), 'num');
      body.append(row);
    }
    pager.shown(page);
  }

  async function load() {
    if (loading) return;
    loading = true;
    cancelRetry?.();
    cancelRetry = null;
    $('tx-error').hidden = true;
    try {
      packNames ??= await packNamesById();
      render(await fetchPage(orgPath(org, 'transactions'), PAGE_SIZE, pager.cursor));
    } catch (err) {
      if (isRateLimited(err)) {
        cancelRetry = retryWhenAllowed(err, (text) => showError($('tx-error'), `Transactions: ${text}`), () => {
          cancelRetry = null;
          load();
        });
      } else {
        showError($('tx-error'), `Transactions could not be loaded: ${err.message}`);
      }
    } finally {
      loading = false;
    }
  }

  setupCsvDownload($('csv-download'), $('csv-status'), `${orgPath(org, 'transactions')}?format=csv`, `transactions-${org}.csv`);

  return {
    show() {
      pager.reset();
      load();
    },
  };
}
