//! Where the event queue overflows to: a FIFO of byte records in an unnamed file, so that a
//! long containerd outage costs disk, not the shim's memory, and nothing is dropped up to a
//! bound.
//!
//! The file has no name (O_TMPFILE): it goes with the shim, which is right, since only this
//! shim can deliver the events in it; nothing is left behind when it is killed.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

/// How much the file's read part may grow before its disk blocks are given back.
const FREE_STEP: u64 = 1 << 20;

/// Records in order: first those in the file, then any that could not be written to it.
///
/// Guarantees: it never holds more than its limit in bytes (file and memory together): a
/// record that would go past it is dropped, with one error log line when that starts and one
/// saying how many were dropped once records fit again.
pub struct Spill {
    file: Option<File>,
    /// Offset of the next record to read, and of the end of the last one written.
    read: u64,
    write: u64,
    in_file: usize,
    /// Records the file could not take; they stay after the file's in the order.
    in_memory: VecDeque<Vec<u8>>,
    /// Where the file's disk blocks start: those before were given back once read.
    freed: u64,
    /// Bytes of the records held in memory.
    memory_bytes: u64,
    /// The most bytes held, and records dropped since the bound was last reached.
    limit: u64,
    dropped: u64,
    /// Where the file is, for the log.
    dir: PathBuf,
}

impl Spill {
    /// A spill in `dir` holding at most `limit` bytes; records stay in memory if no file can
    /// be made there.
    pub fn new(dir: &Path, limit: u64) -> Spill {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
            .inspect_err(|e| log::warn!("cannot spill events to {}: {e}; keeping them in memory", dir.display()))
            .ok();
        Spill {
            file,
            read: 0,
            write: 0,
            in_file: 0,
            freed: 0,
            in_memory: VecDeque::new(),
            memory_bytes: 0,
            limit,
            dropped: 0,
            dir: dir.into(),
        }
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.in_file + self.in_memory.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a record, or drops it when it would take the spill past its limit; returns
    /// whether it was kept.
    pub fn push(&mut self, record: Vec<u8>) -> bool {
        // The file's unread part, plus the memory, plus this record with its length prefix.
        let held = self.write - self.read + self.memory_bytes;
        if held + 4 + record.len() as u64 > self.limit {
            if self.dropped == 0 {
                log::error!(
                    "the event spill in {} holds {held} bytes, its bound is {}: dropping new events until containerd takes some",
                    self.dir.display(),
                    self.limit
                );
            }
            self.dropped += 1;
            return false;
        }
        if self.dropped > 0 {
            log::warn!("the event spill has room again; {} events were dropped while it was full", self.dropped);
            self.dropped = 0;
        }
        if self.in_memory.is_empty() {
            match self.append(&record) {
                Ok(()) => return true,
                Err(e) => log::warn!("spilling an event: {e}; keeping it in memory"),
            }
        }
        self.memory_bytes += 4 + record.len() as u64;
        self.in_memory.push_back(record);
        true
    }

    /// Takes the oldest record.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        if self.in_file > 0 {
            match self.read_next() {
                Ok(record) => return Some(record),
                Err(e) => {
                    log::error!("reading spilled events: {e}; {} of them are lost", self.in_file);
                    self.rewind();
                }
            }
        }
        let record = self.in_memory.pop_front()?;
        self.memory_bytes -= 4 + record.len() as u64;
        Some(record)
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let file = self.file.as_ref().ok_or_else(|| io::Error::other("no spill file"))?;
        let len = u32::try_from(record.len()).map_err(|_| io::Error::other("record too large"))?;
        let mut bytes = Vec::with_capacity(4 + record.len());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(record);
        file.write_all_at(&bytes, self.write)?;
        self.write += bytes.len() as u64;
        self.in_file += 1;
        Ok(())
    }

    fn read_next(&mut self) -> io::Result<Vec<u8>> {
        let file = self.file.as_ref().ok_or_else(|| io::Error::other("no spill file"))?;
        let mut len = [0u8; 4];
        file.read_exact_at(&mut len, self.read)?;
        let mut record = vec![0u8; u32::from_le_bytes(len) as usize];
        file.read_exact_at(&mut record, self.read + 4)?;
        self.read += 4 + record.len() as u64;
        self.in_file -= 1;
        if self.in_file == 0 {
            self.rewind();
        } else if self.read - self.freed >= FREE_STEP {
            // Give back the disk under what was read: while events keep coming as fast as
            // they go, the file never empties, and its size would grow past the bound.
            let upto = self.read - self.read % 4096;
            // SAFETY: fallocate on a file we own; a failure leaves the blocks allocated.
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            if unsafe { libc::fallocate(file.as_raw_fd(), mode, 0, upto as libc::off_t) } == 0 {
                self.freed = upto;
            }
        }
        Ok(record)
    }

    /// Empties the file: every record in it has been read (or cannot be).
    fn rewind(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
        (self.read, self.write, self.in_file, self.freed) = (0, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_the_file_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path(), 1 << 20);
        assert!(spill.file.is_some(), "O_TMPFILE works in a temp dir");
        for i in 0..100u32 {
            spill.push(i.to_le_bytes().repeat(i as usize));
        }
        assert_eq!(spill.len(), 100);
        for i in 0..50u32 {
            assert_eq!(spill.pop().unwrap(), i.to_le_bytes().repeat(i as usize));
        }
        spill.push(b"late".to_vec());
        for i in 50..100u32 {
            assert_eq!(spill.pop().unwrap(), i.to_le_bytes().repeat(i as usize));
        }
        assert_eq!(spill.pop().unwrap(), b"late");
        assert_eq!(spill.pop(), None);
        assert_eq!(spill.write, 0, "an emptied file starts over");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file has no name");
    }

    #[test]
    fn without_a_file_records_stay_in_memory_in_order() {
        let mut spill = Spill::new(Path::new("/nonexistent/tether-spill"), 1 << 20);
        spill.push(b"a".to_vec());
        spill.push(b"b".to_vec());
        assert_eq!((spill.pop(), spill.pop(), spill.pop()), (Some(b"a".to_vec()), Some(b"b".to_vec()), None));
    }

    #[test]
    fn the_bound_drops_new_records_until_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two 96-byte records with their 4-byte prefixes.
        for at in [dir.path(), Path::new("/nonexistent/tether-spill")] {
            let mut spill = Spill::new(at, 200);
            assert!(spill.push(vec![1; 96]));
            assert!(spill.push(vec![2; 96]));
            assert!(!spill.push(vec![3; 96]), "past the bound");
            assert!(!spill.push(vec![4; 1]), "still no room");
            assert_eq!(spill.len(), 2);
            assert_eq!(spill.pop(), Some(vec![1; 96]));
            assert!(spill.push(vec![5; 96]), "room again once one was taken");
            assert_eq!((spill.pop(), spill.pop(), spill.pop()), (Some(vec![2; 96]), Some(vec![5; 96]), None));
        }
    }
}
