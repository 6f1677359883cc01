"""Offline scoring of files: `armo batch score IN OUT` — the service's model and scoring code, in-process, over
JSONL or Parquet, resumable, one row in, one row out (errors in an `error` column, never a lost row)."""
