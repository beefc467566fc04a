// The management HTTP API (RabbitMQ's paths and JSON), with HTTP basic auth from the session.
//
// The credentials live in sessionStorage (this tab only, gone when it closes). Requests use
// `credentials: 'omit'`: the Authorization header is set by hand, and a 401 then never makes
// the browser pop up its own login dialog.

const KEY = 'warren.session';

export const session = {
  get() {
    try { return JSON.parse(sessionStorage.getItem(KEY)); } catch { return null; }
  },
  set(s) { sessionStorage.setItem(KEY, JSON.stringify(s)); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body, reason) {
    super(reason);
    this.status = status;
    this.body = body;
  }
}

let unauthorized = () => {};
/** Called when the broker no longer accepts the session's credentials. */
export function onUnauthorized(fn) { unauthorized = fn; }

/** `user:password` as a basic-auth token (UTF-8, then base64). */
export function basicToken(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** Percent-encode one path segment (the vhost `/` becomes `%2F`). */
export const enc = encodeURIComponent;

function reasonOf(body) {
  if (!body) return '';
  if (typeof body === 'string') return body;
  const r = body.reason ?? body.error ?? '';
  return Array.isArray(r) ? r.join(' ') : String(r);
}

/**
 * A 401 whose credentials were refused (as opposed to RabbitMQ's `not_authorised`, a logged-in
 * user who may not do this): the session is over.
 */
function loginFailed(status, body) {
  return status === 401 && (!body || body.error !== 'not_authorised');
}

/**
 * One API call. `body` is sent as JSON. Resolves to the parsed JSON (null for an empty body);
 * rejects with ApiError (status 0: no answer), or the AbortError of `opts.signal`.
 */
export async function api(method, path, body, opts = {}) {
  const s = opts.token ? { auth: opts.token } : session.get();
  const headers = { Accept: 'application/json', ...opts.headers };
  if (s) headers.Authorization = `Basic ${s.auth}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
      credentials: 'omit',
      cache: 'no-store',
      signal: opts.signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, null, `The broker did not answer (${e.message}).`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data, reasonOf(data) || `${res.status} ${res.statusText}`);
    if (loginFailed(res.status, data) && !opts.token) unauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const put = (path, body, opts) => api('PUT', path, body ?? {}, opts);
export const post = (path, body, opts) => api('POST', path, body ?? {}, opts);
export const del = (path, opts) => api('DELETE', path, undefined, opts);

/** `?a=1&b=2` from an object, skipping empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '' && v !== false) p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}
