// The Wallet tab: balance and status, the paused banner, the daily spend
// cap (owners change it), and the credit packs (owners buy them).
import { call, isRateLimited, orgPath, packCatalogue, retryWhenAllowed } from './api.js';
import { $, addText, isEditing, showError, showMessage } from './dom.js';
import {
  bonusPercent, creditAmountProblem, formatCredits, formatLocalTime, formatMoney, percentOf,
  pricePerCredit, toUnits, fromUnits,
} from './format.js';
import { canBuy, canChangeSettings } from './roles.js';

const REFRESH_MS = 30_000;
const CREDIT_POLL_MS = 1_000;
const CREDIT_WAIT_MS = 60_000;

export function createWalletView(session) {
  const mayEditCap = canChangeSettings(session.role);
  const mayBuy = canBuy(session.role);
  const org = session.org;
  let wallet = null;
  let packs = null;
  let paymentMethod = null;
  let catalogueLoaded = false;
  let cancelMethodRetry = null; // a retry of the payment method after 429 rate_limited, waiting
  let refreshing = null;
  const listeners = new Set(); // called with each fresh wallet view
  const creditListeners = new Set(); // called when a purchase's credits arrived

  // ---- balance, status, banner ------------------------------------------------

  function renderWallet() {
    $('wallet-error').hidden = true;
    $('balance').textContent = formatCredits(wallet.balance);
    $('available').textContent = `${formatCredits(wallet.available)} credits`;
    $('held').textContent = `${formatCredits(wallet.held)} credits`;
    const pill = $('status-pill');
    const status = {
      active: ['AI features active', 'active'],
      paused_daily_cap: ['Paused: daily cap reached', 'paused'],
      paused_no_credits: ['Paused: no credits', 'empty'],
    }[wallet.status] ?? [wallet.status, ''];
    pill.textContent = status[0];
    pill.className = `pill ${status[1]}`;

    $('spent-today').textContent = formatCredits(wallet.spent_today);
    $('daily-cap').textContent = formatCredits(wallet.daily_cap);
    const capUnits = toUnits(wallet.daily_cap);
    const usedUnits = capUnits - toUnits(wallet.cap_remaining); // spent plus held today
    const pct = percentOf(fromUnits(usedUnits), wallet.daily_cap);
    const bar = $('cap-bar');
    bar.setAttribute('aria-valuenow', String(pct));
    bar.setAttribute('aria-valuetext', `${pct}% of today's cap used`);
    bar.classList.toggle('full', wallet.status === 'paused_daily_cap');
    $('cap-bar-fill').style.width = `${pct}%`;
    const held = toUnits(wallet.held_today) > 0n ? ` ${formatCredits(wallet.held_today)} more are held by running AI calls.` : '';
    $('cap-reset').textContent = `Resets at 00:00 UTC, which is ${formatLocalTime(wallet.resets_at)} in your time zone.${held}`;
    $('cap-form').hidden = !mayEditCap;
    $('cap-readonly').hidden = mayEditCap;
    if (mayEditCap) {
      $('cap-hint').textContent = `More than 0 and at most ${formatCredits(wallet.daily_cap_max)} credits. ` +
        `New organizations start at ${formatCredits(wallet.daily_cap_default)}.`;
      const input = $('cap-input');
      if (!isEditing(input)) input.value = wallet.daily_cap;
    }
    renderBanner();
  }

  function renderBanner() {
    const banner = $('banner');
    banner.replaceChildren();
    banner.className = 'banner';
    if (wallet.status === 'paused_daily_cap') {
      const resumes = wallet.resumes_at ?? wallet.resets_at;
      addText(banner, 'strong', 'AI features are paused until tomorrow.');
      addText(banner, 'span', `Today's spend cap of ${formatCredits(wallet.daily_cap)} credits is reached. ` +
        `AI features resume at 00:00 UTC (${formatLocalTime(resumes)} your time).` +
        (mayEditCap ? ' You can raise the daily cap on the Wallet tab.' : ''));
      banner.dataset.state = 'paused_daily_cap';
    } else if (wallet.status === 'paused_no_credits') {
      banner.classList.add('empty');
      addText(banner, 'strong', 'AI features are paused: the wallet is out of credits.');
      if (mayBuy) {
        addText(banner, 'span', 'Buy a credit pack to resume them right away. ');
        const go = document.createElement('button');
        go.type = 'button';
        go.className = 'button-primary';
        go.textContent = 'Buy credits';
        go.addEventListener('click', () => {
          $('tab-wallet').click();
          $('packs-title').scrollIntoView({ block: 'start' });
          document.querySelector('#packs button:not(:disabled)')?.focus();
        });
        banner.append(go);
      } else {
        addText(banner, 'span', 'Only the team owner can buy credits: contact your team owner to top up the wallet.');
      }
      banner.dataset.state = 'paused_no_credits';
    } else {
      delete banner.dataset.state;
    }
    banner.hidden = !banner.dataset.state;
  }

  /** Shows a wallet view the API answered (a GET or a settings change). */
  function apply(view) {
    wallet = view;
    renderWallet();
    for (const listener of listeners) listener(wallet);
  }

  async function refresh() {
    refreshing ??= (async () => {
      try {
        apply(await call('GET', orgPath(org, 'wallet')));
      } catch (err) {
        showError($('wallet-error'), err.code === 'wallet_not_found'
          ? `No wallet exists for organization ${org} yet. Wallets are created when an organization signs up` +
            ' (in development, make demo-data creates one).'
          : `The wallet could not be loaded: ${err.message}`);
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  // ---- daily cap ----------------------------------------------------------------

  function setCapMessage(text, kind) {
    showMessage($('cap-message'), text, kind, $('cap-input'));
  }

  $('cap-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!wallet) return;
    const value = $('cap-input').value.trim();
    const problem = creditAmountProblem(value, wallet.daily_cap_max);
    if (problem) {
      setCapMessage(`Not saved: ${problem}`, 'error');
      $('cap-input').focus();
      return;
    }
    const button = event.submitter ?? $('cap-form').querySelector('button');
    button.disabled = true;
    try {
      apply(await call('PUT', orgPath(org, 'daily-cap'), { body: { daily_cap: value } }));
      setCapMessage(`Saved: the daily cap is now ${formatCredits(wallet.daily_cap)} credits.`, 'ok');
    } catch (err) {
      setCapMessage(`Not saved: ${err.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  });
  $('cap-input').addEventListener('input', () => {
    if ($('cap-input').getAttribute('aria-invalid') === 'true') setCapMessage('', null);
  });

  // ---- credit packs and buying ---------------------------------------------------

  async function loadCatalogue() {
    catalogueLoaded = true;
    const [packsResult, methodResult] = await Promise.allSettled([
      packCatalogue(),
      call('GET', orgPath(org, 'payment-method')),
    ]);
    if (packsResult.status === 'fulfilled' && Array.isArray(packsResult.value)) {
      packs = packsResult.value;
    } else {
      packs = null;
      const err = packsResult.reason;
      showError($('packs-error'), err?.status === 404
        ? 'Credit packs are not offered by this server yet.'
        : `Credit packs could not be loaded: ${err?.message ?? 'unexpected answer'}`);
    }
    paymentMethodLoaded(methodResult);
  }

  /** Keeps the payment method (or why it is unknown) and shows it; after 429 rate_limited, asks again when allowed. */
  function paymentMethodLoaded(result) {
    cancelMethodRetry?.();
    cancelMethodRetry = null;
    paymentMethod = result.status === 'fulfilled' ? result.value : { error: result.reason };
    if (isRateLimited(paymentMethod.error)) {
      cancelMethodRetry = retryWhenAllowed(paymentMethod.error, (text) => {
        paymentMethod.waiting = text;
        renderPacks();
      }, async () => {
        cancelMethodRetry = null;
        const [again] = await Promise.allSettled([call('GET', orgPath(org, 'payment-method'))]);
        paymentMethodLoaded(again);
      });
      return;
    }
    renderPacks();
  }

  function buyBlockedReason() {
    if (!mayBuy) return 'Only the team owner can buy credits. Ask your team owner to top up the wallet.';
    if (paymentMethod?.waiting) return `The payment method could not be checked yet. ${paymentMethod.waiting}`;
    if (paymentMethod?.error) {
      return paymentMethod.error.status === 404
        ? 'Payments are not available on this server yet.'
        : `The payment method could not be checked: ${paymentMethod.error.message}`;
    }
    if (!paymentMethod?.has_payment_method) {
      return 'No payment method is on file. Add a card in your Lognitor billing settings, then buy credits here.';
    }
    return null;
  }

  function renderPacks() {
    const method = $('payment-method');
    if (paymentMethod && paymentMethod.has_payment_method) {
      const brand = paymentMethod.brand ? paymentMethod.brand[0].toUpperCase() + paymentMethod.brand.slice(1) : 'Card';
      method.textContent = `Pays with ${brand}${paymentMethod.last4 ? ` ending in ${paymentMethod.last4}` : ''}.`;
    } else {
      method.textContent = '';
    }
    method.hidden = !method.textContent;
    const reason = buyBlockedReason();
    $('buy-reason').textContent = reason ?? '';
    // Without a catalogue an owner reads the packs error; others still learn who may buy.
    $('buy-reason').hidden = !reason || (!packs && mayBuy);
    const list = $('packs');
    list.replaceChildren();
    if (!packs) return;
    const base = packs[0];
    const bonuses = packs.map((p) => bonusPercent(p, base));
    const best = Math.max(...bonuses.filter((b) => b !== null));
    packs.forEach((pack, i) => {
      const item = document.createElement('li');
      item.className = 'pack';
      const head = document.createElement('div');
      head.className = 'pack-head';
      addText(head, 'h3', pack.name);
      if (best > 0 && bonuses[i] === best) addText(head, 'span', 'Best value').className = 'badge';
      item.append(head);
      addText(item, 'span', `${formatCredits(pack.credits)} credits`).className = 'credits';
      addText(item, 'span', formatMoney(pack.price_cents, pack.currency)).className = 'price';
      const value = [`${pricePerCredit(pack)} per credit`];
      if (bonuses[i] > 0) value.push(`${bonuses[i]}% more per dollar than ${base.name}`);
      addText(item, 'span', value.join(' · ')).className = 'value';
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'button-primary';
      button.textContent = `Buy ${pack.name}`;
      button.dataset.packId = pack.id;
      button.disabled = reason !== null;
      if (reason) button.setAttribute('aria-describedby', 'buy-reason');
      button.addEventListener('click', () => openBuyDialog(pack));
      item.append(button);
      list.append(item);
    });
  }

  let pending = null; // {pack, key}: one Idempotency-Key per confirmation, reused on retry

  function openBuyDialog(pack) {
    pending = { pack, key: crypto.randomUUID() };
    const card = paymentMethod?.last4 ? ` to the card ending in ${paymentMethod.last4}` : '';
    $('buy-summary').textContent = `${pack.name}: ${formatCredits(pack.credits)} credits for ` +
      `${formatMoney(pack.price_cents, pack.currency)}, charged now${card}.`;
    $('buy-error').hidden = true;
    $('buy-confirm').disabled = false;
    $('buy-dialog').showModal();
  }

  function setPurchaseStatus(text, kind) {
    showMessage($('purchase-status'), text, kind);
  }

  $('buy-confirm').addEventListener('click', async () => {
    if (!pending) return;
    const { pack, key } = pending;
    $('buy-confirm').disabled = true;
    try {
      const purchase = await call('POST', orgPath(org, 'purchases'), {
        body: { pack_id: pack.id },
        headers: { 'idempotency-key': key },
      });
      pending = null;
      $('buy-dialog').close();
      await followPurchase(purchase, pack);
    } catch (err) {
      $('buy-confirm').disabled = false;
      showError($('buy-error'), err.code === 'payment_method_required'
        ? 'No payment method is on file. Add a card in your Lognitor billing settings first.'
        : err.status === 0
          ? `${err.message} Pressing Buy now again is safe: you will not be charged twice.`
          : err.message);
    }
  });
  $('buy-dialog').addEventListener('close', () => {
    pending = null;
  });

  /** Waits (until `deadline`) for the Transactions tab's first page to list entry `id`. */
  async function transactionListed(id, deadline) {
    while (Date.now() < deadline) {
      try {
        const page = await call('GET', `${orgPath(org, 'transactions')}?limit=5`);
        if (page.data.some((tx) => tx.id === id)) return;
      } catch {
        // keep waiting
      }
      await new Promise((resolve) => setTimeout(resolve, CREDIT_POLL_MS));
    }
  }

  /** Tells the buyer what happened and waits for the credits to reach the ledger. */
  async function followPurchase(purchase, pack) {
    const amount = `${formatCredits(purchase.credits ?? pack.credits)} credits`;
    if (purchase.status === 'failed') {
      return setPurchaseStatus('The payment failed and no credits were added. Try another card in your Lognitor billing settings.', 'error');
    }
    if (purchase.status === 'canceled') {
      // Only automatic top-ups are canceled (before their charge was sent), but say it plainly if one shows here.
      return setPurchaseStatus('The purchase was canceled before anything was charged; no credits were added.', 'error');
    }
    if (purchase.status === 'requires_action') {
      return setPurchaseStatus('Your card issuer asks for extra authentication, which this page cannot complete. ' +
        'No credits were added; use another card or complete the payment in Lognitor billing.', 'error');
    }
    setPurchaseStatus(purchase.status === 'processing'
      ? `Payment processing. ${amount} will be added as soon as it completes…`
      : `Payment succeeded. Adding ${amount}…`);
    const deadline = Date.now() + CREDIT_WAIT_MS;
    while (Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, CREDIT_POLL_MS));
      try {
        // The owner reads the ledger: the purchase's entry names its PaymentIntent.
        const page = await call('GET', `${orgPath(org, 'ledger')}?limit=20`);
        const credited = page.data.find((e) => e.kind === 'purchase' &&
          (e.payment_intent_id === purchase.payment_intent_id || e.purchase_id === purchase.id));
        if (credited) {
          // Transactions come from the organization's D1 shard, a few seconds
          // behind the ledger: say "added" once that tab lists the purchase too.
          await transactionListed(credited.id, deadline);
          await refresh();
          for (const listener of creditListeners) listener();
          return setPurchaseStatus(`${amount} added. Balance: ${formatCredits(wallet.balance)} credits.`, 'ok');
        }
      } catch {
        // keep waiting; the final message says what to do
      }
    }
    setPurchaseStatus(`The payment went through, but the ${amount} have not appeared yet. They will show up shortly; refresh in a minute.`);
  }

  // ---- lifecycle -------------------------------------------------------------------

  setInterval(() => {
    if (document.visibilityState === 'visible' && wallet) refresh();
  }, REFRESH_MS);

  return {
    show() {
      refresh();
      if (!catalogueLoaded) loadCatalogue();
    },
    refresh,
    apply,
    /** Called with each fresh wallet view. */
    onWallet(listener) {
      listeners.add(listener);
    },
    /** Called when a purchase's credits reached the ledger. */
    onCredited(listener) {
      creditListeners.add(listener);
    },
  };
}
