"""Fetch the released files a run needs: VAR / VQVAE weights from Hugging Face, FID inputs over HTTPS.

    python -m varianttrain.download                  # what train + eval need: vqvae, var_d30, inception, adm_ref
    python -m varianttrain.download var_d16          # CoDe's refiner (or any name / group below)
    python -m varianttrain.download --list           # what is in checkpoints/ and what is missing
    python -m varianttrain.download --dest /models --revision <commit>

Weights come from the Hugging Face repository FoundationVision/var through `huggingface_hub` (resumable, kept in
the shared Hugging Face cache, progress bar, `--revision` pins a commit) and are linked into the destination
(hard link when the cache is on the same file system, else a symbolic link, so an 8 GB file is never copied).
The FID inputs (torch-fidelity's Inception weights and the ADM reference batch) come over plain HTTPS into a
`.part` file that a rerun resumes (HTTP Range), are checked (SHA-256, or what is known of it) and only then renamed
to their final name, so a file under its final name is always complete.

Nothing here runs at import time, and nothing else in the package downloads: training and evaluation only read
files, and their "file missing" errors name the command of this module that fetches them (`fetch_hint`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from varianttrain.file_hash import sha256_file

HF_REPO = "FoundationVision/var"
DEFAULT_DEST = Path("checkpoints")  # relative to the working directory, like every path in configs/
RECORD_FILE = "downloads.json"  # in the destination: SHA-256 of every file this module fetched
CHUNK = 1 << 20


@dataclass(frozen=True)
class ReleaseFile:
    """One file of the release.

    Attributes:
        key: the name used on the command line.
        filename: its name in the repository / URL and in the destination.
        what: one line for `--list`.
        approx_bytes: size shown before a download when the server cannot be asked (offline, no cache).
        url: HTTPS source; None for files of the Hugging Face repository `HF_REPO`.
        sha256: the full digest when it is published; None otherwise.
        sha256_prefix: the digest prefix the file name carries (torch hub convention), checked when no full digest
            is known.
    """

    key: str
    filename: str
    what: str
    approx_bytes: int
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None


# Sizes: float32 parameters x 4 bytes (counted from the architectures) or the published file size.
CATALOGUE: tuple[ReleaseFile, ...] = (
    ReleaseFile("vqvae", "vae_ch160v4096z32.pth", "VQVAE tokenizer shared by every VAR (109 M parameters)",
                436_000_000),
    ReleaseFile("var_d16", "var_d16.pth", "VAR-d16 (311 M parameters): CoDe's refiner", 1_243_000_000),
    ReleaseFile("var_d20", "var_d20.pth", "VAR-d20 (601 M parameters)", 2_406_000_000),
    ReleaseFile("var_d24", "var_d24.pth", "VAR-d24 (1.0 B parameters)", 4_136_000_000),
    ReleaseFile("var_d30", "var_d30.pth", "VAR-d30 (2.0 B parameters): the model VARiant fine-tunes",
                8_042_000_000),
    ReleaseFile("inception", "weights-inception-2015-12-05-6726825d.pth",
                "torch-fidelity's Inception-v3 (FID / IS feature extractor)", 95_700_000,
                url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                    "weights-inception-2015-12-05-6726825d.pth",
                sha256_prefix="6726825d"),
    ReleaseFile("adm_ref", "VIRTUAL_imagenet256_labeled.npz",
                "ADM reference batch of ImageNet 256x256 (FID statistics mu / sigma)", 2_000_000_000,
                url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
                    "VIRTUAL_imagenet256_labeled.npz"),
)
GROUPS: dict[str, tuple[str, ...]] = {
    "train": ("vqvae", "var_d30"),
    "eval": ("vqvae", "var_d30", "inception", "adm_ref"),
    "default": ("vqvae", "var_d30", "inception", "adm_ref"),
    "all": tuple(f.key for f in CATALOGUE),
}
_BY_KEY = {f.key: f for f in CATALOGUE}
_BY_NAME = {f.filename: f for f in CATALOGUE}


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its check; the message says what to do."""


def fetch_hint(path: str | Path) -> str:
    """The command that fetches `path` (by its file name), or '' for files this module does not know."""
    entry = _BY_NAME.get(Path(path).name)
    if entry is None:
        return ""
    dest = Path(path).parent
    dest_arg = "" if _same_path(dest, DEFAULT_DEST) else f" --dest {dest}"
    return f"python -m varianttrain.download {entry.key}{dest_arg}"


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def resolve_keys(names: Sequence[str]) -> list[ReleaseFile]:
    """Catalogue entries for names and groups, in catalogue order, without duplicates."""
    wanted: set[str] = set()
    for name in names or ("default",):
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in _BY_KEY:
            wanted.add(name)
        else:
            choices = ", ".join([*GROUPS, *_BY_KEY])
            raise DownloadError(f"unknown file or group {name!r}; choose from {choices}")
    return [f for f in CATALOGUE if f.key in wanted]


def human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------------------------------- checking
def check_digest(entry: ReleaseFile, digest: str) -> str | None:
    """None when `digest` agrees with what is known of the file, else the reason."""
    if entry.sha256 and digest != entry.sha256:
        return f"SHA-256 {digest} differs from the published {entry.sha256}"
    if not entry.sha256 and entry.sha256_prefix and not digest.startswith(entry.sha256_prefix):
        return f"SHA-256 {digest} does not start with {entry.sha256_prefix} (the prefix in the file name)"
    return None


def _read_record(dest: Path) -> dict[str, dict]:
    path = dest / RECORD_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_record(dest: Path, filename: str, digest: str, size: int, source: str) -> None:
    record = _read_record(dest)
    record[filename] = {"sha256": digest, "bytes": size, "source": source}
    tmp = dest / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, dest / RECORD_FILE)


# ------------------------------------------------------------------------------------------------ hugging face
def _hf_info(entry: ReleaseFile, revision: str | None, cache_dir: Path | None):
    """`hf_hub_download(dry_run=True)`: size and whether it is cached; None when neither server nor cache answers."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(HF_REPO, entry.filename, revision=revision, cache_dir=cache_dir, dry_run=True)
    except Exception:  # noqa: BLE001 - offline without the file in the cache, or no network: size unknown
        return None


def fetch_hf(entry: ReleaseFile, dest: Path, revision: str | None = None, cache_dir: Path | None = None) -> Path:
    """Download into the Hugging Face cache (resumable) and link the result into `dest` under its own name."""
    from huggingface_hub import hf_hub_download

    try:
        cached = Path(hf_hub_download(HF_REPO, entry.filename, revision=revision, cache_dir=cache_dir))
    except Exception as err:  # noqa: BLE001 - the library raises many types; the user needs one message
        raise DownloadError(f"could not fetch {entry.filename} from huggingface.co/{HF_REPO}"
                            f"{f' at revision {revision}' if revision else ''}: {err}\n"
                            "A rerun resumes a partial download. Offline (HF_HUB_OFFLINE=1) only files already in "
                            "the Hugging Face cache can be used.") from err
    target = dest / entry.filename
    tmp = dest / f".{entry.filename}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(cached.resolve(), tmp)  # same file system: a second name for the cached blob, no copy
    except OSError:
        os.symlink(cached.resolve(), tmp)  # another file system: point at the cache instead of copying GBs
    os.replace(tmp, target)
    return target


# ------------------------------------------------------------------------------------------------------- https
def _progress(total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                file=sys.stderr, dynamic_ncols=True)


def fetch_url(entry: ReleaseFile, dest: Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """HTTPS download into `.<name>.part` (resumed with a Range request), checked, then renamed atomically."""
    url = url or entry.url
    target, part = dest / entry.filename, dest / f".{entry.filename}.part"
    have = part.stat().st_size if part.is_file() else 0
    total: int | None = None
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if have else "wb") as out, _progress(total, have, entry.filename) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: the .part file is already complete
            pass
        else:
            raise DownloadError(f"could not fetch {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as err:
        raise DownloadError(f"transfer of {entry.filename} from {url} stopped: {err}. The partial file {part} is "
                            "kept; run the same command again to resume.") from err
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"transfer of {entry.filename} stopped at {size} of {total} bytes; run the same "
                            "command again to resume.")
    digest = sha256_file(part)
    problem = check_digest(entry, digest)
    if problem:
        part.unlink()  # a corrupt file must not be resumed either
        raise DownloadError(f"{entry.filename} from {url} failed its check: {problem}. Nothing was kept under "
                            f"{target}; run the command again to download it afresh.")
    os.replace(part, target)
    _write_record(dest, entry.filename, digest, size, url)
    return target


# -------------------------------------------------------------------------------------------------------- main
def mirror_url(entry: ReleaseFile, mirror: str | None) -> str | None:
    """The URL with its directory replaced by `mirror` (a folder served elsewhere holding the same file names)."""
    if entry.url is None or not mirror:
        return entry.url
    return mirror.rstrip("/") + "/" + entry.filename


def plan(entries: Iterable[ReleaseFile], dest: Path, revision: str | None,
         cache_dir: Path | None) -> list[tuple[ReleaseFile, int | None, bool]]:
    """(entry, bytes to fetch or None if unknown, already present) for each requested file."""
    out = []
    for entry in entries:
        present = (dest / entry.filename).is_file()
        size: int | None = None
        if entry.url is None and not present:
            info = _hf_info(entry, revision, cache_dir)
            size = None if info is None else (0 if info.is_cached else info.file_size)
        elif not present:
            size = entry.approx_bytes
        out.append((entry, size, present))
    return out


def list_files(dest: Path) -> str:
    """The `--list` table: every catalogue file, present or missing, with its size and how to fetch it."""
    record = _read_record(dest)
    lines = [f"files in {dest}:"]
    for entry in CATALOGUE:
        path = dest / entry.filename
        if path.is_file():
            size = path.stat().st_size
            note = "fetched and checked" if entry.filename in record else "present"
            lines.append(f"  [x] {entry.key:10s} {entry.filename:45s} {human(size):>9s}  {note}")
        else:
            lines.append(f"  [ ] {entry.key:10s} {entry.filename:45s} {human(entry.approx_bytes):>9s}  missing: "
                         f"python -m varianttrain.download {entry.key}")
        lines.append(f"      {entry.what}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; exit status 0 when every requested file is in place, 2 on bad arguments, 1 on a failed transfer."""
    parser = argparse.ArgumentParser(
        description="Fetch the released VAR / VQVAE weights and the FID inputs.",
        epilog="files: " + ", ".join(f.key for f in CATALOGUE) + "; groups: "
               + ", ".join(f"{g} = {' '.join(k)}" for g, k in GROUPS.items() if g != "all") + ", all")
    parser.add_argument("names", nargs="*", help="files or groups (default: what training and evaluation need)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"destination folder (default {DEFAULT_DEST})")
    parser.add_argument("--list", action="store_true", help="show what is present in --dest and exit")
    parser.add_argument("--revision", help="Hugging Face commit / tag / branch to pin (default: main)")
    parser.add_argument("--cache-dir", type=Path, help="Hugging Face cache (default: HF_HOME's hub cache)")
    parser.add_argument("--mirror", help="base URL serving the HTTPS files under their file names (instead of the "
                                         "original hosts)")
    parser.add_argument("--force", action="store_true", help="fetch again files that are already present")
    args = parser.parse_args(argv)
    dest: Path = args.dest
    if args.list:
        print(list_files(dest))
        return 0
    try:
        entries = resolve_keys(args.names)
    except DownloadError as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 2
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"download: error: cannot create {dest}: {err}", file=sys.stderr)
        return 2
    todo = plan(entries, dest, args.revision, args.cache_dir)
    fetch = [(e, size) for e, size, present in todo if args.force or not present]
    for entry, _, present in todo:
        if present and not args.force:
            print(f"  present  {entry.filename}")
    if not fetch:
        print(f"everything requested is in {dest}")
        return 0
    known = [s for _, s in fetch if s is not None]
    total = human(sum(known)) + ("" if len(known) == len(fetch) else " + files of unknown size")
    print(f"will fetch into {dest} ({total}):")
    for entry, size in fetch:
        source = entry.url or f"huggingface.co/{HF_REPO}"
        shown = "in the Hugging Face cache" if size == 0 else human(size)
        print(f"  {entry.filename:45s} {shown:>24s}  from {source}")
    failed = []
    for entry, _ in fetch:
        try:
            if entry.url is None:
                fetch_hf(entry, dest, args.revision, args.cache_dir)
            else:
                if args.force:
                    (dest / entry.filename).unlink(missing_ok=True)
                fetch_url(entry, dest, mirror_url(entry, args.mirror))
            print(f"  done     {dest / entry.filename}")
        except DownloadError as err:
            failed.append(entry.filename)
            print(f"download: error: {err}", file=sys.stderr)
    if failed:
        print(f"download: {len(failed)} file(s) not fetched: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
