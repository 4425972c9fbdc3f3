#!/usr/bin/env python3
"""The compose deployment's end-to-end checks, run by scripts/compose-e2e from the host through
nginx's published port, as a browser reaches it: the six buttons' promises, then a replica stopped
under its clients; the fault drills; and with docker/compose.redis-cluster.yml layered on, that the
replicas really run on the Redis Cluster, and a master killed under a live client. Prints one line
per check and a closing `N passed, N failed`; exit 1 on any failure.

Standard library only: http.client for HTTP, and for WebSockets the few lines of RFC 6455 a
client needs (handshake, masked text frames out, text/ping/close frames in). The cluster checks
read the nodes with `docker exec <container> redis-cli`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
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
import threading
import time
import urllib.parse
from collections import Counter

REPLICAS = ("app-1", "app-2", "app-3")


class CheckFailed(Exception):
    pass


class NotOnCluster(CheckFailed):
    """A replica that answers without a shard is on one Redis: waiting will not change that."""


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


# --- on a Redis Cluster (docker/compose.redis-cluster.yml layered on) -----------------------------

SLOTS = 16384


def key_slot(key: str) -> int:
    """Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag if it has one."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


def client_channel(client_id: str) -> str:
    """A client's sharded pub/sub channel, as src/broker/cluster_keys.rs names it."""
    return f"stickyws:{{client:{client_id}}}"


class Node:
    """One node as it sees itself in its CLUSTER NODES line."""

    def __init__(self, name, line):
        fields = line.split()
        self.name = name
        self.id = fields[0]
        self.addr = fields[1].split("@")[0]  # ip:port, as CLUSTER SLOTS names a master
        self.master = "master" in fields[2].split(",")
        self.master_id = fields[3] if fields[3] != "-" else None
        self.ranges = []
        for part in fields[8:]:
            if not part.startswith("["):  # a slot being migrated
                first, _, last = part.partition("-")
                self.ranges.append((int(first), int(last or first)))

    def serves(self, slot):
        return self.master and any(first <= slot <= last for first, last in self.ranges)


def redis_cli(container, *args, timeout=10.0, label=None):
    """`redis-cli ARGS` inside a Redis container: its output, or CheckFailed."""
    label = label or container
    try:
        done = subprocess.run(["docker", "exec", container, "redis-cli", *args],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{label}: redis-cli {' '.join(args)}: no answer in {timeout}s") \
            from None
    expect(done.returncode == 0,
           f"{label}: redis-cli {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Nodes:
    """The cluster's nodes as containers (name=container), read with `docker exec … redis-cli`."""

    def __init__(self, pairs):
        self.containers = dict(pair.split("=", 1) for pair in pairs)
        self.dead = set()

    def cli(self, name, *args, timeout=10.0):
        return redis_cli(self.containers[name], *args, timeout=timeout, label=name)

    def live(self):
        return [name for name in self.containers if name not in self.dead]

    def info(self, name):
        return dict(line.split(":", 1) for line in self.cli(name, "cluster", "info").splitlines()
                    if ":" in line)

    def myself(self, name):
        for line in self.cli(name, "cluster", "nodes").splitlines():
            fields = line.split()
            if len(fields) >= 8 and "myself" in fields[2].split(","):
                return Node(name, line)
        raise CheckFailed(f"{name}: no `myself` line in CLUSTER NODES")

    def topology(self):
        """Every live node as it sees itself, by name."""
        return {name: self.myself(name) for name in self.live()}

    def owner(self, slot, topology=None):
        owners = [n for n in (topology or self.topology()).values() if n.serves(slot)]
        expect(len(owners) == 1, f"slot {slot} is served by {[n.name for n in owners]}")
        return owners[0]

    def shard_channels(self, name):
        return set(self.cli(name, "pubsub", "shardchannels", "stickyws:*").split())

    def kill(self, name):
        done = subprocess.run(["docker", "kill", self.containers[name]], capture_output=True,
                              text=True, timeout=30)
        expect(done.returncode == 0, f"docker kill {name}: {done.stderr.strip()}")
        self.dead.add(name)


def wait_for(limit, what, probe, every=0.2):
    """Calls probe() until it returns something truthy, or fails after `limit` seconds; returns
    (its answer, the seconds it took)."""
    started = time.monotonic()
    last = None
    while True:
        try:
            answer = probe()
        except NotOnCluster:
            raise
        except (CheckFailed, Closed, OSError, ValueError, KeyError, TypeError) as err:
            answer, last = None, err
        if answer:
            return answer, time.monotonic() - started
        if time.monotonic() - started > limit:
            raise CheckFailed(f"{what}: not within {limit}s (last: {last!r})")
        time.sleep(every)


def client_shard(front, client, replica):
    """What `replica`'s /api/stats says of the client's shard: (slot, master address)."""
    status, stats, _ = front.request("GET", f"/api/stats?client_id={client['client_id']}",
                                     cookie=sticky(replica))
    expect(status == 200, f"GET /api/stats on {replica}: HTTP {status} {stats}")
    expect(stats["replica"] == replica, f"/api/stats with {sticky(replica)}: {stats['replica']}")
    shard = (stats.get("shard") or {}).get("client")
    if shard is None:
        raise NotOnCluster(f"{replica}'s /api/stats names no shard, so its broker is not a "
                           f"cluster: shard={stats.get('shard')!r}, broker {stats['broker']}")
    return shard["slot"], shard["master"], stats["broker"]["up"]


def check_cluster_ready(front, limit=90):
    """Every replica, through nginx with its cookie, is up on its broker and names a shard."""
    client = front.mint()

    def ready():
        return all(client_shard(front, client, r)[2] for r in REPLICAS)

    _, took = wait_for(limit, "every replica up on the cluster", ready)
    return f"app-1..app-3 answer /api/stats with broker up and a shard, after {took:.1f}s"


def check_cluster(front, nodes, single):
    """The replicas run on the cluster: it is whole, every held client's sharded channel is on
    its slot's master and nowhere else, each replica names that master, and the single Redis the
    shipped file still starts holds nothing of theirs."""
    for name in nodes.live():
        info = nodes.info(name)
        expect(info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == "6"
               and info.get("cluster_size") == "3", f"{name}: CLUSTER INFO {info}")
    topology = nodes.topology()
    masters = sorted(n.name for n in topology.values() if n.master)
    expect(len(masters) == 3, f"masters: {masters}")
    expect(sum(last - first + 1 for n in topology.values() if n.master
               for first, last in n.ranges) == SLOTS, "the masters do not cover the 16384 slots")
    master_ids = {topology[m].id for m in masters}
    for n in topology.values():
        expect(n.master or n.master_id in master_ids, f"{n.name} replicates no master")

    holders = []
    try:
        for replica in REPLICAS:
            for _ in range(4):
                client = front.mint(cookie=sticky(replica))
                sock = front.ws(client, cookie=sticky(replica))
                holders.append((client, sock))
                expect(sock.replica == replica, f"socket with {sticky(replica)} on {sock.replica}")
        one = client_channel(holders[0][0]["client_id"])
        keyslot = int(nodes.cli(masters[0], "cluster", "keyslot", one).strip())
        expect(keyslot == key_slot(one), f"CLUSTER KEYSLOT {one} = {keyslot}, "
                                         f"computed {key_slot(one)}")
        wanted = {client_channel(c["client_id"]): nodes.owner(key_slot(client_channel(
            c["client_id"])), topology).name for c, _ in holders}

        def all_subscribed():
            found = {m: nodes.shard_channels(m) for m in masters}
            return found if all(ch in found[m] for ch, m in wanted.items()) else None

        found, _ = wait_for(10, "every held client's channel in its master's PUBSUB "
                                "SHARDCHANNELS", all_subscribed)
        for channel, master in wanted.items():
            elsewhere = [m for m in masters if m != master and channel in found[m]]
            expect(not elsewhere, f"{channel} also subscribed on {elsewhere}")
        used = Counter(wanted.values())
        expect(len(used) >= 2, f"12 clients' slots all on one master: {dict(used)}")
        for client, sock in holders:
            slot, master, _ = client_shard(front, client, sock.replica)
            channel = client_channel(client["client_id"])
            expect(slot == key_slot(channel), f"{sock.replica} says slot {slot} for {channel}")
            expect(master == topology[wanted[channel]].addr,
                   f"{sock.replica} says {master} serves slot {slot}; the cluster says "
                   f"{wanted[channel]} ({topology[wanted[channel]].addr})")
            reply = front.api(f"/api/publish/{client['client_id']}", token=client["token"],
                              body={"text": "sharded"})
            expect(reply["receivers"] == 1, f"publish: {reply}")
            (frame,) = sock.messages(1) or [None]
            expect(frame is not None and frame["text"] == "sharded", f"after SPUBLISH: {frame}")
    finally:
        for _, sock in holders:
            sock.close()

    detail = ""
    if single:
        # It kept the keys of the single-Redis run before; what says no replica uses it now is
        # that none is connected: only this redis-cli and the healthcheck's ping may be.
        connected = [line for line in redis_cli(single, "client", "list").splitlines()
                     if not re.search(r" cmd=(client\|list|ping|client) ", line + " ")]
        channels = redis_cli(single, "pubsub", "channels").split()
        expect(not connected and not channels,
               f"the single `redis` has clients {connected} and channels {channels[:5]}: a "
               f"replica uses REDIS_URL")
        detail = "; the single `redis` service: no client connected, no channel"
    return ("cluster_state:ok on 6 nodes, 3 masters cover 16384 slots; 12 held clients' "
            "channels each in their slot's master's PUBSUB SHARDCHANNELS only (" +
            ", ".join(f"{m} {used[m]}" for m in masters) +
            "); app-1..3's /api/stats name that slot and master; 12 of 12 SPUBLISHed" + detail)


def check_cluster_failover(front, nodes, limit):
    """SIGKILLs the master that owns a live client's slot while it is published to every 50 ms:
    its replica is promoted, deliveries resume within `limit` seconds, every accepted message
    arrives exactly once and no false history_lost is told."""
    client = front.mint(cookie=sticky("app-1"))
    sock = front.ws(client, cookie=sticky("app-1"))
    channel = client_channel(client["client_id"])
    slot = key_slot(channel)
    before = nodes.topology()
    owner = nodes.owner(slot, before)
    heirs = [n.name for n in before.values() if n.master_id == owner.id]
    expect(len(heirs) == 1, f"{owner.name} has replicas {heirs}")
    wait_for(10, f"{channel} in {owner.name}'s PUBSUB SHARDCHANNELS",
             lambda: channel in nodes.shard_channels(owner.name))

    sent, lock, stop = [], threading.Lock(), threading.Event()
    publisher_front = Front(f"http://{front.host}:{front.port}")
    started = time.monotonic()

    def publish():
        for i in range(1000):
            if stop.is_set():
                return
            text, at = f"m{i}", time.monotonic() - started
            try:
                status, _, _ = publisher_front.request(
                    "POST", f"/api/publish/{client['client_id']}", token=client["token"],
                    body={"text": text}, timeout=5)
            except OSError:
                status = 0
            with lock:
                sent.append((text, at, status))
            time.sleep(0.05)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    got, history_lost, reconnects = [], [], []
    cursor = sock.welcome.get("cursor")
    killed = resumed = None
    deadline = started + limit + 10
    try:
        while time.monotonic() < deadline:
            now = time.monotonic() - started
            if killed is None and now > 1.0:
                nodes.kill(owner.name)
                killed = time.monotonic() - started
            try:
                frame = sock.recv(0.1)
            except socket.timeout:
                frame = None
            except (Closed, OSError) as err:
                reconnects.append(f"{err} at {now:.1f}s")
                sock.close()
                sock, _ = wait_for(5, "the client's reconnect", lambda: front.ws(
                    client, cookie=sticky("app-1"), last_id=cursor))
                continue
            if frame is None:
                pass
            elif frame.get("type") == "history_lost":
                history_lost.append(frame)
            elif frame.get("type") == "message" and frame.get("via") == "publish":
                cursor = frame.get("cursor") or cursor
                got.append(frame["text"])
                if killed is not None and resumed is None:
                    with lock:
                        at = next((a for t, a, _ in sent if t == frame["text"]), 0)
                    if at > killed:
                        resumed = time.monotonic() - started
            if resumed is not None and time.monotonic() - started > resumed + 2:
                break
    finally:
        stop.set()
        publisher.join(10)
    got += [f["text"] for f in sock.messages(1000, 1.0) if f.get("via") == "publish"]
    sock.close()

    expect(killed is not None, f"{owner.name} was not killed")
    expect(resumed is not None, f"no message published after the kill of {owner.name} arrived "
                                f"within {deadline - started - killed:.0f}s")
    resumed_after = resumed - killed
    accepted = [t for t, _, status in sent if status == 200]
    refused = [(a, status) for _, a, status in sent if status != 200]
    lost = [t for t in accepted if t not in got]
    expect(not lost, f"accepted but not delivered: {lost}")
    twice = [text for text, n in Counter(got).items() if n > 1]
    expect(not twice, f"delivered twice: {twice}")
    expect(not history_lost, f"a false history_lost: {history_lost}")
    expect(resumed_after < limit, f"deliveries resumed {resumed_after:.1f}s after the kill")

    def promoted():
        topology = nodes.topology()
        heir = topology[heirs[0]]
        return heir if heir.serves(slot) else None

    heir, _ = wait_for(10, f"{heirs[0]} promoted to serve slot {slot}", promoted)
    wait_for(10, "cluster_state:ok on the 5 live nodes", lambda: all(
        nodes.info(n).get("cluster_state") == "ok" for n in nodes.live()))
    _, settled = wait_for(15, f"app-1..3 up and naming {heirs[0]} for slot {slot}", lambda: all(
        (lambda s: s[1] == heir.addr and s[2])(client_shard(front, client, r)) for r in REPLICAS))
    statuses = ",".join(str(s) for s in sorted({s for _, s in refused}))
    window = (f" ({statuses}) from {refused[0][0] - killed:+.1f}s to "
              f"{refused[-1][0] - killed:+.1f}s") if refused else ""
    return (f"docker kill {owner.name} (master of slot {slot}, the client's): deliveries resumed "
            f"{resumed_after:.1f}s after the SIGKILL; {heirs[0]} promoted and serving the slot; "
            f"{len(refused)} publishes refused{window}; {len(accepted)} accepted, all delivered "
            f"once; socket reconnects {len(reconnects)}; no history_lost; app-1..3 name "
            f"{heirs[0]} ({heir.addr}) and are up {settled:.1f}s later")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--stop", metavar="COMMAND",
                        help="shell words that stop one replica (the failover check)")
    parser.add_argument("--stopped", default="app-2", help="the APP_ID that --stop stops")
    parser.add_argument("--only", choices=("buttons", "failover", "drills", "drills-off",
                                           "cluster-ready", "cluster", "cluster-failover"),
                        help="run only the six buttons' checks, the failover, the fault drills "
                             "(docker/compose.drills.yml layered on) or their absence; or, with "
                             "docker/compose.redis-cluster.yml layered on, wait until every "
                             "replica is up on the cluster, check it is the one in use, or kill "
                             "a client's master")
    parser.add_argument("--redis-node", action="append", default=[], metavar="NAME=CONTAINER",
                        help="a cluster node's service name and container (all six)")
    parser.add_argument("--single-redis", metavar="CONTAINER",
                        help="the shipped `redis` container, which no replica may use")
    parser.add_argument("--resume-limit", type=float, default=15.0,
                        help="seconds within which deliveries resume after the master's kill")
    args = parser.parse_args()
    if args.only == "failover" and not args.stop:
        parser.error("--only failover needs --stop")
    if args.only in ("cluster", "cluster-failover") and len(args.redis_node) != 6:
        parser.error(f"--only {args.only} needs six --redis-node NAME=CONTAINER")
    front = Front(args.url)
    nodes = Nodes(args.redis_node)

    if args.only == "cluster-ready":
        checks = [("cluster ready", lambda: check_cluster_ready(front))]
        args.stop = None
    elif args.only == "cluster":
        checks = [("cluster in use", lambda: check_cluster(front, nodes, args.single_redis))]
        args.stop = None
    elif args.only == "cluster-failover":
        checks = [("cluster master failover",
                   lambda: check_cluster_failover(front, nodes, args.resume_limit))]
        args.stop = None
    elif args.only in ("drills", "drills-off"):
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
        except (CheckFailed, Closed, OSError, ValueError, KeyError,
                subprocess.SubprocessError) as err:
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
