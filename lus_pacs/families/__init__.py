"""One package per model family: network, transforms, inference, training data, training,
evaluation and bundle writer; :mod:`lus_pacs.families.registry` lists them."""
