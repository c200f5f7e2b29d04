"""No downloads at run time: `hf_offline()` puts the Hugging Face hub in offline mode for the length of a block
(loading timm weights or an open_clip checkpoint) and restores what was there before, also after an error.

The hub reads `HF_HUB_OFFLINE` when it is first imported, so once `huggingface_hub` is loaded its module constant
is switched as well; both are restored on exit. Environment variables belong to the whole process: do not run
such blocks in several threads at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

VARIABLE = "HF_HUB_OFFLINE"


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Within the block the Hugging Face hub never reaches the network; outside it, everything is as it was."""
    old_env = os.environ.get(VARIABLE)
    constants = sys.modules.get("huggingface_hub.constants")
    old_constant = getattr(constants, VARIABLE, None)
    os.environ[VARIABLE] = "1"
    if constants is not None:
        setattr(constants, VARIABLE, True)
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(VARIABLE, None)
        else:
            os.environ[VARIABLE] = old_env
        if constants is not None:
            setattr(constants, VARIABLE, old_constant)
