// The Audit tab (owner and admin): every settings change with who made it,
// when, and the values before and after, paged with the API's cursor, and
// the CSV export of the whole trail. The words for a change are shared with
// the events list (a settings.changed event carries the same record).
import { call, downloadFile, orgPath, packCatalogue } from './api.js';
import { featureName, formatCredits, formatDateTime } from './format.js';

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 25;
export const ROLE_NAMES = { owner: 'Owner', admin: 'Admin', member: 'Member', viewer: 'Viewer', service: 'Service' };
const SETTING_NAMES = {
  daily_cap: 'Daily spend cap',
  feature_caps: 'Feature caps',
  auto_top_up: 'Automatic top-up',
  alerts: 'Low-balance alert',
};
const LABELS = ['When', 'Who', 'Setting', 'Change'];

const capText = (value) => (value === null || value === undefined ? 'no cap' : `${formatCredits(value)} credits`);
const isObject = (value) => value !== null && typeof value === 'object';

/** The setting as people read it; one this page does not know is spelled out. */
export const settingName = (setting) => SETTING_NAMES[setting] ?? String(setting).replaceAll('_', ' ');

// Automatic top-up's fields, in the order the panel shows them, and their values in words.
const TOP_UP_FIELDS = {
  enabled: ['Automatic top-up', (v) => (v ? 'on' : 'off')],
  threshold: ['Threshold', (v) => (v === null || v === undefined ? 'not set' : `below ${formatCredits(v)} credits`)],
  pack_id: ['Pack', (v, packName) => (v === null || v === undefined ? 'none' : packName(v))],
  monthly_limit: ['Monthly limit', (v) => (v === null || v === undefined ? 'none' : `${v} a month`)],
};

/** The lines that say what a record changed, as people read them. `packName` names a pack id. */
export function describeChange(record, packName = (id) => id) {
  const { setting, before, after } = record;
  if (setting === 'daily_cap') return [`${capText(before)} → ${capText(after)}`];
  if (setting === 'feature_caps' && isObject(before) && isObject(after)) {
    const features = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    const lines = features
      .filter((f) => before[f] !== after[f])
      .map((f) => `${featureName(f)}: ${capText(before[f])} → ${capText(after[f])}`);
    return lines.length ? lines : ['no change'];
  }
  if (setting === 'alerts') {
    // The threshold itself, or the alerts object that holds it.
    const threshold = (v) => (isObject(v) ? v.low_balance_threshold : v);
    const text = (v) => (v === null || v === undefined ? 'no alert' : `below ${formatCredits(v)} credits`);
    return [`${text(threshold(before))} → ${text(threshold(after))}`];
  }
  if (setting === 'auto_top_up' && isObject(before) && isObject(after)) {
    const lines = Object.entries(TOP_UP_FIELDS)
      .filter(([field]) => JSON.stringify(before[field] ?? null) !== JSON.stringify(after[field] ?? null))
      .map(([field, [name, text]]) => `${name}: ${text(before[field], packName)} → ${text(after[field], packName)}`);
    return lines.length ? lines : ['no change'];
  }
  // A setting this page does not know yet: its values as the API wrote them.
  return [`${JSON.stringify(before)} → ${JSON.stringify(after)}`];
}

export function createAuditView(session) {
  const org = session.org;
  let cursors = [undefined]; // as on the Transactions tab: the last is the current page
  let loading = false;
  let packNames = null;

  function cell(row, className) {
    const td = document.createElement('td');
    td.dataset.label = LABELS[row.cells.length]; // shown on phones, where rows stack
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function render(page) {
    const body = $('audit-body');
    body.replaceChildren();
    for (const record of page.data) {
      const row = document.createElement('tr');
      row.dataset.id = record.id;
      const when = document.createElement('time');
      when.dateTime = record.created_at;
      when.textContent = formatDateTime(record.created_at);
      cell(row).append(when);
      cell(row).textContent = `${record.sub} (${ROLE_NAMES[record.role] ?? record.role})`;
      cell(row).textContent = settingName(record.setting);
      // One wrapper, so the phone layout keeps the lines under each other beside their label.
      const lines = document.createElement('div');
      lines.className = 'change-lines';
      for (const line of describeChange(record, (id) => packNames?.[id] ?? id)) {
        const div = document.createElement('div');
        div.textContent = line;
        lines.append(div);
      }
      cell(row, 'change').append(lines);
      body.append(row);
    }
    $('audit-empty').hidden = page.data.length > 0 || cursors.length > 1;
    $('audit-newer').disabled = cursors.length <= 1;
    $('audit-older').disabled = !page.has_more;
    $('audit-older').dataset.cursor = page.data.at(-1)?.id ?? '';
    $('audit-page').textContent = page.data.length ? `Page ${cursors.length}` : '';
  }

  async function load() {
    if (loading) return;
    loading = true;
    $('audit-error').hidden = true;
    try {
      // Automatic top-up changes name packs; without the catalogue they show by id.
      packNames ??= Object.fromEntries((await packCatalogue().catch(() => [])).map((p) => [p.id, p.name]));
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      const cursor = cursors.at(-1);
      if (cursor) query.set('starting_after', cursor);
      render(await call('GET', `${orgPath(org, 'audit')}?${query}`));
    } catch (err) {
      $('audit-error').textContent = `Settings changes could not be loaded: ${err.message}`;
      $('audit-error').hidden = false;
    } finally {
      loading = false;
    }
  }

  $('audit-older').addEventListener('click', () => {
    const cursor = $('audit-older').dataset.cursor;
    if (!cursor) return;
    cursors.push(cursor);
    load();
  });
  $('audit-newer').addEventListener('click', () => {
    if (cursors.length > 1) cursors.pop();
    load();
  });

  $('audit-csv-download').addEventListener('click', async () => {
    const button = $('audit-csv-download');
    const status = $('audit-csv-status');
    button.disabled = true;
    status.className = 'message';
    status.textContent = 'Preparing the CSV file…';
    try {
      const name = await downloadFile(`${orgPath(org, 'audit')}?format=csv`, `audit-${org}.csv`);
      status.textContent = `Downloaded ${name}.`;
      status.className = 'message ok';
    } catch (err) {
      status.textContent = `The CSV file could not be downloaded: ${err.message}`;
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
