// Talking to the replicas over HTTP: fetch with the page's token, answers as JSON, every
// failure as one readable Error. What to send and what an answer means is the callers'.

import { TOKEN } from './config.js';

/** POSTs `payload` as JSON with the page's token; the sticky cookie only when `withCookie`. */
export function postJson(url, payload, withCookie) {
  return request(url, {
    method: 'POST',
    credentials: withCookie ? 'same-origin' : 'omit',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify(payload),
  });
}

/** fetch, then the JSON answer; any failure (network, status, not JSON) is thrown as one
 *  readable Error, the server's `{"error"}` included. */
export async function request(url, init) {
  let res;
  try {
    res = await fetch(url, { cache: 'no-store', ...init });
  } catch (err) {
    throw new Error(`network error: ${err.message}`);
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const e = data && data.error;
    throw new Error(e ? `${res.status} ${e.code}: ${e.message}` : `HTTP ${res.status} ${res.statusText}`.trim());
  }
  if (!data) throw new Error('the answer was not JSON');
  return data;
}
