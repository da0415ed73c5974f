"""One node of the swarm benchmark's ``floor`` strategy: a relay tree with no protocol at all.

What this machine's network, disk and CPU allow any swarm, measured with the same namespaces,
shaping, origin and curl clients as the real strategies: the bytes p2pull moves, minus all that
p2pull decides. The first node is the seed: when its client asks for a blob it fetches it from
the origin and sends chunk i to relay number i mod R (every other node is a relay); a relay
forwards what the seed sent it to every node but the seed. Every node stores each chunk it
receives (pwrite), hashes it (sha256, as an agent checks a chunk), streams the blob to its own
client in order as chunks land (sendfile from the store file) and checks the whole-blob digest
on the way; a mismatch cuts the client's response short, so the benchmark reports a failure.

Blocking threads, sendfile, a 10-byte header per chunk: no membership, no scheduling, no
retries, no authentication; any error (the origin's, a lost connection, a chunk source gone
before every blob is whole) ends the node, so its client's response breaks off at once. Not a
product: a floor.
Standard library only.

    floor_node.py --me IP --seed IP --nodes IP,IP,... --origin URL --name NAME \
        --digests D1,D2,... --sizes S1,S2,... --chunk-sizes C1,C2,... --store DIR

Prints ``{"ready": true}`` once it listens (HTTP on 5050, chunks on 5051); runs until killed.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import queue
import socket
import struct
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Callable

HTTP_PORT, CHUNK_PORT = 5050, 5051
HEADER = struct.Struct(">HII")  # blob number, chunk number, length


class Blob:
    """One blob's store file and which of its chunks are there."""

    def __init__(self, digest: str, size: int, chunk_size: int, store: str) -> None:
        self.digest, self.size, self.chunk_size = digest, size, chunk_size
        self.count = max(1, -(-size // chunk_size))
        path = os.path.join(store, digest.replace(":", "_"))
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.have = [False] * self.count
        self.landed = threading.Condition()
        self.fetching = False

    def span(self, index: int) -> tuple[int, int]:
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def store(self, index: int, data: memoryview) -> None:
        offset, _ = self.span(index)
        os.pwrite(self.fd, data, offset)
        hashlib.sha256(data).digest()  # what an agent spends to check a chunk
        with self.landed:
            self.have[index] = True
            self.landed.notify_all()

    def wait(self, index: int) -> None:
        with self.landed:
            while not self.have[index]:
                self.landed.wait()


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.me, self.seed = args.me, args.seed
        self.origin = urllib.parse.urlsplit(args.origin)
        self.name = args.name
        os.makedirs(args.store, exist_ok=True)
        self.blobs = [
            Blob(d, int(s), int(c), args.store)
            for d, s, c in zip(
                args.digests.split(","),
                args.sizes.split(","),
                args.chunk_sizes.split(","),
                strict=True,
            )
        ]
        self.by_digest = {blob.digest: number for number, blob in enumerate(self.blobs)}
        others = [ip for ip in args.nodes.split(",") if ip and ip != self.me]
        self.relays = others if self.me == self.seed else []
        targets = others if self.me == self.seed else [ip for ip in others if ip != self.seed]
        self.lock = threading.Lock()
        self.outboxes: dict[str, queue.Queue[tuple[int, int]]] = {}
        for ip in targets:
            self.outboxes[ip] = queue.Queue()
            spawn(self.send_to, ip, self.outboxes[ip])

    # -- chunks between nodes ---------------------------------------------------------------
    def send_to(self, ip: str, outbox: queue.Queue[tuple[int, int]]) -> None:
        number, index = outbox.get()  # connect once there is something to send: all listen
        try:
            conn = socket.create_connection((ip, CHUNK_PORT), source_address=(self.me, 0))
            while True:
                blob = self.blobs[number]
                offset, length = blob.span(index)
                conn.sendall(HEADER.pack(number, index, length))
                sendfile_all(conn, blob.fd, offset, length)
                number, index = outbox.get()
        except OSError as exc:
            raise OSError(f"{self.me} sending chunk {index} of blob {number} to {ip}") from exc

    def receive_from(self, conn: socket.socket, ip: str) -> None:
        """Chunks from the seed or a relay. Its connection ending before this node holds every
        blob whole ends the node (the chunks it carried cannot come another way)."""
        header, body = bytearray(HEADER.size), bytearray(max(b.chunk_size for b in self.blobs))
        while receive_exactly(conn, memoryview(header)):
            number, index, length = HEADER.unpack(header)
            view = memoryview(body)[:length]
            if not receive_exactly(conn, view):
                break
            self.blobs[number].store(index, view)
            if ip == self.seed:
                for outbox in self.outboxes.values():
                    outbox.put((number, index))
        if not all(all(blob.have) for blob in self.blobs):
            raise RuntimeError(f"{self.me}: the connection from {ip} ended before every chunk")

    def fetch(self, number: int) -> None:
        """The seed: the blob from the origin, each chunk stored and handed to one relay."""
        blob = self.blobs[number]
        url = self.origin
        path = f"/v2/{self.name}/blobs/{blob.digest}"
        for _ in range(3):  # the origin may redirect to a CDN
            connection = http.client.HTTPConnection(url.hostname, url.port)
            connection.request("GET", path)
            response = connection.getresponse()
            if response.status not in (301, 302, 303, 307, 308):
                break
            url = urllib.parse.urlsplit(response.getheader("Location", ""))
            path = url.path + (f"?{url.query}" if url.query else "")
        if response.status != 200:
            raise RuntimeError(f"origin answered {response.status} for {blob.digest}")
        chunk = bytearray(blob.chunk_size)
        for index in range(blob.count):
            _, length = blob.span(index)
            view, got = memoryview(chunk)[:length], 0
            while got < length:
                read = response.readinto(view[got:])
                if not read:
                    raise RuntimeError(f"origin body of {blob.digest} ended early")
                got += read
            blob.store(index, view)
            if self.relays:
                self.outboxes[self.relays[index % len(self.relays)]].put((number, index))

    # -- the node's own client --------------------------------------------------------------
    def serve_client(self, conn: socket.socket) -> None:
        """Answer the client's GETs (keep-alive), each blob in order as its chunks land."""
        with conn, conn.makefile("rb") as reader:
            while request := reader.readline():
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass  # the headers: nothing in them changes the answer
                path = request.split()[1].decode().split("?")[0]
                number = self.by_digest.get(path.rsplit("/", 1)[-1])
                if number is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                if not self.stream(conn, number):
                    return  # a short response: the client sees the failure

    def stream(self, conn: socket.socket, number: int) -> bool:
        """One blob to the client; False (and not all of it sent) if its digest is wrong."""
        blob = self.blobs[number]
        if self.me == self.seed:
            with self.lock:
                start, blob.fetching = not blob.fetching, True
            if start:
                spawn(self.fetch, number)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % blob.size
        )
        whole = hashlib.sha256()
        for index in range(blob.count):
            blob.wait(index)
            offset, length = blob.span(index)
            whole.update(os.pread(blob.fd, length, offset))
            if index == blob.count - 1 and "sha256:" + whole.hexdigest() != blob.digest:
                return False
            sendfile_all(conn, blob.fd, offset, length)
        return True

    def run(self) -> None:
        chunks = socket.create_server((self.me, CHUNK_PORT), backlog=256)
        clients = socket.create_server((self.me, HTTP_PORT), backlog=64)
        spawn(accept, chunks, self.receive_from)
        spawn(accept, clients, lambda conn, ip: self.serve_client(conn))
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
        threading.Event().wait()


def receive_exactly(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False if the connection ended first."""
    got = 0
    while got < len(view):
        read = conn.recv_into(view[got:])
        if not read:
            return False
        got += read
    return True


def sendfile_all(conn: socket.socket, fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        sent = os.sendfile(conn.fileno(), fd, offset, end - offset)
        if sent == 0:
            raise RuntimeError("store file shorter than the chunk")
        offset += sent


def accept(listener: socket.socket, handle: Callable[[socket.socket, str], object]) -> None:
    while True:
        conn, (ip, _) = listener.accept()
        spawn(handle, conn, ip)


_DYING = threading.Lock()


def spawn(target: Callable[..., object], *args: object) -> None:
    """Run ``target`` in a thread; any error in it ends the node (its clients' responses break
    off, so the benchmark reports a failure instead of waiting for chunks that cannot come)."""

    def guarded() -> None:
        try:
            target(*args)
        except BaseException:
            with _DYING:  # the first error is the one told whole: the others wait for the exit
                sys.stderr.write(traceback.format_exc())
                sys.stderr.flush()
                os._exit(1)

    threading.Thread(target=guarded, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--me", "--seed", "--nodes", "--origin", "--name", "--digests", "--sizes"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--chunk-sizes", required=True, help="each blob's chunk size, in bytes")
    parser.add_argument("--store", required=True)
    Node(parser.parse_args()).run()


if __name__ == "__main__":
    main()
