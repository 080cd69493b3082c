// Billing → Wallet: sign-in, tabs, and the views. Every figure comes
// from the wallet API of this same Worker; nothing is stored in the page.
import { currentSession, devSignIn, signOut } from './api.js';
import { createWalletView } from './wallet.js';
import { createTransactionsView } from './transactions.js';
import { createUsageView } from './usage.js';
import { createFeatureCapsView } from './feature-caps.js';
import { createAuditView } from './audit.js';
import { createAutoTopUpView } from './auto-top-up.js';
import { createAlertsView } from './alerts.js';
import { createEventsView } from './events.js';
import { $, showError } from './dom.js';
import { canReadAudit, canReadEvents, roleName } from './roles.js';

const LAST_LOGIN_KEY = 'ai-wallet.last-login'; // org, user and role only; never the token
const ALL_TABS = ['wallet', 'transactions', 'usage', 'audit'];

function showLogin(message) {
  $('boot').hidden = true;
  $('app').hidden = true;
  $('who').hidden = true;
  $('login').hidden = false;
  try {
    const last = JSON.parse(localStorage.getItem(LAST_LOGIN_KEY) ?? 'null');
    if (last) {
      $('login-org').value ||= last.org ?? '';
      $('login-sub').value ||= last.sub ?? '';
      $('login-role').value = last.role ?? 'owner';
    }
  } catch {
    // nothing remembered
  }
  const error = $('login-error');
  error.textContent = message ?? '';
  error.hidden = !message;
  $('login-org').focus();
}

function setupLogin() {
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const org = $('login-org').value.trim();
    const sub = $('login-sub').value.trim();
    const role = $('login-role').value;
    const error = $('login-error');
    const badOrg = !/^[A-Za-z0-9_-]{1,64}$/.test(org);
    const badSub = !sub;
    $('login-org').setAttribute('aria-invalid', String(badOrg));
    $('login-sub').setAttribute('aria-invalid', String(!badOrg && badSub));
    const problem = badOrg
      ? 'Enter an organization id: 1 to 64 letters, digits, _ or -.'
      : badSub
        ? 'Enter a user id.'
        : null;
    if (problem) {
      showError(error, problem);
      return;
    }
    try {
      await devSignIn({ org, sub, role });
      localStorage.setItem(LAST_LOGIN_KEY, JSON.stringify({ org, sub, role }));
      start();
    } catch (err) {
      showError(error, err.status === 404
        ? 'Development sign-in is not available on this server; open the wallet from Lognitor.'
        : err.message);
    }
  });
}

/** ARIA tabs: arrow keys move between tabs, the hash remembers the current one. */
function setupTabs(views) {
  const TABS = ALL_TABS.filter((name) => name in views);
  const tabs = TABS.map((name) => $(`tab-${name}`));
  for (const tab of tabs) tab.hidden = false;
  const select = (name, { focus = false, updateHash = true } = {}) => {
    if (!TABS.includes(name)) name = 'wallet';
    for (const tab of tabs) {
      const selected = tab.id === `tab-${name}`;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
      $(tab.getAttribute('aria-controls')).hidden = !selected;
      if (selected && focus) tab.focus();
    }
    if (updateHash && location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
    views[name].show();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener('click', () => select(TABS[i]));
    tab.addEventListener('keydown', (event) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -i, End: tabs.length - 1 - i };
      if (!(event.key in moves)) return;
      event.preventDefault();
      select(TABS[(i + moves[event.key] + tabs.length) % tabs.length], { focus: true });
    });
  });
  window.addEventListener('hashchange', () => select(location.hash.slice(1), { updateHash: false }));
  return select;
}

let started = false;

function start() {
  const session = currentSession();
  if (!session) return showLogin();
  $('boot').hidden = true;
  $('login').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('who-text').textContent = `${session.org} · ${session.sub} (${roleName(session.role)})`;
  document.title = `Wallet · ${session.org} · Billing`;
  if (started) {
    // A new sign-in in the same page: simplest correct reset.
    location.reload();
    return;
  }
  started = true;
  const wallet = createWalletView(session);
  const views = {
    wallet,
    transactions: createTransactionsView(session),
    usage: createUsageView(session, wallet),
  };
  createFeatureCapsView(session, wallet);
  createAutoTopUpView(session, wallet);
  createAlertsView(session, wallet);
  // The server refuses the events and the audit trail to other roles; the page does not offer them.
  if (canReadEvents(session.role)) createEventsView(session, wallet);
  if (canReadAudit(session.role)) views.audit = createAuditView(session);
  const select = setupTabs(views);
  select(location.hash.slice(1) || 'wallet', { updateHash: false });
  if (location.hash.slice(1) !== 'wallet') wallet.refresh(); // the banners show on every tab
}

$('sign-out').addEventListener('click', () => {
  signOut();
  location.hash = '';
  location.reload();
});
window.addEventListener('session-ended', () => showLogin('Your session ended. Sign in again.'));

setupLogin();
start();
