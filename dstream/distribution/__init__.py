"""Resolving ``provider_ref``: OCI images and ORAS executables, digests, the lock file."""
