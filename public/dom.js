// The few DOM steps every view repeats. The markup is index.html's; the
// views find their elements by id and build table rows and small texts here.
import { formatDateTime } from './format.js';

/** The element with this id (index.html has each id once). */
export const $ = (id) => document.getElementById(id);

/** Appends a `tag` element holding `text` (with `className`, if any) to `parent`; returns it. */
export function addText(parent, tag, text, className) {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  parent.append(node);
  return node;
}

/** Shows `text` in an error box that stays hidden while there is nothing to say. */
export function showError(box, text) {
  box.textContent = text;
  box.hidden = false;
}

/**
 * Writes a status line (`kind`: 'ok', 'error' or none). With `input`, the
 * field it is about: an error marks it invalid, anything else clears that.
 */
export function showMessage(message, text, kind, input) {
  message.textContent = text;
  message.className = `message ${kind ?? ''}`;
  input?.setAttribute('aria-invalid', String(kind === 'error'));
}

/** Whether the reader is typing in `input` or it shows an error: a refresh leaves its value alone. */
export const isEditing = (input) => document.activeElement === input || input.getAttribute('aria-invalid') === 'true';

/** A new cell at the end of `row`, carrying its column's name from `labels`: phones show it where rows stack. */
export function labelledCell(row, labels, className) {
  const td = document.createElement('td');
  td.dataset.label = labels[row.cells.length];
  if (className) td.className = className;
  row.append(td);
  return td;
}

/** A <time> for an RFC 3339 instant, written in the reader's time zone. */
export function localTime(iso) {
  const when = document.createElement('time');
  when.dateTime = iso;
  when.textContent = formatDateTime(iso);
  return when;
}
