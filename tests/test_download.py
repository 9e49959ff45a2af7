"""The downloader, offline: a pre-filled Hugging Face cache and a local HTTP server on 127.0.0.1.

The server supports Range requests like the real hosts, can cut a transfer after a number of bytes (an interrupted
download) and serves whatever bytes the test puts in its folder (a corrupted file).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from varianttrain import download
from varianttrain.download import DownloadError, ReleaseFile

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    cut_after: int | None = None  # bytes sent before the connection is dropped (once)
    requests: list[str]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.root / self.path.lstrip("/")
        self.requests.append(self.headers.get("Range") or "full")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-transfer
            return
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"root": root, "cut_after": None, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler
    httpd.shutdown()


def _entry(name: str, content: bytes, url: str, **kw) -> ReleaseFile:
    return ReleaseFile("test", name, "a test file", len(content), url=f"{url}/{name}", **kw)


def test_https_download_checks_sha256_and_renames(server, tmp_path):
    url, root, _ = server
    content = os.urandom(300_000)
    (root / "weights.pth").write_bytes(content)
    entry = _entry("weights.pth", content, url, sha256=hashlib.sha256(content).hexdigest())
    dest = tmp_path / "dest"
    dest.mkdir()
    path = download.fetch_url(entry, dest)
    assert path.read_bytes() == content
    assert not (dest / ".weights.pth.part").exists()
    assert download._read_record(dest)["weights.pth"]["sha256"] == hashlib.sha256(content).hexdigest()


def test_interrupted_transfer_leaves_no_final_file_and_a_rerun_resumes(server, tmp_path):
    url, root, handler = server
    content = os.urandom(500_000)
    (root / "big.npz").write_bytes(content)
    entry = _entry("big.npz", content, url, sha256=hashlib.sha256(content).hexdigest())
    dest = tmp_path / "dest"
    dest.mkdir()
    handler.cut_after = 200_000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download.fetch_url(entry, dest)
    assert not (dest / "big.npz").exists()
    assert (dest / ".big.npz.part").stat().st_size == 200_000
    path = download.fetch_url(entry, dest)  # the rerun asks only for the rest
    assert path.read_bytes() == content
    assert handler.requests[-1] == "bytes=200000-"


def test_checksum_mismatch_is_an_error_and_nothing_is_kept(server, tmp_path):
    url, root, _ = server
    (root / "weights.pth").write_bytes(b"not the published weights")
    entry = _entry("weights.pth", b"", url, sha256="0" * 64)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DownloadError, match="failed its check") as err:
        download.fetch_url(entry, dest)
    assert "0" * 64 in str(err.value)
    assert not (dest / "weights.pth").exists() and not (dest / ".weights.pth.part").exists()


def test_sha256_prefix_from_the_file_name_is_checked():
    inception = next(f for f in download.CATALOGUE if f.key == "inception")
    assert download.check_digest(inception, "6726825d" + "0" * 56) is None
    assert "does not start with 6726825d" in download.check_digest(inception, "f" * 64)


def _run_cli(args, tmp_path, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "varianttrain.download", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def _prefill_hf_cache(cache: Path, files: dict[str, bytes]) -> None:
    repo = cache / "models--FoundationVision--var"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_cli_links_weights_from_a_prefilled_cache_offline(tmp_path):
    cache = tmp_path / "hf"
    _prefill_hf_cache(cache, {"var_d16.pth": b"d16 weights", "vae_ch160v4096z32.pth": b"vqvae weights"})
    dest = tmp_path / "ckpts"
    proc = _run_cli(["vqvae", "var_d16", "--dest", str(dest), "--cache-dir", str(cache)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "will fetch into" in proc.stdout and "in the Hugging Face cache" in proc.stdout
    assert (dest / "var_d16.pth").read_bytes() == b"d16 weights"
    assert (dest / "vae_ch160v4096z32.pth").read_bytes() == b"vqvae weights"
    again = _run_cli(["vqvae", "var_d16", "--dest", str(dest), "--cache-dir", str(cache)], tmp_path)
    assert again.returncode == 0 and "everything requested is in" in again.stdout


def test_cli_offline_without_the_file_fails_clearly(tmp_path):
    cache = tmp_path / "hf"
    _prefill_hf_cache(cache, {})
    proc = _run_cli(["var_d30", "--dest", str(tmp_path / "d"), "--cache-dir", str(cache)], tmp_path)
    assert proc.returncode == 1
    assert "could not fetch var_d30.pth" in proc.stderr and "rerun resumes" in proc.stderr
    assert not (tmp_path / "d" / "var_d30.pth").exists()


def test_cli_fetches_https_files_through_a_mirror_and_lists_them(server, tmp_path):
    url, root, _ = server
    (root / "VIRTUAL_imagenet256_labeled.npz").write_bytes(b"reference batch")
    dest = tmp_path / "ckpts"
    proc = _run_cli(["adm_ref", "--dest", str(dest), "--mirror", url], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "VIRTUAL_imagenet256_labeled.npz").read_bytes() == b"reference batch"
    listing = _run_cli(["--list", "--dest", str(dest)], tmp_path)
    assert "[x] adm_ref" in listing.stdout and "fetched and checked" in listing.stdout
    assert "[ ] var_d30" in listing.stdout and "python -m varianttrain.download var_d30" in listing.stdout


def test_unknown_name_exits_2_naming_the_choices(tmp_path):
    proc = _run_cli(["var_d31"], tmp_path)
    assert proc.returncode == 2 and "unknown file or group 'var_d31'" in proc.stderr and "var_d30" in proc.stderr


def test_fetch_hint_names_the_command():
    assert download.fetch_hint("checkpoints/var_d30.pth") == "python -m varianttrain.download var_d30"
    assert download.fetch_hint("/models/vae_ch160v4096z32.pth") == \
        "python -m varianttrain.download vqvae --dest /models"
    assert download.fetch_hint("runs/x/last.ckpt") == ""
