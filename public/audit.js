// The Audit tab (owner and admin): every settings change with who made it,
// when, and the values before and after, paged with the API's cursor, and
// the CSV export of the whole trail. The words for a change are shared with
// the events list (a settings.changed event carries the same record).
import { orgPath, packNamesById } from './api.js';
import { setupCsvDownload } from './csv-download.js';
import { $, labelledCell, localTime, showError } from './dom.js';
import { featureName, formatCredits } from './format.js';
import { createPager, fetchPage } from './pager.js';
import { roleName } from './roles.js';

const PAGE_SIZE = 25;
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
  let loading = false;
  let packNames = null;
  const pager = createPager({
    newer: $('audit-newer'),
    older: $('audit-older'),
    pageNumber: $('audit-page'),
    empty: $('audit-empty'),
    load,
  });

  const cell = (row, className) => labelledCell(row, LABELS, className);

  function render(page) {
    const body = $('audit-body');
    body.replaceChildren();
    for (const record of page.data) {
      const row = document.createElement('tr');
      row.dataset.id = record.id;
      cell(row).append(localTime(record.created_at));
      cell(row).textContent = `${record.sub} (${roleName(record.role)})`;
      cell(row).textContent = settingName(record.setting);
      // One wrapper, so the phone layout keeps the lines under each other beside their label.
      const lines = document.createElement('div');
      lines.className = 'change-lines';
      for (const line of describeChange(record, (id) => packNames[id] ?? id)) {
        const div = document.createElement('div');
        div.textContent = line;
        lines.append(div);
      }
      cell(row, 'change').append(lines);
      body.append(row);
    }
    pager.shown(page);
  }

  async function load() {
    if (loading) return;
    loading = true;
    $('audit-error').hidden = true;
    try {
      // Automatic top-up changes name packs; without the catalogue they show by id.
      packNames ??= await packNamesById();
      render(await fetchPage(orgPath(org, 'audit'), PAGE_SIZE, pager.cursor));
    } catch (err) {
      showError($('audit-error'), `Settings changes could not be loaded: ${err.message}`);
    } finally {
      loading = false;
    }
  }

  setupCsvDownload($('audit-csv-download'), $('audit-csv-status'), `${orgPath(org, 'audit')}?format=csv`, `audit-${org}.csv`);

  return {
    show() {
      pager.reset();
      load();
    },
  };
}
