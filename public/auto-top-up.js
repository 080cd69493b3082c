// Automatic top-up on the Wallet tab: whether it is on (and why not), the
// threshold, the pack it buys, the monthly limit and this month's use, and a
// charge in progress. The owner changes it; every other role reads it. It is
// read again with each fresh wallet view, so a top-up started by a debit shows.
import { call, orgPath, packCatalogue } from './api.js';
import { $, showError, showMessage } from './dom.js';
import { formatCredits, formatMoney } from './format.js';
import { canChangeSettings } from './roles.js';

const FIELDS = ['enabled', 'threshold', 'pack_id', 'monthly_limit'];
const INPUTS = { enabled: 'atu-enabled-input', threshold: 'atu-threshold-input', pack_id: 'atu-pack-input', monthly_limit: 'atu-limit-input' };

/** Why automatic top-up is not buying, as people read it (the API's disabled_reason). */
export const DISABLED_REASONS = {
  payment_failed: 'the last automatic charge was declined; enable it again to retry',
  payment_method_required: 'no payment method on file',
  monthly_limit_reached: "paused: this month's limit is used; resumes on the 1st (UTC)",
  payment_disputed: 'a payment was disputed with the bank; enable it again to resume',
};

/** What the owner can do about a reason, after it. */
const OWNER_NEXT_STEP = {
  payment_method_required: ' Add a card in your Lognitor billing settings, then enable it again.',
  payment_disputed: ' Check the card on file in your Lognitor billing settings first.',
};

export const reasonText = (reason) => DISABLED_REASONS[reason] ?? String(reason).replaceAll('_', ' ');

const topUps = (n) => `${n} top-up${n === 1 ? '' : 's'}`;

/** "December 2026" for the API's "2026-12", read as UTC so it never shifts a month. */
function monthName(month) {
  const at = new Date(`${month}-01T00:00:00Z`);
  if (Number.isNaN(at.getTime())) return month;
  return new Intl.DateTimeFormat(undefined, { month: 'long', year: 'numeric', timeZone: 'UTC' }).format(at);
}

export function createAutoTopUpView(session, walletView) {
  const mayEdit = canChangeSettings(session.role);
  const org = session.org;
  let state = null;
  let packs = null; // the catalogue, or null until (or unless) it loaded
  let refreshing = null;
  let dirty = false; // the owner changed the form since it was last filled: refreshes leave it alone

  $('atu-form').hidden = !mayEdit;
  $('atu-readonly').hidden = mayEdit;

  const packOf = (id) => packs?.find((p) => p.id === id);
  const packLabel = (id) => {
    const pack = packOf(id);
    return pack ? `${pack.name}: ${formatCredits(pack.credits)} credits for ${formatMoney(pack.price_cents, pack.currency)}` : id;
  };

  function render() {
    $('atu-error').hidden = true;
    const reason = state.disabled_reason;
    const [label, kind] = reason === 'monthly_limit_reached'
      ? ['Paused', 'paused']
      : state.enabled && !reason ? ['On', 'active'] : ['Off', ''];
    const pill = $('atu-state');
    pill.textContent = label;
    pill.className = `pill ${kind}`;
    const notice = $('atu-reason');
    if (reason) {
      const text = reasonText(reason);
      // The monthly pause says "paused:" itself; the other reasons switched it off.
      notice.textContent = reason === 'monthly_limit_reached'
        ? `${text[0].toUpperCase()}${text.slice(1)}.`
        : `Off: ${text}.${mayEdit ? (OWNER_NEXT_STEP[reason] ?? '') : ''}`;
    }
    notice.hidden = !reason;
    $('atu-threshold').textContent = state.threshold === null ? 'Not set' : `Below ${formatCredits(state.threshold)} credits`;
    $('atu-pack').textContent = state.pack_id === null ? 'Not chosen' : packLabel(state.pack_id);
    $('atu-limit').textContent = `${topUps(state.monthly_limit)} a month`;
    $('atu-used').textContent = `${state.used_this_month} of ${state.monthly_limit} in ${monthName(state.month)} (UTC)`;
    $('atu-in-flight').textContent = state.in_flight ? 'Yes: a charge is under way' : 'No';
    if (mayEdit && !dirty) fillForm();
  }

  function fillForm() {
    const select = $('atu-pack-input');
    const options = [['', 'Choose a pack'], ...(packs ?? []).map((p) => [p.id, packLabel(p.id)])];
    // A pack the catalogue no longer lists stays selectable as it is.
    if (state.pack_id !== null && !packOf(state.pack_id)) options.push([state.pack_id, state.pack_id]);
    select.replaceChildren(...options.map(([value, text]) => new Option(text, value)));
    select.value = state.pack_id ?? '';
    $('atu-enabled-input').checked = state.enabled;
    $('atu-threshold-input').value = state.threshold ?? '';
    $('atu-limit-input').value = String(state.monthly_limit);
  }

  async function refresh() {
    refreshing ??= (async () => {
      try {
        if (!packs) packs = await packCatalogue().catch(() => null); // without it packs show by id
        state = await call('GET', orgPath(org, 'auto-top-up'));
        render();
      } catch (err) {
        showError($('atu-error'), err.status === 404 && err.code !== 'wallet_not_found'
          ? 'Automatic top-up is not available on this server yet.'
          : `Automatic top-up could not be loaded: ${err.message}`);
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  // ---- the owner's form ----------------------------------------------------------

  function setMessage(field, text, kind) {
    // The form's own line (no field) marks no input.
    showMessage($(field ? `atu-${field}-message` : 'atu-message'), text, kind, field ? $(INPUTS[field]) : null);
  }

  function clearMessages() {
    setMessage(null, '', null);
    for (const field of FIELDS) setMessage(field, '', null);
  }

  if (mayEdit) {
    const form = $('atu-form');
    form.addEventListener('input', (event) => {
      dirty = true;
      const field = Object.keys(INPUTS).find((f) => INPUTS[f] === event.target.id);
      if (field && event.target.getAttribute('aria-invalid') === 'true') setMessage(field, '', null);
    });
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearMessages();
      // The page checks only what it needs to build the request; the server checks the amounts.
      const limit = $('atu-limit-input').value.trim();
      if (!/^\d{1,3}$/.test(limit) || Number(limit) < 1 || Number(limit) > 100) {
        setMessage('monthly_limit', 'Not saved: enter a whole number of top-ups from 1 to 100.', 'error');
        $('atu-limit-input').focus();
        return;
      }
      const body = { enabled: $('atu-enabled-input').checked, monthly_limit: Number(limit) };
      const threshold = $('atu-threshold-input').value.trim();
      if (threshold !== '') body.threshold = threshold;
      const pack = $('atu-pack-input').value;
      if (pack !== '') body.pack_id = pack;
      const button = event.submitter ?? form.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        state = await call('PUT', orgPath(org, 'auto-top-up'), { body });
        dirty = false;
        render();
        // The answer already shows a top-up this very change started (available was under the threshold).
        const charging = state.in_flight ? ' A top-up is being charged now.' : '';
        setMessage(null, state.enabled
          ? `Saved: when available credits fall below ${formatCredits(state.threshold)} credits, ${packOf(state.pack_id)?.name ?? state.pack_id} ` +
            `is bought automatically, at most ${topUps(state.monthly_limit)} a month.${charging}`
          : 'Saved: automatic top-up is off.', 'ok');
        walletView.refresh(); // turning it on below the threshold may start a top-up at once
      } catch (err) {
        if (err.status === 422 && FIELDS.includes(err.field)) {
          setMessage(err.field, `Not saved: ${err.message}`, 'error');
          $(INPUTS[err.field]).focus();
        } else if (err.code === 'payment_method_required') {
          setMessage('enabled', 'Not saved: no payment method is on file. Add a card in your Lognitor billing settings, ' +
            'then turn automatic top-up on.', 'error');
          $('atu-enabled-input').focus();
        } else {
          setMessage(null, `Not saved: ${err.message}`, 'error');
        }
      } finally {
        button.disabled = false;
      }
    });
  }

  walletView.onWallet(() => refresh());
}
