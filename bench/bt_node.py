"""One BitTorrent node for the swarm benchmark's ``bittorrent`` strategy (libtorrent 2.0).

Runs with the system interpreter that has Debian's python3-libtorrent (``/usr/bin/python3``), not
the project's Python; standard library + libtorrent only.

    bt_node.py create DIR TRACKER_URL PIECE_SIZE OUT.torrent   # prints {"info_hash": hex}
    bt_node.py seed TORRENT SAVE_DIR IP                        # prints {"ready": true}; on
                                                               # SIGTERM {"bytes_sent": N}
    bt_node.py leech TORRENT SAVE_DIR IP START_AT              # prints the client JSON line
                                                               # when complete, then seeds on

The session is tuned for a LAN: no DHT, LSD, UPnP, NAT-PMP or uTP (TCP only), many
connections and unchoke slots, deep request queues; a v1-only private torrent, one tracker.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import libtorrent as lt

PORT = 6881


def emit(fields: dict) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def session(ip: str) -> lt.session:
    return lt.session(
        {
            "listen_interfaces": f"{ip}:{PORT}",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "connections_limit": 1000,
            "unchoke_slots_limit": 32,
            "allow_multiple_connections_per_ip": True,
            "max_out_request_queue": 1500,
            "max_allowed_in_request_queue": 4000,
            "send_buffer_watermark": 8 << 20,
            "send_buffer_low_watermark": 1 << 20,
            "peer_connect_timeout": 3,
            "min_reconnect_time": 1,
            "aio_threads": 4,
            "alert_mask": lt.alert_category.error,
        }
    )


def add(ses: lt.session, torrent: str, save_dir: str, *, seed: bool) -> lt.torrent_handle:
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save_dir
    if seed:
        params.flags |= lt.torrent_flags.seed_mode
    return ses.add_torrent(params)


def create(directory: str, tracker: str, piece_size: str, out: str) -> None:
    files = lt.file_storage()
    lt.add_files(files, directory)
    torrent = lt.create_torrent(files, int(piece_size), flags=lt.create_torrent.v1_only)
    torrent.add_tracker(tracker)
    torrent.set_priv(True)
    parent = directory.rstrip("/").rsplit("/", 1)[0] or "/"
    lt.set_piece_hashes(torrent, parent)
    data = lt.bencode(torrent.generate())
    with open(out, "wb") as handle:
        handle.write(data)
    emit({"info_hash": str(lt.torrent_info(out).info_hashes().v1)})


def seed(torrent: str, save_dir: str, ip: str) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    ses = session(ip)
    handle = add(ses, torrent, save_dir, seed=True)
    while not handle.status().is_seeding:
        time.sleep(0.05)
    handle.force_reannounce()
    emit({"ready": True})
    while not stop:
        time.sleep(0.1)
    time.sleep(1.5)  # libtorrent folds transfer counters into the status once a second
    emit({"bytes_sent": handle.status().all_time_upload})


def leech(torrent: str, save_dir: str, ip: str, start_at: str) -> None:
    ses = session(ip)
    info = lt.torrent_info(torrent)
    time.sleep(max(0.0, float(start_at) - time.time()))
    began = time.time()
    handle = add(ses, torrent, save_dir, seed=False)
    while not handle.status().is_seeding:
        time.sleep(0.02)
    seconds = time.time() - began
    done = handle.status().total_wanted_done
    ok = done == info.total_size()
    emit({"seconds": seconds, "began": began, "codes": ["200" if ok else "bt"], "bytes": done})
    while True:  # keep seeding for the others until the benchmark kills us
        time.sleep(1.0)


def main(argv: list[str]) -> int:
    commands = {"create": (create, 4), "seed": (seed, 3), "leech": (leech, 4)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    commands[argv[0]][0](*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
