"""Blob storage: the store behind a small protocol, and garbage collection of unreferenced blobs."""
