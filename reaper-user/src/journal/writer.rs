//! reap -> **journal (writing)**.
//!
//! Appending records: one `write(2)` per line, flushed, so a crash loses at
//! most the record being written; size-based rotation with a retention count.
//!
//! Why a single write: the file is opened with O_APPEND, and the kernel
//! appends one write(2) to a regular file as a unit (the offset update and
//! the copy happen under the inode lock), so several writers (the daemon and
//! a `reaper free` in a CI job) never interleave inside a line.

use std::fs::{File, OpenOptions};
use std::io;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Record;

/// How the journal is kept.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Rotate before a write that would make the file larger than this
    /// (None: never rotate).
    pub max_bytes: Option<u64>,
    /// How many rotated files to keep (`.1` newest .. `.keep` oldest).
    pub keep: u32,
    /// fdatasync after each record: survives a power cut, costs a disk flush.
    pub sync: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_bytes: None,
            keep: 5,
            sync: false,
        }
    }
}

/// An open journal.
#[derive(Debug)]
pub struct JournalWriter {
    path: PathBuf,
    file: File,
    opts: WriterOptions,
}

impl JournalWriter {
    /// Opens (creating) the journal: O_APPEND|O_CREAT|O_CLOEXEC|O_NOFOLLOW,
    /// mode 0600, its directory created 0700 when missing. A journal written
    /// as root must not be steered by what another user can put in a shared
    /// directory such as /tmp, so it refuses: a symlink at the path (ELOOP);
    /// a directory on the way that is a symlink owned by another user; a
    /// path that is not a regular file (a FIFO would block the writer); a
    /// file owned by another user (who could alter the records).
    pub fn open(path: &Path, opts: WriterOptions) -> io::Result<JournalWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            refuse_planted_links(dir)?;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| with_path(e, "cannot create the journal's directory", dir))?;
        }
        let file = open_append(path)?;
        Ok(JournalWriter {
            path: path.to_path_buf(),
            file,
            opts,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line, with one write(2).
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.append_line(&line)
    }

    /// Appends bytes that already end in a newline.
    pub fn append_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.follow_rotation()?;
        if let Some(max) = self.opts.max_bytes {
            let size = self.file.metadata()?.len();
            if size > 0 && size + line.len() as u64 > max {
                self.rotate()?;
            }
        }
        write_once(&self.file, line)
            .map_err(|e| with_path(e, "cannot append to the journal", &self.path))?;
        if self.opts.sync {
            // fdatasync(2).
            self.file
                .sync_data()
                .map_err(|e| with_path(e, "fdatasync failed on the journal", &self.path))?;
        }
        Ok(())
    }

    /// Another writer may have rotated the file under us: if the path no
    /// longer names our open file, reopen it, so we append to the live one.
    fn follow_rotation(&mut self) -> io::Result<()> {
        let ours = self.file.metadata()?;
        let same = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m.ino() == ours.ino() && m.dev() == ours.dev(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if !same {
            self.file = open_append(&self.path)?;
        }
        Ok(())
    }

    /// journal.jsonl -> .1 -> .2 ... -> .keep (the oldest is dropped), then a
    /// fresh file.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut s = self.path.clone().into_os_string();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        if self.opts.keep == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            std::fs::remove_file(numbered(self.opts.keep)).or_else(ignore_missing)?;
            for n in (1..self.opts.keep).rev() {
                std::fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, numbered(1)).or_else(ignore_missing)?;
        }
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Symlinks among the existing directories of `dir` must belong to root
/// or to reaper's own user: a link another user planted (e.g. in /tmp,
/// where fs.protected_symlinks may be off) would send root's writes where
/// that user chooses. Links root made (/var/run -> /run) are fine.
fn refuse_planted_links(dir: &Path) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let mut at = PathBuf::new();
    for part in dir.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() && m.uid() != 0 && m.uid() != me => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the journal's directory {} is a symlink owned by uid {}, which reaper refuses to follow (another user could point it anywhere); use a directory owned by root, e.g. /var/lib/reaper",
                        at.display(),
                        m.uid()
                    ),
                ));
            }
            Ok(_) => {}
            // The rest is created by open, as directories, not links.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(with_path(e, "cannot inspect the journal's directory", &at)),
        }
    }
    Ok(())
}

fn open_append(path: &Path) -> io::Result<File> {
    // O_NONBLOCK: opening a FIFO someone planted must fail (ENXIO), not
    // wait for a reader; it changes nothing for a regular file.
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // ELOOP from O_NOFOLLOW; in a sticky directory (/tmp) the kernel
            // answers a dangling link with EACCES instead: name the cause.
            _ if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => with_path(
                e,
                "the journal path is a symlink, which reaper refuses to follow; remove it or choose another path",
                path,
            ),
            Some(libc::ENXIO) => with_path(
                e,
                "the journal path is a FIFO or socket, not a file; remove it or choose another path",
                path,
            ),
            _ => with_path(e, "cannot open the journal", path),
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the journal path {} is not a regular file; remove it or choose another path",
                path.display()
            ),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the journal {} is owned by uid {}, not by reaper's user (uid {me}): someone else created it and could alter the records; remove it or choose another path",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(file)
}

/// One write(2) of the whole line. A short write (disk full, or a signal
/// mid-copy) is reported, not completed with a second write, which could
/// land after another writer's line and tear both.
fn write_once(file: &File, line: &[u8]) -> io::Result<()> {
    loop {
        // `Write::write` of a File is one write(2).
        let n = match (&*file).write(line) {
            Ok(n) => n,
            // EINTR before anything was written: nothing landed, retry whole.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes (disk full?)", line.len()),
            ));
        }
        return Ok(());
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {} ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Body, Record};
    use std::os::unix::fs::PermissionsExt;

    fn record(n: u64) -> Record {
        Record::new(
            "proc",
            Body::Reconcile {
                added: n,
                removed: 0,
            },
        )
    }

    #[test]
    fn creates_private_dir_and_file_and_appends_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/dir/journal.jsonl");
        let mut w = JournalWriter::open(&path, WriterOptions::default()).unwrap();
        w.append(&record(1)).unwrap();
        w.append(&record(2)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: Record = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            back.body,
            Body::Reconcile {
                added: 2,
                removed: 0
            }
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("sub/dir")), 0o700);
    }

    #[test]
    fn refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        let link = tmp.path().join("journal.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = JournalWriter::open(&link, WriterOptions::default()).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!target.exists());
    }

    #[test]
    fn refuses_a_fifo_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("journal.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No reader: a blocking open would hang here forever.
        let e = JournalWriter::open(&fifo, WriterOptions::default()).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(e.to_string().contains(&fifo.display().to_string()), "{e}");
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal.jsonl");
        let line_len = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        // Two records fit, the third rotates.
        let opts = WriterOptions {
            max_bytes: Some(line_len * 2 + 1),
            keep: 2,
            sync: true,
        };
        let mut w = JournalWriter::open(&path, opts).unwrap();
        for n in 0..7 {
            w.append(&record(n)).unwrap();
        }
        let read = |p: PathBuf| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| match serde_json::from_str::<Record>(l).unwrap().body {
                    Body::Reconcile { added, .. } => added,
                    _ => unreachable!(),
                })
                .collect()
        };
        assert_eq!(read(path.clone()), vec![6]);
        assert_eq!(read(tmp.path().join("journal.jsonl.1")), vec![4, 5]);
        assert_eq!(read(tmp.path().join("journal.jsonl.2")), vec![2, 3]);
        assert!(
            !tmp.path().join("journal.jsonl.3").exists(),
            "keep = 2 drops the oldest"
        );
    }

    #[test]
    fn a_writer_follows_another_writers_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("j.jsonl");
        let mut a = JournalWriter::open(&path, WriterOptions::default()).unwrap();
        let mut b = JournalWriter::open(
            &path,
            WriterOptions {
                max_bytes: Some(1),
                keep: 1,
                sync: false,
            },
        )
        .unwrap();
        a.append(&record(1)).unwrap();
        b.append(&record(2)).unwrap(); // rotates: record 1 goes to .1
        a.append(&record(3)).unwrap(); // must land in the new file, not .1
        let live = std::fs::read_to_string(&path).unwrap();
        assert_eq!(live.lines().count(), 2, "{live}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("j.jsonl.1"))
                .unwrap()
                .lines()
                .count(),
            1
        );
    }

    /// The single-write property, observed: many threads, each with its own
    /// open file description, append long lines at once; every line comes
    /// back whole. A writer that split a line into several writes would
    /// interleave here.
    #[test]
    fn concurrent_appends_never_tear_a_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("j.jsonl");
        let threads = 8;
        let per = 200;
        std::thread::scope(|s| {
            for t in 0..threads {
                let path = path.clone();
                s.spawn(move || {
                    let mut w = JournalWriter::open(&path, WriterOptions::default()).unwrap();
                    // ~16 KiB lines: bigger than a pipe buffer or a page, so
                    // only an atomic append keeps them whole.
                    let filler = format!("{t}").repeat(16 * 1024);
                    for i in 0..per {
                        let line = format!("{{\"t\":{t},\"i\":{i},\"fill\":\"{filler}\"}}\n");
                        w.append_line(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let mut count = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a torn line");
            let t = v["t"].as_u64().unwrap();
            assert!(v["fill"]
                .as_str()
                .unwrap()
                .chars()
                .all(|c| c.to_digit(10) == Some(t as u32)));
            count += 1;
        }
        assert_eq!(count, threads * per);
    }
}
