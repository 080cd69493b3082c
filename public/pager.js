// Paging through the API's lists (transactions, the audit trail, events):
// newest first, a page is at most `limit` items after `starting_after` (the
// id of the last item already shown), and `has_more` says older ones follow.
import { call } from './api.js';

/** One page of the list at `path`: the newest, or the one after `cursor`. */
export function fetchPage(path, limit, cursor) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (cursor) query.set('starting_after', cursor);
  return call('GET', `${path}?${query}`);
}

/**
 * Newer/Older buttons over a stack of cursors. The API pages only towards
 * older items, so Newer goes back by dropping the last cursor. After each
 * move `load()` runs; it fetches the page at `cursor` and passes it to
 * `shown(page)` once rendered.
 */
export function createPager({ newer, older, pageNumber, empty, load }) {
  let cursors = [undefined]; // [undefined, id, id, …]: the last is the page shown

  older.addEventListener('click', () => {
    const cursor = older.dataset.cursor;
    if (!cursor) return;
    cursors.push(cursor);
    load();
  });
  newer.addEventListener('click', () => {
    if (cursors.length > 1) cursors.pop();
    load();
  });

  return {
    /** Where the page to show starts (undefined: the newest). */
    get cursor() {
      return cursors.at(-1);
    },
    /** Back to the newest page: a tab shown again starts there. */
    reset() {
      cursors = [undefined];
    },
    /** The buttons, the page number and the empty note for `page`, just rendered. */
    shown(page) {
      empty.hidden = page.data.length > 0 || cursors.length > 1;
      newer.disabled = cursors.length <= 1;
      older.disabled = !page.has_more;
      older.dataset.cursor = page.data.at(-1)?.id ?? '';
      pageNumber.textContent = page.data.length ? `Page ${cursors.length}` : '';
    },
  };
}
