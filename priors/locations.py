"""Where a diffusers model lives (a local folder, a bundled name or a Hub id), and its JSON configs.

The Hugging Face Hub is asked once per process whether it answers
(:func:`hub_reachable`); when it does not, or ``HF_HUB_OFFLINE`` is set, Hub ids
are read from the local cache only, so a mistyped id fails in seconds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priors.bundled import bundled_path

#: Keyword arguments of ``load_prior`` that go to ``hf_hub_download``.
DOWNLOAD_OPTIONS = ("revision", "cache_dir", "local_files_only", "token")
#: Seconds the Hugging Face Hub gets to answer one request before it counts as out of reach
#: (huggingface_hub itself retries for minutes); ``HF_HUB_OFFLINE=1`` skips the Hub at once.
HUB_PROBE_TIMEOUT = 5.0
_HUB_REACHABLE: dict[str, bool] = {}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: What a prior folder must hold, for messages.
EXPECTED = (
    "a folder holding a diffusers UNet2DModel (config.json with _class_name UNet2DModel and "
    "scheduler_config.json beside it or in scheduler/) or a pipeline folder (model_index.json "
    "with unet/ and scheduler/)"
)


@dataclass
class ModelLocation:
    """Where a diffusers model lives: a local folder or a Hub repository id.

    ``unreachable`` records that a Hub file was neither reachable nor cached, so
    that a missing component is reported as a connection problem.
    """

    target: str
    local: bool
    unreachable: bool = field(default=False, init=False)
    #: why the Hub was not asked (offline mode, or no answer to the probe), for messages
    offline_reason: str = field(default="", init=False)

    def describe(self) -> str:
        return f"folder {self.target!r}" if self.local else f"Hugging Face Hub repository {self.target!r}"

    def error(self, problem: str) -> ValueError:
        """A one-line error for ``problem``, or for the Hub being out of reach."""
        if self.unreachable:
            offline = f" ({self.offline_reason})" if self.offline_reason else ""
            return ValueError(
                f"cannot load prior {self.target!r}: it is not a local folder, and the Hugging Face Hub "
                f"cannot be reached{offline} while the local cache lacks it; check the id, pass a local "
                "folder or go online once"
            )
        return ValueError(f"cannot load prior from {self.describe()}: {problem}")

    def read_json(self, filename: str, subfolder: str | None, options: dict[str, Any]) -> dict | None:
        """The parsed JSON object, or ``None`` when the location has no such file.

        A file that is not valid JSON, or whose top level is not an object, raises a
        ``ValueError`` naming it.
        """
        if self.local:
            path = Path(self.target, subfolder or "", filename)
            return self._parse_json(path) if path.is_file() else None
        return self._read_hub_json(filename, subfolder, options)

    def _parse_json(self, path: Path) -> dict:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self.error(f"{str(path)!r} is not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise self.error(f"{str(path)!r} holds a JSON {type(config).__name__}, not an object")
        return config

    def _read_hub_json(self, filename: str, subfolder: str | None, options: dict[str, Any]) -> dict | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        download = {k: v for k, v in options.items() if k in DOWNLOAD_OPTIONS}
        try:
            path = hf_hub_download(self.target, filename, subfolder=subfolder, **download)
        except LocalEntryNotFoundError:
            self.unreachable = True
            return None
        except EntryNotFoundError:
            return None
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise ValueError(
                f"cannot load prior {self.target!r}: it is not a local folder, and the Hugging Face Hub "
                f"answers {type(err).__name__} (check the id, revision and access token)"
            ) from None
        except OSError as err:
            reason = first_line(err)
            raise ValueError(f"cannot load prior {self.target!r} from the Hugging Face Hub: {reason}") from None
        return self._parse_json(Path(path))


def hub_offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers one request within :data:`HUB_PROBE_TIMEOUT` seconds.

    Asked once per process and endpoint.  When it does not answer, ``load_prior``
    reads Hub ids from the local cache only, so a mistyped id or a missing network
    fails in seconds instead of after huggingface_hub's minutes of retries.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_REACHABLE:
        try:
            get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT)
            _HUB_REACHABLE[endpoint] = True
        except Exception:  # any failure of the HTTP stack (requests or httpx, by version) means no answer
            _HUB_REACHABLE[endpoint] = False
    return _HUB_REACHABLE[endpoint]


def cache_only_when_offline(location: ModelLocation, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``local_files_only=True`` when the Hub is off (offline mode) or out of reach."""
    if location.local or options.get("local_files_only"):
        return options
    if hub_offline():
        location.offline_reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        location.offline_reason = f"no answer within {HUB_PROBE_TIMEOUT:g} s"
    else:
        return options
    return {**options, "local_files_only": True}


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _local_folder(name: str) -> ModelLocation | None:
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelLocation(str(path), local=True)
    if path.exists():
        raise ValueError(
            f"cannot load prior {name!r}: it is a file, not a folder; expected {EXPECTED} "
            "or an ADM checkpoint ending in .pt, .pth or .safetensors"
        )
    return None


def _bundled(name: str) -> ModelLocation | None:
    folder = bundled_path(name)
    return None if folder is None else ModelLocation(str(folder), local=True)


def _hub_repo(name: str) -> ModelLocation | None:
    return ModelLocation(name, local=False) if _HUB_ID.match(name) else None


#: Resolvers tried in order; each returns a location for names it recognises, else ``None``.
RESOLVERS: list[Callable[[str], ModelLocation | None]] = [_local_folder, _bundled, _hub_repo]
