//! Where the event queue overflows to: a FIFO of byte records in an unnamed file, so that a
//! long containerd outage costs disk, not the shim's memory, and nothing is dropped.
//!
//! The file has no name (O_TMPFILE): it goes with the shim, which is right, since only this
//! shim can deliver the events in it; nothing is left behind when it is killed.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

/// Records in order: first those in the file, then any that could not be written to it.
pub struct Spill {
    file: Option<File>,
    /// Offset of the next record to read, and of the end of the last one written.
    read: u64,
    write: u64,
    in_file: usize,
    /// Records the file could not take; they stay after the file's in the order.
    in_memory: VecDeque<Vec<u8>>,
}

impl Spill {
    /// A spill in `dir`; records stay in memory if no file can be made there.
    pub fn new(dir: &Path) -> Spill {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
            .inspect_err(|e| log::warn!("cannot spill events to {}: {e}; keeping them in memory", dir.display()))
            .ok();
        Spill { file, read: 0, write: 0, in_file: 0, in_memory: VecDeque::new() }
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.in_file + self.in_memory.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a record.
    pub fn push(&mut self, record: Vec<u8>) {
        if self.in_memory.is_empty() {
            match self.append(&record) {
                Ok(()) => return,
                Err(e) => log::warn!("spilling an event: {e}; keeping it in memory"),
            }
        }
        self.in_memory.push_back(record);
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
        self.in_memory.pop_front()
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
        }
        Ok(record)
    }

    /// Empties the file: every record in it has been read (or cannot be).
    fn rewind(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
        (self.read, self.write, self.in_file) = (0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_the_file_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path());
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
        let mut spill = Spill::new(Path::new("/nonexistent/tether-spill"));
        spill.push(b"a".to_vec());
        spill.push(b"b".to_vec());
        assert_eq!((spill.pop(), spill.pop(), spill.pop()), (Some(b"a".to_vec()), Some(b"b".to_vec()), None));
    }
}
