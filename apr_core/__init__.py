"""apr core: plugin discovery, the model handle, tensor I/O and the CLI.

The core knows nothing about any technique; merge, prune, quantize, evaluate
and the rest arrive as plugins through the ``apr`` entry-point group.
Importing this package is cheap: torch is imported only where tensors are
touched. Plugin authors need ``hookimpl`` from here and the classes in
`apr_core.technique` and `apr_core.params`.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("apr")
