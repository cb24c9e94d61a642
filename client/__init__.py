"""The edge side: client daemon, torch engine, export, evaluation and the local federation."""

import os

# transformers (5.25 and later, with the `kernels` package installed) swaps some
# layers' forward for one that fetches kernels from the Hugging Face hub. A
# replica must run the exact modules it was given, offline. (This does not stop
# that wrapper failing when a probe's two passes run in two threads; the client
# extra's transformers pin does: docs/decisions.md.)
os.environ.setdefault("USE_HUB_KERNELS", "0")
