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
 *  readable Error, the server's `{"error"}` included (and its status and code as fields). */
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
    const err = new Error(e ? `${res.status} ${e.code}: ${e.message}` : `HTTP ${res.status} ${res.statusText}`.trim());
    // Callers that explain a refusal (a 503 from a broker outage, a 409 drill) branch on these.
    err.status = res.status;
    err.code = e ? e.code : '';
    throw err;
  }
  if (!data) throw new Error('the answer was not JSON');
  return data;
}
