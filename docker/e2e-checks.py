#!/usr/bin/env python3
"""The compose deployment's end-to-end checks, run by scripts/compose-e2e from the host through
nginx's published port, as a browser reaches it: the six buttons' promises, then a replica stopped
under its clients. Prints one line per check and a closing `N passed, N failed`; exit 1 on any
failure.

Standard library only: http.client for HTTP, and for WebSockets the few lines of RFC 6455 a
client needs (handshake, masked text frames out, text/ping/close frames in).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from collections import Counter

REPLICAS = ("app-1", "app-2", "app-3")


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Front:
    """The deployment's front door: one HTTP request per connection, no cookie jar, so each
    request carries exactly the cookie the check gives it."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.origin = f"http://{self.host}:{self.port}"
        # (seconds, what) of every request and handshake, for the failover's slowest one.
        self.timings = []

    def request(self, method, path, *, token=None, body=None, cookie=None, timeout=10.0):
        headers = {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = cookie
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            set_cookie = resp.getheader("Set-Cookie")
            status = resp.status
        finally:
            conn.close()
            self.timings.append((time.monotonic() - started, f"{method} {path.split('?')[0]}"))
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return status, payload, set_cookie

    def api(self, path, *, token=None, body=None, cookie=None):
        status, payload, _ = self.request("POST", path, token=token, body=body, cookie=cookie)
        expect(status == 200, f"POST {path}: HTTP {status} {payload}")
        return payload

    def mint(self, cookie=None):
        return self.api("/api/clients", cookie=cookie)

    def ws(self, client, cookie=None, last_id=None):
        query = {"token": client["token"]}
        if last_id:
            query["last_id"] = last_id
        path = f"/ws/{client['client_id']}?{urllib.parse.urlencode(query)}"
        started = time.monotonic()
        sock = WebSocket(self, path, cookie)
        self.timings.append((time.monotonic() - started, f"WebSocket {path.split('?')[0]}"))
        return sock


class Closed(Exception):
    def __init__(self, code):
        super().__init__(f"closed ({code})")
        self.code = code


class WebSocket:
    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, front: Front, path: str, cookie=None, timeout=10.0):
        self.sock = socket.create_connection((front.host, front.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {front.host}:{front.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {front.origin}",
        ]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CheckFailed(f"WebSocket {path}: connection closed during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode(errors="replace").split("\r\n")
        expect(" 101 " in status_line + " ", f"WebSocket {path}: {status_line}")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
        expect(headers.get("sec-websocket-accept") == accept, "bad Sec-WebSocket-Accept")
        self.welcome = self.recv(timeout)
        expect(self.welcome.get("type") == "welcome", f"first frame: {self.welcome}")

    @property
    def replica(self):
        return self.welcome["replica"]

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(None)
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode, payload: bytes):
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, obj):
        self._send(0x1, json.dumps(obj).encode())

    def recv(self, timeout=5.0):
        """The next JSON text frame; answers pings; raises Closed on a close frame or EOF and
        socket.timeout when nothing arrives in time."""
        self.sock.settimeout(timeout)
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)  # server frames are not masked
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(code)
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x0):
                message += payload
                if b0 & 0x80:
                    return json.loads(message)
            # pongs and binary frames are not part of this protocol's traffic; skip them

    def messages(self, count, timeout=5.0):
        """`count` message frames (other frame types are skipped), or fewer if time runs out."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                frame = self.recv(left)
            except socket.timeout:
                break
            if frame.get("type") == "message":
                got.append(frame)
        return got

    def silent(self, wait=0.5):
        """True when no message frame arrives within `wait` seconds."""
        return not self.messages(1, wait)

    def close(self):
        try:
            self._send(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def sticky(replica):
    return f"sticky={replica}"


# --- the checks; each returns the detail line printed after "ok" ---------------------------------


def check_round_robin(front):
    client = front.mint()
    seen = Counter()
    for i in range(60):
        reply = front.api(f"/api/echo/{client['client_id']}", token=client["token"],
                          body={"text": f"rr {i}"})
        expect(reply["text"] == f"rr {i}" and reply["sticky"] is False, f"echo: {reply}")
        seen[reply["replica"]] += 1
    expect(set(seen) == set(REPLICAS), f"60 cookie-less echoes reached only {dict(seen)}")
    return "60 cookie-less echoes: " + ", ".join(f"{r} {seen[r]}" for r in REPLICAS)


def check_sticky(front):
    client = front.mint()
    for replica in REPLICAS:
        seen = Counter()
        for i in range(10):
            reply = front.api(f"/api/echo/{client['client_id']}", token=client["token"],
                              body={"text": f"s {i}"}, cookie=sticky(replica))
            expect(reply["sticky"] is True, f"echo with the cookie says sticky=false: {reply}")
            seen[reply["replica"]] += 1
        expect(seen == Counter({replica: 10}), f"cookie {sticky(replica)} reached {dict(seen)}")
    status, page, set_cookie = front.request("GET", "/", cookie=sticky("app-2"))
    expect(status == 200, f"GET / with the cookie: HTTP {status}")
    expect((set_cookie or "").startswith("sticky=app-2"), f"page re-issued {set_cookie!r}")
    # compose's default STICKY_SECRET is a demo one, and the page must say so.
    expect('data-testid="demo-secret"' in str(page), "the page does not flag the demo secret")
    return "10 echoes per cookie sticky=app-N all answered by app-N; the page keeps the " \
        "cookie and flags the demo secret"


def check_ws_only(front):
    replicas = set()
    for replica in REPLICAS:
        client = front.mint(cookie=sticky(replica))
        sock = front.ws(client, cookie=sticky(replica))
        try:
            expect(sock.replica == replica, f"socket with {sticky(replica)} held by {sock.replica}")
            text = "ws ✓ \"quoted\" " + replica
            sock.send({"text": text})
            (frame,) = sock.messages(1) or [None]
            expect(frame is not None, "no echo over the socket")
            expect(frame["via"] == "ws" and frame["replica"] == replica and frame["text"] == text,
                   f"socket echo: {frame}")
            replicas.add(frame["replica"])
        finally:
            sock.close()
    return "a socket echoes on its own replica, text unchanged (app-1, app-2, app-3)"


def check_direct_sticky(front):
    client = front.mint(cookie=sticky("app-3"))
    sock = front.ws(client, cookie=sticky("app-3"))
    try:
        expect(sock.replica == "app-3", f"socket held by {sock.replica}")
        for i in range(10):
            reply = front.api(f"/api/direct/{client['client_id']}", token=client["token"],
                              body={"text": f"d {i}"}, cookie=sticky("app-3"))
            expect(reply == {"replica": "app-3", "delivered": 1}, f"direct with cookie: {reply}")
        frames = sock.messages(10)
        expect([f["text"] for f in frames] == [f"d {i}" for i in range(10)],
               f"socket got {[f['text'] for f in frames]}")
        expect(all(f["via"] == "direct" and f["replica"] == "app-3" for f in frames), str(frames))
    finally:
        sock.close()
    return "10 of 10 direct messages with the cookie delivered by the socket's replica"


def check_direct_round_robin(front):
    client = front.mint()
    sock = front.ws(client)
    holder, delivered, texts = sock.replica, 0, []
    try:
        for i in range(30):
            reply = front.api(f"/api/direct/{client['client_id']}", token=client["token"],
                              body={"text": f"n {i}"})
            expect(reply["delivered"] == (1 if reply["replica"] == holder else 0),
                   f"holder {holder}, but {reply}")
            if reply["delivered"]:
                delivered += 1
                texts.append(f"n {i}")
        frames = sock.messages(delivered)
        expect([f["text"] for f in frames] == texts, f"socket got {frames}, expected {texts}")
        expect(sock.silent(), "a message the replicas said was not delivered arrived")
        expect(0 < delivered < 30, f"{delivered} of 30 delivered: round robin did not spread")
    finally:
        sock.close()
    return f"{delivered} of 30 cookie-less direct messages delivered, each exactly when the " \
           f"answering replica was the holder ({holder})"


def check_publish(front):
    client = front.mint()
    sock = front.ws(client)
    senders = Counter()
    try:
        for i in range(20):
            reply = front.api(f"/api/publish/{client['client_id']}", token=client["token"],
                              body={"text": f"p {i}"})
            expect(reply["receivers"] == 1, f"publish: {reply}")
            senders[reply["replica"]] += 1
        frames = sock.messages(20)
        expect([f["text"] for f in frames] == [f"p {i}" for i in range(20)],
               f"socket got {[f['text'] for f in frames]}")
        expect(all(f["via"] == "publish" and f["replica"] == sock.replica for f in frames),
               str(frames[:3]))
        expect(len(senders) > 1, f"every publish answered by one replica: {dict(senders)}")
    finally:
        sock.close()
    return f"20 of 20 published messages delivered by {sock.replica}, taken by " + \
        ", ".join(sorted(senders))


def check_failover(front, stop_command, stopped):
    """Stops the replica `stopped` while clients hold sockets on it: their sockets are closed,
    they reconnect with the same cookie to a backup, resume from their last id, and the cookie
    keeps being served."""
    holders = []
    for _ in range(3):
        client = front.mint(cookie=sticky(stopped))
        sock = front.ws(client, cookie=sticky(stopped))
        expect(sock.replica == stopped, f"socket with {sticky(stopped)} held by {sock.replica}")
        holders.append((client, sock))
    # One message each before the stop, so a resume has an id to start from.
    last_ids = []
    for client, sock in holders:
        front.api(f"/api/publish/{client['client_id']}", token=client["token"],
                  body={"text": "before"})
        (frame,) = sock.messages(1) or [None]
        expect(frame is not None and frame["text"] == "before", f"before the stop: {frame}")
        last_ids.append(frame.get("id"))

    started = time.monotonic()
    front.timings.clear()
    stopper = subprocess.Popen(stop_command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    codes = []
    for _, sock in holders:
        try:
            while True:
                sock.recv(30)
        except Closed as closed:
            codes.append(closed.code)
        except (socket.timeout, OSError) as err:
            raise CheckFailed(f"socket on {stopped} not closed by the stop: {err!r}") from None
    closed_after = time.monotonic() - started
    _, err = stopper.communicate(timeout=60)
    expect(stopper.returncode == 0, f"{shlex.join(stop_command)}: {err.decode()}")
    stopped_after = time.monotonic() - started

    # While the clients are away, one message each: the resume must bring it.
    for client, _ in holders:
        reply = front.api(f"/api/publish/{client['client_id']}", token=client["token"],
                          body={"text": "while away"}, cookie=sticky(stopped))
        expect(reply["replica"] != stopped and reply["receivers"] == 0,
               f"publish while no replica holds the client: {reply}")

    backups = Counter()
    for (client, sock), last_id in zip(holders, last_ids):
        sock.close()
        new = front.ws(client, cookie=sticky(stopped), last_id=last_id)
        try:
            expect(new.replica != stopped, f"reconnect served by {new.replica}")
            backups[new.replica] += 1
            frames = new.messages(1)
            expect([f["text"] for f in frames] == ["while away"],
                   f"after the reconnect: {frames} (resume from {last_id})")
            reply = front.api(f"/api/publish/{client['client_id']}", token=client["token"],
                              body={"text": "after"})
            expect(reply["receivers"] == 1, f"publish after the reconnect: {reply}")
            frames = new.messages(1)
            expect([f["text"] for f in frames] == ["after"], f"live after the reconnect: {frames}")
        finally:
            new.close()
    reconnected_after = time.monotonic() - started

    client = holders[0][0]
    reply = front.api(f"/api/echo/{client['client_id']}", token=client["token"],
                      body={"text": "x"}, cookie=sticky(stopped))
    expect(reply["replica"] != stopped and reply["sticky"], f"echo with the dead cookie: {reply}")
    status, _, set_cookie = front.request("GET", "/", cookie=sticky(stopped))
    expect(status == 200, f"GET / with the dead cookie: HTTP {status}")
    expect(bool(set_cookie) and not set_cookie.startswith(sticky(stopped) + ";"),
           f"page did not re-issue the cookie: {set_cookie!r}")
    slowest, what = max(front.timings)
    waited = sum(1 for seconds, _ in front.timings if seconds >= 1.5)
    what = what.rsplit("/", 1)[0] if what.count("/") > 1 else what  # without the client id
    return (f"docker stop {stopped}: 3 sockets closed ({', '.join(map(str, sorted(set(codes))))}) "
            f"after {closed_after:.1f}s, container gone after {stopped_after:.1f}s; clients "
            f"reconnected with {sticky(stopped)} to " + ", ".join(sorted(backups)) +
            f", resumed the missed message, all done at {reconnected_after:.1f}s; the page "
            f"re-issued {set_cookie.split(';')[0]}; slowest request after the stop: {slowest:.1f}s "
            f"({what}); {waited} of {len(front.timings)} took over 1.5s")


def drills_token(front):
    status, page, _ = front.request("GET", "/")
    expect(status == 200, f"GET /: HTTP {status}")
    found = re.search(r'data-drills-token="([^"]*)"', str(page))
    expect(found is not None, "the page has no data-drills-token attribute")
    return found.group(1)


def drills_state(front, token):
    status, state, _ = front.request("GET", "/api/drills", token=token)
    expect(status == 200, f"GET /api/drills: HTTP {status} {state}")
    return state


def wait_drills(front, token, limit, wanted):
    """Polls GET /api/drills until wanted(state) or limit seconds; the seconds it took."""
    started = time.monotonic()
    state = None
    while time.monotonic() - started < limit:
        state = drills_state(front, token)
        if wanted(state):
            return time.monotonic() - started
        time.sleep(0.1)
    raise CheckFailed(f"not within {limit}s; last state {state}")


def replica_row(state, replica):
    return next((r for r in state["replicas"] if r["id"] == replica), {})


def check_drills_off(front):
    token = drills_token(front)
    expect(token == "", f"drills are off but the page carries a drills token {token!r}")
    status, body, _ = front.request("GET", "/api/drills", token="anything")
    expect(status == 404 and body["error"]["code"] == "drills_off",
           f"GET /api/drills: HTTP {status} {body}")
    return "the page has no drills token; GET /api/drills answers 404 drills_off"


def check_drills(front, replica):
    token = drills_token(front)
    expect(token != "", "the page's data-drills-token is empty: drills are not on")
    status, body, _ = front.request("GET", "/api/drills", token="wrong-token")
    expect(status == 401, f"GET /api/drills with a wrong token: HTTP {status} {body}")
    expect([r["id"] for r in drills_state(front, token)["replicas"]] == list(REPLICAS),
           "the drills do not list app-1..app-3")

    started = time.monotonic()
    status, body, _ = front.request("POST", "/api/drills/kill", token=token,
                                    body={"replica": replica}, timeout=25)
    expect(status == 200, f"kill {replica}: HTTP {status} {body}")
    down = wait_drills(front, token, 2, lambda s: replica_row(s, replica).get("state") == "down")
    killed_in = time.monotonic() - started
    status, body, _ = front.request("POST", "/api/drills/kill", token=token,
                                    body={"replica": replica})
    expect(status == 409, f"killing a killed {replica}: HTTP {status} {body}")

    started = time.monotonic()
    status, body, _ = front.request("POST", "/api/drills/restart", token=token,
                                    body={"replica": replica}, timeout=25)
    expect(status == 200, f"restart {replica}: HTTP {status} {body}")
    wait_drills(front, token, 15, lambda s: replica_row(s, replica).get("state") == "up")
    client = front.mint()
    answered = None
    for _ in range(100):
        status, reply, _ = front.request("POST", f"/api/echo/{client['client_id']}",
                                         token=client["token"], body={"text": "back"},
                                         cookie=sticky(replica))
        if status == 200 and reply.get("replica") == replica:
            answered = time.monotonic() - started
            break
        time.sleep(0.1)
    expect(answered is not None, f"{replica} did not answer its sticky echo after the restart")

    status, body, _ = front.request("POST", "/api/drills/redis-freeze", token=token,
                                    body={"seconds": 2})
    expect(status == 200, f"redis-freeze: HTTP {status} {body}")
    expect(body["state"]["redis"]["state"] == "frozen", f"after the freeze: {body['state']}")
    resumed = wait_drills(front, token, 6, lambda s: s["redis"]["state"] == "up")
    return (f"kill {replica}: down in the state {killed_in:.1f}s after the POST (seen after "
            f"{down:.1f}s of polling); restart: answering its sticky echo after "
            f"{answered:.1f}s; redis frozen 2s, up again {resumed:.1f}s after the answer")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--stop", metavar="COMMAND",
                        help="shell words that stop one replica (the failover check)")
    parser.add_argument("--stopped", default="app-2", help="the APP_ID that --stop stops")
    parser.add_argument("--only", choices=("buttons", "failover", "drills", "drills-off"),
                        help="run only the six buttons' checks, the failover, the fault drills "
                             "(docker/compose.drills.yml layered on) or their absence")
    args = parser.parse_args()
    if args.only == "failover" and not args.stop:
        parser.error("--only failover needs --stop")
    front = Front(args.url)

    if args.only in ("drills", "drills-off"):
        checks = [("drills", lambda: check_drills(front, args.stopped))] \
            if args.only == "drills" else [("drills off", lambda: check_drills_off(front))]
        args.stop = None
    elif args.only == "failover":
        checks = []
    else:
        checks = [
            ("1 HTTP & round robin", lambda: check_round_robin(front)),
            ("2 HTTP & sticky", lambda: check_sticky(front)),
            ("3 WebSocket only", lambda: check_ws_only(front)),
            ("4 publish through Redis", lambda: check_publish(front)),
            ("5 direct, no cookie", lambda: check_direct_round_robin(front)),
            ("6 direct, sticky", lambda: check_direct_sticky(front)),
        ]
    if args.stop and args.only != "buttons":
        command = shlex.split(args.stop)
        checks.append(("failover", lambda: check_failover(front, command, args.stopped)))

    passed = failed = 0
    for name, run in checks:
        started = time.monotonic()
        try:
            detail = run()
        except (CheckFailed, Closed, OSError, ValueError, KeyError) as err:
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {err} [{time.monotonic() - started:.1f}s]",
                  flush=True)
        else:
            passed += 1
            print(f"ok   {name}: {detail} [{time.monotonic() - started:.1f}s]", flush=True)
    print(f"checks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
