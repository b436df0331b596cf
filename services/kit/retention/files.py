"""A `FileCategory`'s files: found, counted and purged by their modification time.

Never follows a file outside the category's directory (rglob of its pattern) and never fails
on a file removed meanwhile (rotated, or purged by another call).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from services.kit.retention.categories import FileCategory


def files(category: FileCategory) -> list[tuple[Path, datetime]]:
    if not category.directory.is_dir():
        return []
    found = []
    for path in category.directory.rglob(category.pattern):
        try:
            if path.is_file():
                found.append((path, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        except FileNotFoundError:
            continue  # removed meanwhile (rotated, purged by another call)
    return found


def file_counts(
    category: FileCategory, cutoff: datetime | None
) -> tuple[datetime | None, int, int]:
    """(oldest file's time, files, expired files)."""
    found = files(category)
    oldest = min((when for _, when in found), default=None)
    expired = sum(1 for _, when in found if cutoff is not None and when < cutoff)
    return oldest, len(found), expired


def purge_files(
    category: FileCategory, cutoff: datetime, batch_size: int, dry_run: bool
) -> tuple[int, int, int]:
    """(files deleted, still expired, batches): the oldest `batch_size` expired files."""
    expired = sorted((when, path) for path, when in files(category) if when < cutoff)
    if dry_run:
        return 0, len(expired), 0
    deleted = 0
    for _, path in expired[:batch_size]:
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted, len(expired) - deleted, 1 if expired else 0
