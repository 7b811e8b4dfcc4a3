//! Where a group's snapshot lives while it is built, sent, received and
//! installed: a file in the store's directory, or a buffer for the stores
//! that live in memory (tests and the simulator, which must not touch real
//! files nor hand work to threads of the OS's choosing).
//!
//! A [`SnapshotFile`] starts unnamed ([`RaftLogStore::snapshot_create`]),
//! is written, and is then made its group's one kept snapshot
//! ([`RaftLogStore::snapshot_keep`], synced), which a crash does not lose:
//! an install interrupted by a crash resumes from it.
//!
//! [`RaftLogStore::snapshot_create`]: super::RaftLogStore::snapshot_create
//! [`RaftLogStore::snapshot_keep`]: super::RaftLogStore::snapshot_keep

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::raft_log::GroupId;
use crate::error::{Error, Result};

/// A snapshot's bytes: a file on disk or a buffer in memory.
#[derive(Debug)]
pub enum SnapshotFile {
    /// `part` is set while the file is not yet kept: it is removed when
    /// dropped (a snapshot abandoned halfway leaves nothing behind).
    Disk {
        file: std::fs::File,
        part: Option<PartPath>,
    },
    Memory(Cursor<Vec<u8>>),
}

impl SnapshotFile {
    /// An empty in-memory snapshot.
    pub fn memory() -> Self {
        Self::Memory(Cursor::new(Vec::new()))
    }

    /// All of it, from its start, in memory (for the in-memory stores).
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        match self {
            Self::Memory(c) => Ok(c.into_inner()),
            mut disk => {
                let mut bytes = Vec::new();
                disk.seek(SeekFrom::Start(0))
                    .and_then(|_| disk.read_to_end(&mut bytes))
                    .map_err(|e| Error::Storage(format!("reading a snapshot: {e}")))?;
                Ok(bytes)
            }
        }
    }
}

/// Bytes of a snapshot written between two syncs of its file.
const PACED_SYNC_BYTES: u64 = 8 << 20;

/// Writes into a snapshot file and syncs it every 8 MiB (`PACED_SYNC_BYTES`), so
/// that a large snapshot's pages are written out as it is built, never
/// piled up for its final sync (nor for another file's: on ext4 a sync of
/// the write-ahead log can wait for other files' dirty data).
#[derive(Debug)]
pub struct Paced {
    file: SnapshotFile,
    unsynced: u64,
}

impl Paced {
    pub fn new(file: SnapshotFile) -> Self {
        Self { file, unsynced: 0 }
    }

    pub fn into_file(self) -> SnapshotFile {
        self.file
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= PACED_SYNC_BYTES {
            if let SnapshotFile::Disk { file, .. } = &self.file {
                file.sync_data()?;
            }
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Read for SnapshotFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Disk { file, .. } => file.read(buf),
            Self::Memory(c) => c.read(buf),
        }
    }
}

impl Write for SnapshotFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Disk { file, .. } => file.write(buf),
            Self::Memory(c) => c.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Disk { file, .. } => file.flush(),
            Self::Memory(c) => c.flush(),
        }
    }
}

impl Seek for SnapshotFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            Self::Disk { file, .. } => file.seek(pos),
            Self::Memory(c) => c.seek(pos),
        }
    }
}

/// The path of a snapshot file not yet kept; removes the file when dropped.
#[derive(Debug)]
pub struct PartPath(Option<PathBuf>);

impl PartPath {
    /// The path, and the file is no longer removed on drop.
    fn release(mut self) -> PathBuf {
        self.0.take().expect("set until released")
    }
}

impl Drop for PartPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn io(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{context} {}", path.display());
    move |e| Error::Storage(format!("{context}: {e}"))
}

/// Snapshot files in one directory: `<group>.snap` for a group's kept
/// snapshot, `<n>.part` for those being written. What a crash leaves of the
/// latter is removed when the directory is opened again.
#[derive(Debug)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    /// Names the files being written (one process owns the directory: the
    /// store's lock says so).
    next_part: AtomicU64,
}

impl SnapshotDir {
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io("cannot list", &dir))? {
            let path = entry.map_err(io("cannot list", &dir))?.path();
            if path.extension().is_some_and(|e| e == "part") {
                std::fs::remove_file(&path).map_err(io("cannot remove", &path))?;
            }
        }
        Ok(Self {
            dir,
            next_part: AtomicU64::new(0),
        })
    }

    fn kept_path(&self, group: GroupId) -> PathBuf {
        self.dir.join(format!("{}.snap", group.0))
    }

    pub fn create(&self) -> Result<SnapshotFile> {
        let (file, part) = self.create_part()?;
        Ok(SnapshotFile::Disk {
            file,
            part: Some(part),
        })
    }

    fn create_part(&self) -> Result<(std::fs::File, PartPath)> {
        let n = self.next_part.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n}.part"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("cannot create", &path))?;
        Ok((file, PartPath(Some(path))))
    }

    /// Keeps `file` as `group`'s snapshot. A file from elsewhere (another
    /// store's, a buffer) is copied from its start into a new file first.
    pub fn keep(&self, group: GroupId, file: SnapshotFile) -> Result<()> {
        let (file, part) = match file {
            SnapshotFile::Disk {
                file,
                part: Some(part),
            } => (file, part),
            mut other => {
                let (mut copy, part) = self.create_part()?;
                other
                    .seek(SeekFrom::Start(0))
                    .and_then(|_| std::io::copy(&mut other, &mut copy))
                    .map_err(io("cannot copy a snapshot into", &self.dir))?;
                (copy, part)
            }
        };
        let kept = self.kept_path(group);
        file.sync_all().map_err(io("cannot sync", &kept))?;
        drop(file);
        let path = part.release();
        // A reader of the group's previous snapshot keeps its open file.
        std::fs::rename(&path, &kept).map_err(io("cannot rename to", &kept))?;
        self.sync_dir()
    }

    pub fn open_kept(&self, group: GroupId) -> Result<Option<SnapshotFile>> {
        let path = self.kept_path(group);
        match std::fs::File::open(&path) {
            Ok(file) => Ok(Some(SnapshotFile::Disk { file, part: None })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot open", &path)(e)),
        }
    }

    pub fn remove(&self, group: GroupId) -> Result<()> {
        let path = self.kept_path(group);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", &path)(e)),
        }
    }

    /// Makes a rename or removal in the directory durable.
    fn sync_dir(&self) -> Result<()> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync", &self.dir))
    }
}
