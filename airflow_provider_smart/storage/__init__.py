"""Writing results to any ObjectStoragePath (local, S3, GCS) with atomic commits and state beside the data."""
