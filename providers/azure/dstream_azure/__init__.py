"""dstream providers for Azure.

- ``asb-output-provider`` / ``asb-input-provider``: Service Bus queues and topics
- ``azure-queue-output-provider`` / ``azure-queue-input-provider``: Storage queues
- ``azure-blob-output-provider``: JSON lines in append blobs

Outputs route by ``metadata.TableName`` to one queue per table and own those queues
(``dstream init|plan|status|destroy``); inputs settle messages only on ``committed``.
The Azure SDKs log HTTP traffic at INFO; they are kept at WARNING here so provider logs
stay readable (``DSTREAM_AZURE_SDK_LOG_LEVEL`` changes that). Secrets never reach a log.
"""

import logging
import os

logging.getLogger("azure").setLevel(os.environ.get("DSTREAM_AZURE_SDK_LOG_LEVEL", "WARNING").upper())

__version__ = "0.1.0"
__all__ = ["__version__"]
