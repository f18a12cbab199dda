"""Who this recorder is on a shared store: its id (from the machine id) and its folder there.

Recorders leave the factory with one host name, so the folder every push writes below is the host
name plus a short id derived from the machine id ("steno-3f9a1c"): unique in an office of
recorders, still readable by a person browsing the NAS, and stable across reboots and updates.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re
import socket
import time
import uuid
from typing import Callable, Iterable

from steno_exportd import safeparse
from steno_exportd.atomic import write_file
from steno_exportd.config import Config
from steno_exportd.errors import NameTaken, TargetError
from steno_exportd.engine.naming import safe_name

log = logging.getLogger(__name__)

RECORDER_ID_FILE = "recorder-id"
BOARD_ID_FILE = "board-id"                  # in the state folder: this installation's own id, where the board has none
BOARD_SERIAL = "/sys/firmware/devicetree/base/serial-number"   # the Raspberry Pi's serial: on the board, not the card
CLAIM_NAME = ".steno-push-owner.json"       # in a recorder folder on a remote: the recorder owning it
SHORT = 6                                   # hex digits of the id in the folder name: 16 M values


def recorder_id(state_dir: str, machine_id_path: str = "/etc/machine-id") -> str:
    """This recorder's identity for remote folders: derived from the machine id (never the id itself),
    else a random id kept in ``state_dir``; "" when neither is available (no ownership check then)."""
    try:
        mid = pathlib.Path(machine_id_path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        mid = ""
    if mid and mid != "uninitialized":
        return hashlib.sha256(f"steno-exportd recorder {mid}".encode()).hexdigest()[:32]
    return _kept_id(state_dir, RECORDER_ID_FILE, uuid.uuid4().hex, "recorder id",
                    "remote folders are not checked for ownership")


def board_id(state_dir: str, serial_path: str | None = None) -> str:
    """What tells this recorder from another that runs a copy of its system (an SD card image copied with its
    machine id, so with its recorder_id() and its folder on a shared store): derived from the board's serial number
    (the Raspberry Pi's: not on the card), else a random id kept in ``state_dir`` (a copy made before the daemon's
    first run has none yet); "" when neither is available (not checked then)."""
    try:
        serial = pathlib.Path(serial_path or BOARD_SERIAL).read_bytes().strip(b"\0\n ")
    except OSError:
        serial = b""
    if serial:
        return hashlib.sha256(b"steno-exportd board " + serial).hexdigest()[:16]
    return _kept_id(state_dir, BOARD_ID_FILE, uuid.uuid4().hex[:16], "board id",
                    "a copied system on another board is not told apart")[:32]


def _kept_id(state_dir: str, name: str, new: str, what: str, unchecked: str) -> str:
    """The id kept in ``state_dir``/``name``, made ``new`` when there is none: written whole and synced, then linked to
    its name, which never replaces (atomic.write_file, replace=False), so of several first runs at once exactly one
    id is kept and every caller gets the one the file holds. An empty file (a power cut before the id reached the
    card) is replaced, and the id read again from it. "" (logged, ``unchecked`` saying what that means) when
    unreadable or not saved."""
    path = pathlib.Path(state_dir or "/var/lib/steno-exportd") / name
    for _ in range(3):              # (made by another caller between the read and the link: read again)
        empty = False
        try:
            saved = path.read_text(encoding="ascii").strip()
            if saved:
                return saved
            empty = True
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as e:
            log.warning("%s %s unreadable (%s): %s", what, path, e, unchecked)
            return ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # (an empty one replaced: the last of several at once wins; each reads the file again)
            write_file(path, (new + "\n").encode("ascii"), 0o644, replace=empty)
            if empty:
                continue
            return new
        except FileExistsError:
            continue
        except OSError as e:
            log.warning("%s %s not saved (%s): %s", what, path, e, unchecked)
            return ""
    log.warning("%s %s could not be made (it kept changing or stayed empty): %s", what, path, unchecked)
    return ""


def this_board(cfg: Config) -> str:
    """board_id() of this recorder's state folder."""
    return board_id(cfg.state.dir)


def this_recorder(cfg: Config) -> str:
    """recorder_id() of the configured machine id file and state folder."""
    return recorder_id(cfg.state.dir, cfg.recorder.machine_id_file)


def host_name() -> str:
    """This host's name as text: the kernel takes any bytes as one, and those not UTF-8 (Python's surrogate escapes,
    which no UTF-8 file or request can hold) are U+FFFD."""
    return socket.gethostname().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def dns_name() -> str:
    """This host's name as other machines look it up (DNS, mDNS's <name>.local, a certificate's names): IDNA's
    ASCII form in lower case ("Café" is xn--caf-dma); "" when the host name cannot be one (a '/', a space, bytes
    not UTF-8: the kernel takes any bytes as a host name)."""
    try:
        name = host_name().lower().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    ok = 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))
    return name if ok else ""


def reachable_name() -> str:
    """How other devices on the LAN reach this machine, for links and the page's address: <dns_name>.local; where
    the host name cannot be looked up, this machine's first address that is not a loopback one, else localhost."""
    name = dns_name()
    if name:
        return f"{name}.local"
    import ipaddress

    import psutil
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return "localhost"


def host_folder() -> str:
    """The folder name versions before the fleet folders used by default: the bare host name (as a safe name: also
    the host's part of the rclone push's temp names)."""
    return safe_name(host_name(), "recorder")


def recorder_folder(cfg: Config, rid: str | None = None) -> str:
    """This recorder's folder on every remote (the engine's root folder there): smb.recorder_folder when
    set, else the host name and the id's first SHORT digits (the bare host name when there is no id)."""
    if cfg.smb.recorder_folder:
        return safe_name(cfg.smb.recorder_folder, "recorder")
    rid = this_recorder(cfg) if rid is None else rid
    host = host_name() or "recorder"
    return safe_name(f"{host}-{rid[:SHORT]}" if rid else host, "recorder")


def claim_body(rid: str, board: str = "") -> bytes:
    """The claim file of this recorder's folder on a remote (``board``: board_id(), when known)."""
    body = {"recorder_id": rid, "host": host_name(), "claimed": time.time(), **({"board": board} if board else {})}
    return json.dumps(body, indent=1, sort_keys=True).encode()


def claim_in_the_way(folder: str, where: str, kind: str) -> str:
    """What a push says when its claim cannot be written in ``folder`` on ``where`` ever: a ``kind`` (a folder,
    say) holds the claim file's name (someone's own: not tried again, not removed)."""
    what = "folder" if kind == "dir" else kind
    return (f"folder {folder} on {where}: a {what} named {CLAIM_NAME!r} is in the way of this recorder's claim file "
            f"(not ours, left alone): move it away")


def claim_owner(raw: bytes) -> tuple[str, str, str]:
    """(recorder id, host, board id: "" when it names none) a claim file names; ValueError when it is not a claim."""
    try:
        data = safeparse.json_loads(raw)
        owner, host, board = str(data["recorder_id"]), str(data.get("host") or ""), str(data.get("board") or "")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError(f"{CLAIM_NAME} is unreadable") from None
    return owner, host, board


ASIDE_PREFIX = CLAIM_NAME[:-len(".json")] + "-before-boards-"   # a claim written before boards, moved aside
_ASIDE = re.compile(re.escape(ASIDE_PREFIX) + r"[0-9a-f]{12}\.json")
ASIDES_READ = 8                             # aside claims read in one folder at most (one is usual: one per upgrade)


def board_given(old: bytes, move: Callable[[str, str], None], create: Callable[[bytes], bool],
                read: Callable[[], bytes | None], folder: str, where: str, rid: str, board: str) -> tuple[str, bool]:
    """A claim of this recorder's (``old``, its bytes) written before claims named a board (any board's then) given
    ``board``, so a copy of this system on another board is refused from now on; what the push says when it must
    stop ("" when the folder is this recorder's, on this board) and whether that is permanent (else the push is
    tried again); the caller raises it as its kind's error.

    Not rewritten in place: two copies of one system that both read the board-less claim each wrote theirs and read
    it back (write A, read A, write B, read B) and both kept the folder, pushing into it at once. The claim is moved
    aside first (``move``: a rename that never replaces) to a name its content gives, the same for every copy that
    read it: of two copies, the second's move is refused (the first's is there), or finds no claim to move. Only
    the one whose move succeeded makes the new claim (``create``: never replacing, as a first claim; False when a
    claim is there, the store's error raised); the other reads the claim there (``read``) and is refused for its
    board. That holds where the store's move itself refuses a name taken (SMB; WebDAV before rclone 1.63). Where it
    replaces (rclone's local, SFTP, S3, WebDAV from 1.63: "Overwrite: T") the name is looked up first, and a copy
    whose look-up and move fall on either side of the other's move and new claim moves that new claim aside in turn
    and makes its own: both keep the folder, in a window one look-up wide (as for two first claims there).

    The claim moved aside stays (a few hundred bytes): removed, the name would be free for a copy's late move of the
    new claim; and while no claim is there (the new one's create failed: a power cut, a store error; moved back when
    the store lets it) it names the folder's owner (aside_refusal). Success only when the claim read back names
    this board: a move that failed for the store's own fault (a network drop, a 5xx) left the board-less claim,
    and the push is tried again."""
    claim = f"{folder}/{CLAIM_NAME}"
    aside = f"{folder}/{ASIDE_PREFIX}{hashlib.sha256(old).hexdigest()[:12]}.json"
    failed: TargetError | None = None
    try:
        move(claim, aside)
    except TargetError as e:
        moved, failed = False, e    # (another push moved it first, it is gone, or the store failed: the claim
                                    # read says)
    else:
        moved = True
    if moved:
        try:
            if create(claim_body(rid, board)):
                log.info("folder %s on %s: its claim given this recorder's board", folder, where)
                return "", False
        except TargetError:
            _move_back(move, aside, claim)
            raise
        _move_back(move, aside, claim)      # (a claim made meanwhile keeps its name: whose, read below)
    try:
        owner, host, owner_board = claim_owner(read() or b"")
    except ValueError:          # (none, or unreadable: made or being made by a push of the same moment)
        return (f"folder {folder} on {where}: another push was giving its claim a board at the same moment (a copy "
                f"of this recorder's system?), or the store failed meanwhile; the push looks again"), False
    if owner != rid:
        return (f"folder {folder} on {where} belongs to another recorder ({claimant(host, owner)}); "
                f"set smb.recorder_folder"), True
    if said := copied_system(folder, where, host, owner_board, board):
        return said, True
    if owner_board == board:
        log.info("folder %s on %s: its claim given this recorder's board", folder, where)
    elif failed is not None and _for_now(failed):   # (the board-less claim still: the store failed for a moment)
        return (f"folder {folder} on {where}: its claim was not given this recorder's board yet (the store failed "
                f"to move it aside); the push is tried again"), False
    else:
        # the store will not move it (access denied: written under another account; a name taken and the claim still
        # there: a store whose move copies and cannot delete): the push goes on with the claim as it is (as before
        # boards), not tried again for ever; a copy of this system on another board is not told apart there
        log.warning("folder %s on %s: its claim cannot be given this recorder's board (%s); pushing on with it as it "
                    "is", folder, where, failed)
    return "", False


def _for_now(e: TargetError) -> bool:
    """A store's failure that the next try may not meet (a drop, a 5xx), not one that it will (permanent: a refusal
    of access; a name taken)."""
    return not getattr(e, "permanent", False) and e.kind != "permission" and not isinstance(e, NameTaken)


def _move_back(move: Callable[[str, str], None], aside: str, claim: str) -> None:
    """The claim moved aside moved back to its name, never replacing: a folder whose new claim was not made keeps a
    claim (else only its aside file names the owner, aside_refusal)."""
    try:
        move(aside, claim)
    except TargetError:
        pass                    # (a claim there, or the store failing still: the aside file stays)


def aside_refusal(names: Iterable[str], read: Callable[[str], bytes | None], folder: str, where: str,
                  rid: str) -> str:
    """What a push says when ``folder`` (its files ``names``) has no claim but a claim moved aside by board_given
    whose new claim was never made (a power cut between the two): its owner still owns the folder, so another
    recorder's id given the same folder name is refused there (the same id makes its claim anew, with its board);
    "" when there is none or each names ``rid``. ``read``: a file's bytes by name (None when gone)."""
    for name in sorted(n for n in names if _ASIDE.fullmatch(n))[:ASIDES_READ]:
        raw = read(name)
        if raw is None:
            continue
        try:
            owner, host, _ = claim_owner(raw)
        except ValueError:
            return (f"folder {folder} on {where}: it has no {CLAIM_NAME} but {name}, which is unreadable, so the owner "
                    f"of the folder is unknown; delete that file if this recorder owns the folder")
        if owner != rid:
            return (f"folder {folder} on {where} belongs to another recorder ({claimant(host, owner)}; its claim is "
                    f"in {name} while it is given a board); set smb.recorder_folder")
    return ""


def _shown(host: object) -> str:
    """A host name a claim (or an earlier version's manifest) gives, for a message: a file on a share that others
    write too, so printable and short, whatever it holds."""
    return safeparse.shorten(safeparse.printable(str(host or "")[:65]), 64) or "unknown host"


def claimant(host: object, owner: str) -> str:
    """"<host>, id <the start of its recorder id>" of a claim, for a message (_shown)."""
    return f"{_shown(host)}, id {safeparse.printable(owner[:8])}"


def copied_system(folder: str, where: str, host: str, owner_board: str, board: str) -> str:
    """What a push says when ``folder``'s claim names this recorder's id (its machine id) but another board: two
    recorders run one copied system image (an SD card cloned, /etc/machine-id with it), so both would push into one
    folder, each over the other's manifest and index; "" when the boards are the same or either is unknown."""
    if not owner_board or not board or owner_board == board:
        return ""
    return (f"folder {folder} on {where} belongs to another recorder with this recorder's machine id "
            f"({_shown(host)}, board {safeparse.printable(owner_board[:8])}; this one's {board[:8]}): its system was "
            f"copied from this one's, or this one's from it. Give this recorder a machine id of its own "
            f"(rm /etc/machine-id; systemd-machine-id-setup; then restart steno-exportd) or set smb.recorder_folder; "
            f"if this recorder replaced that one (its card moved to another board), delete {CLAIM_NAME} in that "
            f"folder")
