//! Pack files: compressed chunks appended one after another, closed at a target size, each
//! named by its sha256 (the OCI blob digest).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use pronto_image::Digest;
use sha2::{Digest as _, Sha256};

/// A new pack, complete on disk: ready to upload.
#[derive(Debug, Clone)]
pub struct ClosedPack {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
}

/// A pack the index will reference.
#[derive(Debug)]
pub struct PackInfo {
    pub digest: Digest,
    pub size: u64,
    /// Where a new pack was written; `None` for one already in the registry.
    pub path: Option<PathBuf>,
}

enum Slot {
    New {
        path: PathBuf,
        file: Option<std::io::BufWriter<std::fs::File>>,
        hasher: Sha256,
        size: u64,
        digest: Option<Digest>,
    },
    Existing {
        digest: Digest,
        size: u64,
    },
}

/// Hands out pack slots in order of first use: new packs as they are opened, existing ones
/// (chunks found in the memo) as they are first referenced. The slot is the index's pack number.
pub struct Packer {
    dir: PathBuf,
    target: u64,
    slots: Vec<Slot>,
    /// The new pack being filled.
    open: Option<usize>,
    existing: HashMap<Digest, u32>,
    /// New packs closed and not yet taken by [`Packer::take_closed`].
    closed: Vec<ClosedPack>,
}

impl Packer {
    pub fn new(dir: PathBuf, target: u64) -> std::io::Result<Packer> {
        std::fs::create_dir_all(&dir)?;
        Ok(Packer {
            dir,
            target: target.max(1),
            slots: Vec::new(),
            open: None,
            existing: HashMap::new(),
            closed: Vec::new(),
        })
    }

    /// Appends a stored chunk; returns (pack slot, offset in the pack).
    pub fn append(&mut self, data: &[u8]) -> std::io::Result<(u32, u64)> {
        let slot = match self.open {
            Some(s) => s,
            None => {
                let path = self.dir.join(format!("pack-{}", self.slots.len()));
                let file =
                    std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
                self.slots.push(Slot::New {
                    path,
                    file: Some(file),
                    hasher: Sha256::new(),
                    size: 0,
                    digest: None,
                });
                self.open = Some(self.slots.len() - 1);
                self.slots.len() - 1
            }
        };
        let Slot::New {
            file, hasher, size, ..
        } = &mut self.slots[slot]
        else {
            unreachable!("the open slot is a new pack")
        };
        let offset = *size;
        file.as_mut()
            .expect("open pack has a file")
            .write_all(data)?;
        hasher.update(data);
        *size += data.len() as u64;
        if *size >= self.target {
            self.close(slot)?;
        }
        Ok((slot as u32, offset))
    }

    /// The slot of a pack already in the registry.
    pub fn existing(&mut self, digest: &Digest, size: u64) -> u32 {
        if let Some(s) = self.existing.get(digest) {
            return *s;
        }
        self.slots.push(Slot::Existing {
            digest: digest.clone(),
            size,
        });
        let s = (self.slots.len() - 1) as u32;
        self.existing.insert(digest.clone(), s);
        s
    }

    fn close(&mut self, slot: usize) -> std::io::Result<()> {
        if let Slot::New {
            path,
            file,
            hasher,
            size,
            digest,
        } = &mut self.slots[slot]
        {
            if let Some(mut f) = file.take() {
                f.flush()?;
                let d = Digest::from_bytes(std::mem::take(hasher).finalize().into());
                self.closed.push(ClosedPack {
                    digest: d.clone(),
                    size: *size,
                    path: path.clone(),
                });
                *digest = Some(d);
            }
        }
        if self.open == Some(slot) {
            self.open = None;
        }
        Ok(())
    }

    /// Closes the pack being filled, so that the next [`Packer::take_closed`] hands it out.
    pub fn close_open(&mut self) -> std::io::Result<()> {
        match self.open {
            Some(s) => self.close(s),
            None => Ok(()),
        }
    }

    /// The new packs closed since the last call, in order.
    pub fn take_closed(&mut self) -> Vec<ClosedPack> {
        std::mem::take(&mut self.closed)
    }

    /// Every slot, in order (call [`Packer::close_open`] first).
    pub fn finish(self) -> Vec<PackInfo> {
        self.slots
            .into_iter()
            .map(|s| match s {
                Slot::New {
                    path, size, digest, ..
                } => PackInfo {
                    digest: digest.expect("closed"),
                    size,
                    path: Some(path),
                },
                Slot::Existing { digest, size } => PackInfo {
                    digest,
                    size,
                    path: None,
                },
            })
            .collect()
    }
}
