// Feature caps on the Wallet tab: each AI feature's own daily cap with
// today's use (spent + held) and what remains. The owner sets, changes and
// removes caps; every other role reads them. Figures come from the wallet
// view, so they refresh with it.
import { call, orgPath } from './api.js';
import {
  creditAmountProblem, FEATURE_IDS, featureName, formatCredits, fromUnits, percentOf, toUnits,
} from './format.js';
import { $, addText, isEditing, showMessage } from './dom.js';
import { canChangeSettings } from './roles.js';

export function createFeatureCapsView(session, walletView) {
  const mayEdit = canChangeSettings(session.role);
  const org = session.org;
  const rows = new Map(); // feature → its elements, built once so messages survive refreshes
  let wallet = null;

  $('feature-caps-readonly').hidden = mayEdit;

  function buildRow(feature) {
    const name = featureName(feature);
    const item = document.createElement('li');
    item.className = 'feature-cap';
    item.dataset.feature = feature;
    const headId = `fcap-${feature}-name`;
    addText(item, 'h3', name).id = headId;
    const summary = addText(item, 'p', '', 'feature-cap-summary');
    summary.id = `fcap-${feature}-summary`;
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.setAttribute('role', 'progressbar');
    bar.setAttribute('aria-label', `${name}: share of its cap used today`);
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', '100');
    const fill = document.createElement('div');
    fill.className = 'bar-fill';
    bar.append(fill);
    item.append(bar);
    const row = { item, summary, bar, fill };

    if (mayEdit) {
      const form = document.createElement('form');
      form.noValidate = true;
      form.className = 'feature-cap-form';
      const inputId = `fcap-${feature}-input`;
      const label = addText(form, 'label', `${name} cap (credits)`);
      label.htmlFor = inputId;
      const line = document.createElement('div');
      line.className = 'input-row';
      const input = document.createElement('input');
      input.id = inputId;
      input.name = feature;
      input.inputMode = 'decimal';
      input.autocomplete = 'off';
      input.spellcheck = false;
      input.placeholder = 'No cap';
      const message = document.createElement('p');
      message.id = `fcap-${feature}-message`;
      message.className = 'message';
      message.setAttribute('aria-live', 'polite');
      input.setAttribute('aria-describedby', `${summary.id} ${message.id}`);
      const save = addText(line, 'button', 'Save', 'button-primary');
      save.type = 'submit';
      save.setAttribute('aria-label', `Save ${name} cap`);
      const remove = addText(line, 'button', 'Remove', 'button-secondary');
      remove.type = 'button';
      remove.setAttribute('aria-label', `Remove ${name} cap`);
      line.prepend(input);
      form.append(line, message);
      item.append(form);
      Object.assign(row, { form, input, message, save, remove });

      form.addEventListener('submit', (event) => {
        event.preventDefault();
        const value = input.value.trim();
        const problem = capProblem(value, !row.remove.hidden);
        if (problem) {
          setMessage(row, `Not saved: ${problem}`, 'error');
          input.focus();
          return;
        }
        change(feature, value, row);
      });
      remove.addEventListener('click', () => change(feature, null, row));
      input.addEventListener('input', () => {
        if (input.getAttribute('aria-invalid') === 'true') setMessage(row, '', null);
      });
    }
    $('feature-caps').append(item);
    rows.set(feature, row);
    return row;
  }

  /** The page's check before asking the server: a credit amount up to the organization's daily cap. */
  function capProblem(value, capped) {
    if (value === '') return capped ? 'Enter a cap in credits, or press Remove to lift it.' : 'Enter a cap in credits.';
    const problem = creditAmountProblem(value, null);
    if (problem) return problem;
    if (toUnits(value) > toUnits(wallet.daily_cap)) {
      return `A feature's cap can be at most the daily spend cap, ${formatCredits(wallet.daily_cap)} credits.`;
    }
    return null;
  }

  function setMessage(row, text, kind) {
    showMessage(row.message, text, kind, row.input);
  }

  async function change(feature, cap, row) {
    let removed = false;
    row.save.disabled = true;
    row.remove.disabled = true;
    try {
      walletView.apply(await call('PUT', orgPath(org, 'feature-caps'), { body: { caps: { [feature]: cap } } }));
      setMessage(row, cap === null
        ? `Removed: ${featureName(feature)} has no cap of its own now.`
        : `Saved: ${featureName(feature)} is capped at ${formatCredits(cap)} credits a day.`, 'ok');
      if (cap === null) row.input.value = '';
      removed = cap === null;
    } catch (err) {
      // The server names the refused cap as caps.<feature>; show it on that feature's field.
      const target = rows.get(/^caps\.(.+)$/.exec(err.field ?? '')?.[1]) ?? row;
      // A refusal may mean the page's figures are old (the daily cap changed elsewhere).
      if (err.status === 422) walletView.refresh();
      if (target.input) {
        setMessage(target, `Not saved: ${err.message}`, 'error');
        target.input.focus();
      }
    } finally {
      row.save.disabled = false;
      render(wallet);
      // The Remove button disappears with the cap; keep the keyboard on this feature.
      if (removed) row.input.focus();
    }
  }

  function render(view) {
    if (!view) return;
    wallet = view;
    const caps = new Map((view.feature_caps ?? []).map((c) => [c.feature, c]));
    // Configured features first, then any capped feature this page has no name for.
    const features = [...FEATURE_IDS, ...[...caps.keys()].filter((f) => !FEATURE_IDS.includes(f))];
    const orgRemaining = toUnits(view.cap_remaining);
    for (const feature of features) {
      const row = rows.get(feature) ?? buildRow(feature);
      const cap = caps.get(feature);
      row.item.classList.toggle('capped', Boolean(cap));
      row.bar.hidden = !cap;
      if (cap) {
        const usedUnits = toUnits(cap.spent_today) + toUnits(cap.held_today);
        const held = toUnits(cap.held_today) > 0n ? ` (${formatCredits(cap.held_today)} held by running AI calls)` : '';
        const lower = orgRemaining < toUnits(cap.cap_remaining)
          ? ` The daily spend cap leaves only ${formatCredits(view.cap_remaining)} today.`
          : '';
        row.summary.textContent = `Cap ${formatCredits(cap.daily_cap)} credits a day · ` +
          `${formatCredits(fromUnits(usedUnits))} used today${held} · ${formatCredits(cap.cap_remaining)} remaining.${lower}`;
        const pct = percentOf(fromUnits(usedUnits), cap.daily_cap);
        row.bar.setAttribute('aria-valuenow', String(pct));
        row.bar.setAttribute('aria-valuetext', `${pct}% of the ${featureName(feature)} cap used today`);
        row.bar.classList.toggle('full', toUnits(cap.cap_remaining) === 0n);
        row.fill.style.width = `${pct}%`;
      } else {
        row.summary.textContent = 'No cap of its own: only the daily spend cap applies.';
      }
      if (row.input) {
        row.remove.hidden = !cap;
        row.remove.disabled = false;
        if (!isEditing(row.input)) row.input.value = cap?.daily_cap ?? '';
      }
    }
  }

  walletView.onWallet(render);
}
