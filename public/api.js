// The wallet API as the dashboard calls it: same origin, bearer token from
// the session, JSON in and out, errors as {status, code, message, field}.

const SESSION_KEY = 'ai-wallet.session';
const REQUEST_TIMEOUT_MS = 20_000;

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    const error = body?.error ?? {};
    super(error.message ?? `The server answered ${status}.`);
    this.status = status;
    this.code = error.code ?? (status === 0 ? 'network_error' : 'unexpected_response');
    this.field = error.field;
    this.details = error;
    /** Whole seconds from the `Retry-After` header (429), or null. */
    this.retryAfter = retryAfter;
  }
}

/** `Retry-After` in whole seconds (the API sends delay-seconds), or null. */
function retryAfterSeconds(res) {
  const value = res.headers.get('retry-after');
  return value !== null && /^\d{1,6}$/.test(value.trim()) ? Number(value.trim()) : null;
}

/** The server limits reads of one organization (usage, transactions, payment method): 429 `rate_limited`. */
export const isRateLimited = (err) => err?.status === 429 && err.code === 'rate_limited';

/**
 * After a 429 `rate_limited` on a read: shows "Too many requests right now:
 * retrying in N s." through `show(text)`, counting down each second, then
 * calls `retry()` once. Returns a function that cancels it (a newer load
 * supersedes the retry).
 */
export function retryWhenAllowed(err, show, retry) {
  let left = Math.max(1, err.retryAfter ?? 10);
  const say = () => show(`Too many requests right now: retrying in ${left} s.`);
  say();
  const timer = setInterval(() => {
    left -= 1;
    if (left > 0) return say();
    clearInterval(timer);
    retry();
  }, 1000);
  return () => clearInterval(timer);
}

/** The claims of a JWT, read only to shape the page; the server checks them. */
function claimsOf(token) {
  try {
    const payload = token.split('.')[1].replaceAll('-', '+').replaceAll('_', '/');
    return JSON.parse(atob(payload));
  } catch {
    return null;
  }
}

/** {token, org, sub, role, exp} of the signed-in user, or null. */
export function currentSession() {
  let token;
  try {
    token = sessionStorage.getItem(SESSION_KEY);
  } catch {
    return null;
  }
  const claims = token && claimsOf(token);
  if (!claims || typeof claims.org !== 'string' || typeof claims.exp !== 'number') return null;
  if (claims.exp * 1000 <= Date.now()) {
    signOut();
    return null;
  }
  return { token, org: claims.org, sub: claims.sub, role: claims.role, exp: claims.exp };
}

export function signOut() {
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // storage unavailable: nothing was kept
  }
}

/** Development sign-in: POST /dev/token mints a token for any org and role. */
export async function devSignIn({ org, sub, role }) {
  const res = await send('POST', '/dev/token', { body: { org, sub, role } });
  sessionStorage.setItem(SESSION_KEY, res.token);
  return currentSession();
}

async function send(method, path, { token, body, headers = {}, raw = false } = {}) {
  const h = { accept: raw ? 'text/csv' : 'application/json', ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined) h['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, { error: { message: 'The wallet service could not be reached. Check your connection and try again.' } });
  }
  if (raw && res.ok) return res;
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (!res.ok) throw new ApiError(res.status, json, retryAfterSeconds(res));
  return json;
}

/** Calls the API as the signed-in user; a 401 ends the session. */
export async function call(method, path, options = {}) {
  const session = currentSession();
  if (!session) throw new ApiError(401, { error: { code: 'unauthorized', message: 'Your session ended. Sign in again.' } });
  try {
    return await send(method, path, { ...options, token: session.token });
  } catch (err) {
    if (err.status === 401) {
      signOut();
      window.dispatchEvent(new CustomEvent('session-ended'));
    }
    throw err;
  }
}

export const orgPath = (org, rest) => `/v1/orgs/${encodeURIComponent(org)}/${rest}`;

let catalogue = null;

/** GET /v1/packs, asked once per page (several views name packs); a failure is asked again next time. */
export function packCatalogue() {
  catalogue ??= call('GET', '/v1/packs').catch((err) => {
    catalogue = null;
    throw err;
  });
  return catalogue;
}

/** Pack names by id, for lists that name packs; {} when the catalogue cannot be had (ids are shown as they are). */
export async function packNamesById() {
  try {
    return Object.fromEntries((await packCatalogue()).map((p) => [p.id, p.name]));
  } catch {
    return {};
  }
}

/**
 * Fetches a file the API streams (a CSV export) and hands it to the browser
 * as a download; a plain link cannot send the bearer token. Returns its name.
 */
export async function downloadFile(path, fallbackName) {
  const res = await call('GET', path, { raw: true });
  const blob = await res.blob();
  const name = /filename="([^"]+)"/.exec(res.headers.get('content-disposition') ?? '')?.[1] ?? fallbackName;
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}
