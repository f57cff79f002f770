"""What the node's encoding processes share: imported once by the server they are forked
from (:class:`lus_pacs.pipeline.Encoder`), so that each starts with it in memory shared with
the others instead of loading its own (highdicom's tables of the standard are about 60 MB of
Python objects, read on the first object made)."""

from __future__ import annotations

import contextlib
import gc

import lus_pacs.encode.files  # noqa: F401 - imported to be shared

with contextlib.suppress(ImportError):  # a later highdicom may name it otherwise: then each loads
    from highdicom._standard_utils import (  # type: ignore[attr-defined, unused-ignore]
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    get_module_attribute_map()
    get_iod_module_map()
    get_sop_class_iod_map()

# Out of the collector's reach: a collection in a forked process would otherwise write to every
# object's header and so copy the pages it shares with the server.
gc.freeze()
