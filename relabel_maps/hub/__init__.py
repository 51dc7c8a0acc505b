"""Label-map datasets on the Hugging Face Hub: ``hf://`` paths, the dataset card, push, pull and open.

``relabel_maps.open("hf://owner/repo[@revision][/path]")`` reads a dataset through huggingface_hub's
cache; :func:`push` and :func:`pull` move whole datasets. Transient failures are retried as a
:class:`RetryPolicy` says, and every Hub failure is raised as a :class:`~relabel_maps.errors.HubError`
(``HubNotFoundError``, ``HubAuthError``, ``HubNetworkError``). huggingface_hub (``pip install
"relabel-maps[hub]"``) is imported only by the functions that talk to the Hub.
"""

from __future__ import annotations

from ..errors import HubAuthError, HubError, HubNetworkError, HubNotFoundError
from ..layout import local_dataset_files
from .card import dataset_card
from .open import open_hub
from .paths import CARD_NAME, HF_SCHEME, PREVIEW_NAME, REPO_TYPE, HubPath, parse_hub_url, validate_repo_id
from .retry import RetryPolicy
from .sync import PlannedUpload, PushResult, plan_push, pull, push

__all__ = [
    "HF_SCHEME",
    "REPO_TYPE",
    "CARD_NAME",
    "PREVIEW_NAME",
    "HubPath",
    "PushResult",
    "PlannedUpload",
    "validate_repo_id",
    "parse_hub_url",
    "open_hub",
    "pull",
    "push",
    "plan_push",
    "dataset_card",
    "local_dataset_files",
    "RetryPolicy",
    "HubError",
    "HubNotFoundError",
    "HubAuthError",
    "HubNetworkError",
]
