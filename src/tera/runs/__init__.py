"""What a run leaves on disk, in one place: atomic file writes (`files`), and (further
modules) the listing and retention of checkpoints, the lock on a run folder, the run log and
the typed records that runs write and read back."""
