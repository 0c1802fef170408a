#!/usr/bin/env python3
"""Write RFC 4733 (telephone-event) DTMF as pcap files for SIPp's ``play_pcap_audio``.

One file per digit, named ``NN-<key>.pcap`` (``01-1.pcap``, ``02-star.pcap``...). The
digits of one call share an SSRC and continue the RTP sequence numbers and timestamps, so
the far end sees one stream with a new event per digit: a receiver treats a repeated
timestamp as a retransmission of the same event, which is why the same digit pressed
twice needs two different files. Each event lasts 240 ms (12 packets, 20 ms apart, the
duration field growing by 160 samples) and ends with the end bit set, sent three times as
RFC 4733 section 2.5.1.4 recommends. Payload type 101 must match the SDP of
``consent_call.xml``. The addresses in the capture are RFC 5737 documentation addresses:
SIPp keeps only the UDP payload and sends it to the call's negotiated media address.

Usage: ``make_dtmf_pcap.py DIGITS OUTDIR`` with DIGITS like ``1,1`` or ``2`` or ``0,1,2,#``.
Python standard library only (the softphone image has no other packages).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

PAYLOAD_TYPE = 101
SSRC = 0x0C0115E7
PACKETS_PER_EVENT = 12  # 240 ms of tone
END_REPEATS = 3
PTIME_MS = 20
SAMPLES_PER_PACKET = 160  # 8 kHz clock
VOLUME = 10  # -10 dBm0
EVENT_GAP_SAMPLES = 8000  # timestamps of successive digits are >= 1 s apart
EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
NAMES = {"*": "star", "#": "hash"}

_SRC_IP = bytes([192, 0, 2, 1])
_DST_IP = bytes([192, 0, 2, 2])
_PORT = 6000


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(rtp: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", _PORT, _PORT, 8 + len(rtp), 0) + rtp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, 64, 17, 0, _SRC_IP, _DST_IP)
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    ether = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ether + ip + udp


def event_packets(key: str, seq: int, timestamp: int) -> list[bytes]:
    """RTP packets (header + 4-byte telephone-event payload) for one key press."""
    event = EVENTS[key]
    packets = []
    for i in range(PACKETS_PER_EVENT + END_REPEATS - 1):
        last = i >= PACKETS_PER_EVENT - 1
        duration = SAMPLES_PER_PACKET * min(i + 1, PACKETS_PER_EVENT)
        marker_pt = (0x80 if i == 0 else 0) | PAYLOAD_TYPE
        header = struct.pack("!BBHII", 0x80, marker_pt, (seq + i) & 0xFFFF, timestamp, SSRC)
        payload = struct.pack("!BBH", event, (0x80 if last else 0) | VOLUME, duration)
        packets.append(header + payload)
    return packets


def write_pcap(path: Path, rtp_packets: list[bytes]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, rtp in enumerate(rtp_packets):
        frame = _frame(rtp, ident=i + 1)
        usec = i * PTIME_MS * 1000
        seconds, micros = divmod(usec, 1_000_000)
        out.append(struct.pack("<IIII", seconds, micros, len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))


def read_events(path: Path) -> list[tuple[int, int, bool, int, int]]:
    """Decode a pcap written here: (payload type, event, end bit, duration, timestamp)."""
    data = Path(path).read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack("<IHHiIII", data[:24])
    if magic != 0xA1B2C3D4 or linktype != 1:
        raise ValueError(f"{path}: not a little-endian Ethernet pcap")
    offset, events = 24, []
    while offset < len(data):
        _, _, caplen, _ = struct.unpack("<IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        rtp = frame[14 + 20 + 8 :]
        _, marker_pt, _, timestamp, _ = struct.unpack("!BBHII", rtp[:12])
        event, flags, duration = struct.unpack("!BBH", rtp[12:16])
        events.append((marker_pt & 0x7F, event, bool(flags & 0x80), duration, timestamp))
    return events


def file_name(index: int, key: str) -> str:
    return f"{index:02d}-{NAMES.get(key, key)}.pcap"


def write_sequence(digits: list[str], outdir: Path) -> list[Path]:
    """One pcap per digit, continuing sequence numbers and timestamps across the call."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths, seq, timestamp = [], 1000, 160_000
    for index, key in enumerate(digits, start=1):
        packets = event_packets(key, seq, timestamp)
        path = outdir / file_name(index, key)
        write_pcap(path, packets)
        paths.append(path)
        seq += len(packets)
        timestamp += SAMPLES_PER_PACKET * PACKETS_PER_EVENT + EVENT_GAP_SAMPLES
    return paths


def parse_digits(text: str) -> list[str]:
    digits = [d.strip().upper() for d in text.split(",") if d.strip()]
    bad = [d for d in digits if d not in EVENTS]
    if bad:
        raise ValueError(f"not DTMF keys: {', '.join(bad)} (use 0-9 * # A-D, comma separated)")
    return digits


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        return 2
    try:
        digits = parse_digits(args[0])
    except ValueError as exc:
        print(f"make_dtmf_pcap: {exc}", file=sys.stderr)
        return 2
    for path in write_sequence(digits, Path(args[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
