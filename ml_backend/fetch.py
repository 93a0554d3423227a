"""The one way the backend reads an image named by a task: ``fetch_image(url, policy, cache_dir)``.

Why one guarded function: task data comes from whoever can create tasks in Label Studio, and /predict
and the embedding job used to open any URL, follow any redirect, read ``file://`` URLs and bare paths
(``/etc/passwd``), keep downloads of any size and wait as long as a slow sender liked. Here:

- Label Studio's local files (``/data/local-files/?d=...``) and other bare paths are read only from
  inside REID_AL_DOCUMENT_ROOT (symbolic links resolved first);
- http(s) only from Label Studio's own origin (LABEL_STUDIO_URL, which also serves ``/data/upload/...``)
  and the origins listed in REID_AL_IMAGE_ORIGINS; every redirect is checked the same way, and the API
  token goes to Label Studio's origin only;
- at most REID_AL_IMAGE_MAX_BYTES per image, announced or streamed;
- one total deadline per image (REID_AL_IMAGE_FETCH_SECONDS, or the caller's, whichever is earlier),
  enforced by a watchdog that shuts the socket down, so a server that trickles bytes cannot stretch it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

from ml_backend.errors import InputError, LabelStudioError
from ml_backend.pool import LOCAL_FILES_PATH
from ml_backend.settings import Settings, origin_of

__all__ = ["FetchPolicy", "fetch_image", "origin_of"]

MAX_REDIRECTS = 5
MAX_URL_LENGTH = 4096
_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}  # the schemes a download may use
LABEL_STUDIO_DATA = "/data/"  # Label Studio serves uploads and local files under it


@dataclass(frozen=True)
class FetchPolicy:
    """Where images may come from and how much of one may be read."""

    label_studio_url: str = ""
    api_key: str = ""
    document_root: str = ""
    origins: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(
            label_studio_url=settings.label_studio_url,
            api_key=settings.label_studio_api_key,
            document_root=settings.document_root,
            origins=settings.image_origin_list,
            max_bytes=settings.image_max_bytes,
            seconds=settings.image_fetch_seconds,
        )

    @property
    def label_studio_origin(self) -> str | None:
        return origin_of(self.label_studio_url) if self.label_studio_url else None

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (origin == self.label_studio_origin or origin in self.origins)


def fetch_image(
    url: str, policy: FetchPolicy, cache_dir: Path | None = None, *, deadline: float | None = None
) -> Path:
    """A local file holding the image ``url`` names, checked against ``policy``.

    ``deadline`` (time.monotonic()) is the caller's own bound; the earlier of it and
    ``policy.seconds`` from now applies. Refusals are ``InputError`` (field "url"); network failures
    are ``OSError`` (``TimeoutError`` past the deadline)."""
    if not isinstance(url, str) or not url:
        raise InputError("url", f"must be a non-empty string, got {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise InputError("url", f"longer than {MAX_URL_LENGTH} characters")
    limit = time.monotonic() + policy.seconds
    deadline = limit if deadline is None else min(deadline, limit)
    parts = urlsplit(url)
    if not parts.scheme and not parts.netloc:
        if not url.startswith("/"):
            raise InputError("url", f"{_shown(url)} is neither an http(s) URL nor an absolute path")
        if url.startswith(LOCAL_FILES_PATH) and policy.document_root:
            return _local(_local_files_path(url, policy.document_root), policy, url)
        if url.startswith(LABEL_STUDIO_DATA):
            if not policy.label_studio_url:
                raise InputError("url", f"{_shown(url)} is on Label Studio but LABEL_STUDIO_URL is not set")
            return _download(policy.label_studio_url.rstrip("/") + url, policy, cache_dir, deadline)
        if not policy.document_root:
            raise InputError(
                "url",
                f"{_shown(url)}: a bare path is read only under REID_AL_DOCUMENT_ROOT, which is not set",
            )
        return _local(_inside(Path(unquote(parts.path)), policy.document_root, url), policy, url)
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise InputError("url", f"scheme {parts.scheme!r} is not allowed (http and https only)")
    return _download(url, policy, cache_dir, deadline)


def _shown(url: str) -> str:
    return repr(url if len(url) <= 120 else url[:120] + "...")


def _local_files_path(url: str, document_root: str) -> Path:
    rel = parse_qs(urlsplit(url).query).get("d", [""])[0]
    if not rel:
        raise InputError("url", f"{_shown(url)} names no file (?d=...)")
    return _inside(Path(document_root) / unquote(rel), document_root, url)


def _inside(path: Path, document_root: str, url: str) -> Path:
    root = Path(document_root).resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise InputError("url", f"{_shown(url)} points outside REID_AL_DOCUMENT_ROOT")
    return resolved


def _local(path: Path, policy: FetchPolicy, url: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"image {_shown(url)}: no file at {path}")
    size = path.stat().st_size
    if size > policy.max_bytes:
        raise InputError(
            "url", f"{_shown(url)} is {size} bytes, more than REID_AL_IMAGE_MAX_BYTES={policy.max_bytes}"
        )
    return path


def _download(url: str, policy: FetchPolicy, cache_dir: Path | None, deadline: float) -> Path:
    origin = origin_of(url)
    if not policy.allows(origin):
        raise InputError(
            "url",
            f"{_shown(url)}: origin {origin or '?'} is neither LABEL_STUDIO_URL's nor "
            "listed in REID_AL_IMAGE_ORIGINS",
        )
    if cache_dir is None:
        raise InputError("url", f"cannot download {_shown(url)}: no cache directory")
    suffix = Path(urlsplit(url).path).suffix[:8] or ".img"
    target = cache_dir / (hashlib.sha1(url.encode()).hexdigest() + suffix)
    if target.is_file():
        return target
    for _ in range(MAX_REDIRECTS + 1):
        origin = origin_of(url)
        if not policy.allows(origin):
            raise InputError("url", f"redirected to {_shown(url)}, whose origin is not allowed")
        headers = {"User-Agent": "reid-al", "Accept": "image/*"}
        if policy.api_key and origin == policy.label_studio_origin:
            headers["Authorization"] = _label_studio_authorization(policy)
        location = _get(url, headers, policy, target, deadline)
        if location is None:
            return target
        url = urljoin(url, location)
    raise InputError("url", f"more than {MAX_REDIRECTS} redirects")


def _label_studio_authorization(policy: FetchPolicy) -> str:
    """The header Label Studio accepts for LABEL_STUDIO_API_KEY (a PAT is exchanged for an access token,
    shared with the process's API clients); a refused token is a PermissionError, an OSError like every
    other reason an image cannot be fetched, with the message saying which kind of token was tried."""
    from ml_backend.labelstudio import shared_auth

    try:
        return shared_auth(policy.label_studio_url, policy.api_key).header()
    except (ValueError, LabelStudioError) as exc:
        raise PermissionError(f"cannot authenticate to Label Studio for an image: {exc}") from exc


def _get(url: str, headers: dict[str, str], policy: FetchPolicy, target: Path, deadline: float) -> str | None:
    """One GET: writes the body to ``target`` and returns None, or returns a redirect's Location."""
    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"fetching {_shown(url)}: deadline passed")
    connection: http.client.HTTPConnection
    if parts.scheme.lower() == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=remaining, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=remaining)
    expired = threading.Event()
    opened: list[socket.socket] = []  # the connection hands its socket to the response: keep our own handle

    def cut() -> None:  # a blocked recv() returns at once when its socket is shut down
        expired.set()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(remaining, cut)
    watchdog.daemon = True
    watchdog.start()
    tmp = target.with_name(target.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        connection.connect()  # bounded by the connection's timeout (the time left)
        if connection.sock is not None:
            opened.append(connection.sock)
        if expired.is_set():
            cut()
        path = parts.path or "/"
        connection.request("GET", path + (f"?{parts.query}" if parts.query else ""), headers=headers)
        response = connection.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            if not location:
                raise OSError(f"{_shown(url)}: HTTP {response.status} without a Location")
            return location
        if response.status != 200:
            raise OSError(f"{_shown(url)}: HTTP {response.status}")
        announced = response.getheader("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > policy.max_bytes:
            raise InputError(
                "url",
                f"{_shown(url)} announces {announced} bytes, more than "
                f"REID_AL_IMAGE_MAX_BYTES={policy.max_bytes}",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with open(tmp, "wb") as out:
            while True:
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > policy.max_bytes:
                    raise InputError(
                        "url",
                        f"{_shown(url)} sends more than REID_AL_IMAGE_MAX_BYTES={policy.max_bytes} bytes",
                    )
                out.write(chunk)
        if expired.is_set():
            raise TimeoutError(f"fetching {_shown(url)} took longer than its deadline")
        os.replace(tmp, target)
        return None
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"fetching {_shown(url)} took longer than its deadline") from None
        if isinstance(exc, OSError):
            raise
        raise OSError(f"{_shown(url)}: {type(exc).__name__}: {exc}") from None
    finally:
        watchdog.cancel()
        connection.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
