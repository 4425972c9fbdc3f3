// The six buttons of the demo, in their three groups: label, what each sends and how, and why
// it behaves as it does. A reason that depends on the moment (the cookie, a replica down,
// Redis away) is a function of `now` (truth.js's sentences, the socket's replica), so the page
// never keeps a claim that stopped being true. Data only; presses.js builds and runs them.

export const GROUPS = [
  { title: 'HTTP: stateless',
    note: 'Nothing is kept between requests, so any replica can answer.',
    buttons: [
      { id: 'btn-echo-rr', label: 'HTTP & round robin', kind: 'echo', cookie: false,
        why: 'No cookie, so nginx takes turns among the replicas that are up (turns shared with every other request it gets), and that is fine for stateless HTTP.' },
      { id: 'btn-echo-sticky', label: 'HTTP & sticky', kind: 'echo', cookie: true,
        why: (now) => {
          if (!now.cookie) return 'This page has no sticky cookie now, so nginx spreads these round robin like the button above; reload the page to get one again.';
          if (!now.cookieUp) return `The cookie names ${now.cookie}, which is ${now.cookieStatus}, so nginx sends these to a backup replica until it is back.`;
          return `The cookie names ${now.cookie}, the replica that rendered this page, so nginx sends the request there (to a backup only while it is down).`;
        } },
    ] },
  { title: 'WebSocket: stateful',
    note: 'A socket is one connection, held in one replica’s memory.',
    buttons: [
      { id: 'btn-ws', label: 'WebSocket only', kind: 'ws', cookie: true,
        why: 'Sent over the open socket, so the replica holding it answers every time: a socket is sticky by nature.' },
    ] },
  { title: 'Reaching a socket from HTTP',
    note: 'The request and the socket may land on different replicas.',
    buttons: [
      { id: 'btn-publish', label: 'Publish through Redis', kind: 'publish', cookie: false,
        why: (now) => {
          if (now.broker === 'down') return 'Redis is unreachable now: the replica that takes the request refuses it (503) and nothing reaches your socket. The in-memory buttons do not need Redis and still work.';
          if (now.broker === 'frozen') return 'Redis is frozen now: a publish waits for its answer, then fails (503) or goes through once Redis resumes.';
          return 'Any replica takes the request and publishes it to Redis; the replica holding your socket delivers it, so it arrives wherever your socket is.';
        } },
      { id: 'btn-direct-rr', label: 'Non-sticky HTTP & in-memory WebSocket', kind: 'direct', cookie: false,
        why: 'The replica that takes the request can only write to sockets in its own memory; without the cookie it is often not yours, and the message is lost.' },
      { id: 'btn-direct-sticky', label: 'Sticky HTTP & in-memory WebSocket', kind: 'direct', cookie: true,
        why: (now) => {
          if (!now.cookie) return 'This page has no sticky cookie now: the request goes round robin like the button above, so it reaches your socket only when it happens to land on its replica.';
          if (!now.cookieUp) return `The cookie names ${now.cookie}, which is ${now.cookieStatus}: nginx sends the request to a backup, and it reaches your socket only if that is the replica your socket moved to${now.wsBy ? ` (${now.wsBy})` : ''}.`;
          if (now.wsBy && now.wsBy !== now.cookie) return `The cookie names ${now.cookie}, but your socket is on ${now.wsBy} now, so the request and the socket do not meet and the message is dropped; reload the page to bring them together.`;
          return 'nginx routes the request and the socket by the same cookie, so they meet on one replica and in-memory delivery works while it lives.';
        } },
    ] },
];
export const BUTTONS = GROUPS.flatMap((g) => g.buttons);
