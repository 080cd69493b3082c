// The low-balance alert: its threshold on the Wallet tab (the owner changes
// it, others read it) and the banner every role sees while available credits
// are under it. The server says whether they are (`low_balance`); the page
// asks again with each fresh wallet view, so the banner follows the figures.
import { call, orgPath } from './api.js';
import { $, isEditing, showError, showMessage } from './dom.js';
import { formatCredits } from './format.js';
import { canBuy, canChangeSettings } from './roles.js';

export function createAlertsView(session, walletView) {
  const mayEdit = canChangeSettings(session.role);
  const org = session.org;
  let alerts = null;
  let wallet = null;
  let refreshing = null;

  $('alerts-form').hidden = !mayEdit;
  $('alerts-readonly').hidden = mayEdit;

  function render() {
    $('alerts-error').hidden = true;
    const threshold = alerts.low_balance_threshold;
    $('alerts-current').textContent = threshold === null
      ? 'No alert is set'
      : `Alert below ${formatCredits(threshold)} credits`;
    if (mayEdit) {
      const input = $('alerts-input');
      if (!isEditing(input)) input.value = threshold ?? '';
    }
    renderBanner();
  }

  function renderBanner() {
    const banner = $('low-balance-banner');
    // An empty wallet has its own banner (AI features paused), which says more.
    const show = Boolean(alerts?.low_balance && wallet && wallet.status !== 'paused_no_credits');
    banner.replaceChildren();
    if (show) {
      const title = document.createElement('strong');
      title.textContent = 'Credits are running low.';
      const text = document.createElement('span');
      text.textContent = `Available: ${formatCredits(wallet.available)} credits, under the alert threshold of ` +
        `${formatCredits(alerts.low_balance_threshold)} credits. ` +
        (canBuy(session.role)
          ? 'Buy a credit pack or turn on automatic top-up on the Wallet tab.'
          : 'Ask your team owner to top up the wallet.');
      banner.append(title, text);
      banner.dataset.state = 'low_balance';
    } else {
      delete banner.dataset.state;
    }
    banner.hidden = !show;
  }

  async function refresh() {
    refreshing ??= (async () => {
      try {
        alerts = await call('GET', orgPath(org, 'alerts'));
        render();
      } catch (err) {
        showError($('alerts-error'), `The low-balance alert could not be loaded: ${err.message}`);
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  function setMessage(text, kind) {
    showMessage($('alerts-message'), text, kind, $('alerts-input'));
  }

  if (mayEdit) {
    $('alerts-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const value = $('alerts-input').value.trim();
      const button = event.submitter ?? $('alerts-form').querySelector('button');
      button.disabled = true;
      try {
        // Empty turns the alert off; the server checks the amount.
        alerts = await call('PUT', orgPath(org, 'alerts'), { body: { low_balance_threshold: value === '' ? null : value } });
        setMessage(alerts.low_balance_threshold === null
          ? 'Saved: the low-balance alert is off.'
          : `Saved: the alert shows below ${formatCredits(alerts.low_balance_threshold)} credits.`, 'ok');
        render();
        walletView.refresh(); // fresh figures for the banner; the change is a new event too
      } catch (err) {
        setMessage(`Not saved: ${err.message}`, 'error');
        $('alerts-input').focus();
      } finally {
        button.disabled = false;
      }
    });
    $('alerts-input').addEventListener('input', () => {
      if ($('alerts-input').getAttribute('aria-invalid') === 'true') setMessage('', null);
    });
  }

  walletView.onWallet((view) => {
    wallet = view;
    renderBanner(); // the wallet's status now, then the server's low_balance
    refresh();
  });
}
