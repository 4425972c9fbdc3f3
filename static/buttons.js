// The six buttons of the demo, in their three groups: label, what each sends and how, and why
// it behaves as it does. Data only; presses.js builds and runs them, tallies.js counts them.

export const GROUPS = [
  { title: 'HTTP: stateless',
    note: 'Nothing is kept between requests, so any replica can answer.',
    buttons: [
      { id: 'btn-echo-rr', label: 'HTTP & round robin', kind: 'echo', cookie: false,
        why: 'No cookie, so nginx takes turns: each answer comes from the next replica, and that is fine for stateless HTTP.' },
      { id: 'btn-echo-sticky', label: 'HTTP & sticky', kind: 'echo', cookie: true,
        why: 'The cookie names the replica that rendered this page, so nginx always sends the request there (to a backup only if it is down).' },
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
        why: 'Any replica takes the request and publishes it to Redis; the replica holding your socket delivers it, so it always arrives.' },
      { id: 'btn-direct-rr', label: 'Non-sticky HTTP & in-memory WebSocket', kind: 'direct', cookie: false,
        why: 'The replica that takes the request can only write to sockets in its own memory; without the cookie it is often not yours, and the message is lost.' },
      { id: 'btn-direct-sticky', label: 'Sticky HTTP & in-memory WebSocket', kind: 'direct', cookie: true,
        why: 'nginx routes the request and the socket by the same cookie, so they meet on one replica and in-memory delivery works while it lives.' },
    ] },
];
export const BUTTONS = GROUPS.flatMap((g) => g.buttons);
