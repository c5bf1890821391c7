"""Task images fetched the way Label Studio serves them (label-studio-sdk's ``get_local_path``).

Uploads (``/data/upload/...``), local files storage (``/data/local-files/?d=...``), cloud storage
(``s3://``, ``gs://``, ``azure-blob://``, presigned by Label Studio) and plain ``http(s)`` URLs. Label
Studio's own URLs need ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``; local files storage is read from
disk instead when ``LOCAL_FILES_DOCUMENT_ROOT`` names its root. Downloads are bounded in bytes, images in
pixels (:func:`grounded.core.images.load_image`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from grounded.core.errors import UserError
from grounded.core.images import ImageLoadError, LoadedImage, load_image
from grounded.core.lru import LruCache

__all__ = ["DEFAULT_MAX_BYTES", "ImageFetcher"]

#: the largest download accepted for one image
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _limited_session(max_bytes: int) -> Any:
    """A ``requests`` session whose GETs stop past ``max_bytes`` (by Content-Length, or while reading)."""
    import requests

    class LimitedSession(requests.Session):
        exceeded: str | None = None  # the refusal, kept: label-studio-sdk re-raises its first error instead

        def _refuse(self, response: requests.Response, reason: str) -> None:
            response.close()
            self.exceeded = reason
            raise UserError(reason)

        def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            kwargs.setdefault("timeout", 60)
            response = super().get(url, **{**kwargs, "stream": True})
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                self._refuse(response, f"image is {int(declared)} bytes, more than the limit of {max_bytes}")
            body = response.raw.read(max_bytes + 1, decode_content=True)
            if len(body) > max_bytes:
                self._refuse(response, f"image is more than the limit of {max_bytes} bytes")
            response._content = body
            return response

    return LimitedSession()


def _local_files(relative: str) -> str | None:
    """``?d=`` of a local files storage URL → a path under ``LOCAL_FILES_DOCUMENT_ROOT`` (None: download it)."""
    root = os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
    if not root or os.path.abspath(root) == os.path.abspath(os.sep):
        return None
    base = os.path.abspath(root)
    path = os.path.abspath(os.path.join(base, posixpath.normpath(relative).lstrip("/")))
    if os.path.commonpath([path, base]) != base:
        raise UserError(f"local files path {relative!r} leaves LOCAL_FILES_DOCUMENT_ROOT")
    return path


class ImageFetcher:
    """Task image URLs → :class:`LoadedImage`, the last few kept (a click re-reads nothing)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = 4) -> None:
        self.max_bytes = max_bytes
        self._images: LruCache[str, LoadedImage] = LruCache(keep)

    def __call__(self, url: str, task_id: int | None = None) -> LoadedImage:
        if not isinstance(url, str) or not url:
            raise UserError(f"task {task_id}: the image is not a URL: {url!r}")
        found = self._images.get(url)
        if found is not None:
            return found
        folder = tempfile.mkdtemp(prefix="grounded-ls-")
        try:
            path = self._download(url, task_id, folder)
            image = load_image(path, name=Path(path).stem)
        except ImageLoadError as exc:
            raise UserError(f"task {task_id}: image {url}: {exc.reason}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._images.put(url, image)
        return image

    def _download(self, url: str, task_id: int | None, folder: str) -> str:
        import requests
        from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

        if url.startswith("/data/") and "?d=" in url:  # local files storage: from disk when its root is set
            local = None
            with contextlib.suppress(FileNotFoundError, ValueError):  # no ?d= path, or one leaving the root
                local = ls_io.resolve_local_storage_file(url)
            local = local or _local_files(url.split("?d=", 1)[1])
            if local is not None:
                if not os.path.isfile(local):
                    raise UserError(f"task {task_id}: local files storage file not found: {local}")
                return local
        hint = (
            " (set LABEL_STUDIO_URL to the Label Studio address and LABEL_STUDIO_API_KEY to an access token;"
            " for local files storage, LOCAL_FILES_DOCUMENT_ROOT to its root)"
        )
        session = _limited_session(self.max_bytes)
        try:
            with ls_io.http_session(session):
                return str(
                    ls_io.get_local_path(url, cache_dir=folder, task_id=task_id, download_resources=True)
                )
        except UserError as exc:
            raise UserError(f"task {task_id}: image {url}: {exc}") from None
        except requests.HTTPError as exc:
            if session.exceeded:
                raise UserError(f"task {task_id}: image {url}: {session.exceeded}") from None
            status = exc.response.status_code if exc.response is not None else "?"
            why = " (is LABEL_STUDIO_API_KEY right?)" if status in (401, 403) else ""
            raise UserError(f"task {task_id}: image {url}: HTTP {status}{why}") from None
        except (requests.RequestException, FileNotFoundError, ValueError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"task {task_id}: image {url} cannot be fetched: {reason}{hint}") from None
        except Exception as exc:  # get_local_path raises a bare Exception for cloud URIs without a task id
            raise UserError(f"task {task_id}: image {url} cannot be fetched: {exc}{hint}") from None
