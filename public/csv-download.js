// The Download CSV buttons (Transactions, Audit). A plain link cannot carry
// the bearer token, so the export is fetched and handed to the browser.
import { downloadFile, isRateLimited } from './api.js';

/** Downloads `path` when `button` is pressed (named as the server says, else `fallbackName`), saying how it went in `status`. */
export function setupCsvDownload(button, status, path, fallbackName) {
  button.addEventListener('click', async () => {
    button.disabled = true;
    status.className = 'message';
    status.textContent = 'Preparing the CSV file…';
    try {
      const name = await downloadFile(path, fallbackName);
      status.textContent = `Downloaded ${name}.`;
      status.className = 'message ok';
    } catch (err) {
      // Exports the server rate-limits (transactions) say when to try again.
      status.textContent = isRateLimited(err)
        ? `Too many requests right now: try the download again in ${err.retryAfter ?? 60} s.`
        : `The CSV file could not be downloaded: ${err.message}`;
      status.className = 'message error';
    } finally {
      button.disabled = false;
    }
  });
}
