//! Appending records: one `write(2)` per line, flushed, so a crash loses at
//! most the record being written; size-based rotation with a retention count.
