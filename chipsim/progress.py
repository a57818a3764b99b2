"""A progress bar that uses tqdm when it is installed (training environments) and a quiet
pass-through otherwise (the serving image does not need tqdm)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable, **kwargs: Any) -> Iterable:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # serving image: no bar
        return iterable
    return tqdm(iterable, **kwargs)
