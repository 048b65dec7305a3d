"""Task files: HCL in, validated models out."""

from dstream.config.loader import DEFAULT_FILE, check, lint, load
from dstream.config.models import Document, ProviderBlock, Task

__all__ = ["DEFAULT_FILE", "Document", "ProviderBlock", "Task", "check", "lint", "load"]
