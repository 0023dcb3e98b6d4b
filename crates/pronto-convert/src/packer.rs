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

#[cfg(test)]
mod tests {
    use pronto_format::{ChunkRef, Compression};

    use super::*;

    fn packer(target: u64) -> (tempfile::TempDir, Packer) {
        let dir = tempfile::tempdir().unwrap();
        let packer = Packer::new(dir.path().join("packs"), target).unwrap();
        (dir, packer)
    }

    #[test]
    fn a_pack_is_closed_once_it_reaches_the_target_and_named_by_its_sha256() {
        let (_dir, mut p) = packer(100);
        assert_eq!(p.append(&[1; 40]).unwrap(), (0, 0));
        assert_eq!(p.append(&[2; 40]).unwrap(), (0, 40));
        assert!(p.take_closed().is_empty(), "80 bytes: still open");
        assert_eq!(p.append(&[3; 40]).unwrap(), (0, 80));
        let closed = p.take_closed();
        assert_eq!(closed.len(), 1, "120 bytes: closed");
        assert!(p.take_closed().is_empty(), "handed out once");
        // Exactly the target closes too.
        assert_eq!(p.append(&[4; 60]).unwrap(), (1, 0));
        assert_eq!(p.append(&[5; 40]).unwrap(), (1, 60));
        let second = p.take_closed();
        assert_eq!(second.len(), 1);
        assert_eq!(p.append(&[6; 7]).unwrap(), (2, 0));
        assert!(p.take_closed().is_empty());
        p.close_open().unwrap();
        let third = p.take_closed();
        p.close_open().unwrap();
        assert!(p.take_closed().is_empty(), "nothing open, nothing closed");

        let want: [&[u8]; 3] = [
            &[[1; 40], [2; 40], [3; 40]].concat(),
            &[vec![4; 60], vec![5; 40]].concat(),
            &[6; 7],
        ];
        for (pack, want) in [closed, second, third].into_iter().flatten().zip(want) {
            let bytes = std::fs::read(&pack.path).unwrap();
            assert_eq!(bytes, want);
            assert_eq!(pack.size, bytes.len() as u64);
            assert_eq!(pack.digest, Digest::of(&bytes));
        }
    }

    #[test]
    fn stored_chunks_read_back_from_their_offsets() {
        let (_dir, mut p) = packer(64 << 10);
        let mut placed = Vec::new();
        for n in 0..40u32 {
            // Compressible and not, of odd sizes.
            let data: Vec<u8> = (0..5000 + n * 997)
                .map(|i| {
                    if n % 2 == 0 {
                        (i % 7) as u8
                    } else {
                        (i * n).to_le_bytes()[1]
                    }
                })
                .collect();
            let want = [Compression::Zstd, Compression::Lz4, Compression::None][n as usize % 3];
            let (stored, compression) = pronto_format::compress_chunk(&data, want);
            let (pack, offset) = p.append(&stored).unwrap();
            let chunk = ChunkRef {
                digest: pronto_format::chunk_digest(&data),
                pack,
                compression,
                offset,
                compressed_size: stored.len() as u32,
                uncompressed_size: data.len() as u32,
            };
            placed.push((chunk, data));
        }
        p.close_open().unwrap();
        let closed = p.take_closed();
        let packs = p.finish();
        assert!(packs.len() > 2, "several packs: {packs:?}");
        assert_eq!(packs.len(), closed.len());
        for (info, closed) in packs.iter().zip(&closed) {
            assert_eq!(info.digest, closed.digest);
            assert_eq!(info.size, closed.size);
            assert_eq!(info.path.as_ref(), Some(&closed.path));
        }
        for (chunk, data) in placed {
            let pack = &packs[chunk.pack as usize];
            let bytes = std::fs::read(pack.path.as_ref().unwrap()).unwrap();
            assert_eq!(Digest::of(&bytes), pack.digest);
            let range = chunk.pack_range();
            let stored = &bytes[range.start as usize..range.end as usize];
            assert_eq!(
                pronto_format::decompress_chunk(stored, &chunk).unwrap(),
                data
            );
        }
    }

    #[test]
    fn existing_packs_get_one_slot_each_in_order_of_first_use() {
        let (_dir, mut p) = packer(10);
        let (a, b) = (Digest::from_bytes([0xa; 32]), Digest::from_bytes([0xb; 32]));
        assert_eq!(p.existing(&a, 1000), 0);
        assert_eq!(p.append(&[1; 4]).unwrap(), (1, 0));
        assert_eq!(p.existing(&b, 2000), 2);
        assert_eq!(p.existing(&a, 1000), 0);
        // The open pack keeps filling between existing ones.
        assert_eq!(p.append(&[2; 6]).unwrap(), (1, 4));
        assert_eq!(p.append(&[3; 1]).unwrap(), (3, 0));
        assert_eq!(p.existing(&b, 2000), 2);
        p.close_open().unwrap();
        let closed = p.take_closed();
        assert_eq!(
            closed.len(),
            2,
            "existing packs are never handed out for upload"
        );
        let packs = p.finish();
        let summary: Vec<_> = packs
            .iter()
            .map(|i| (i.digest.clone(), i.size, i.path.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                (a, 1000, false),
                (closed[0].digest.clone(), 10, true),
                (b, 2000, false),
                (closed[1].digest.clone(), 1, true),
            ]
        );
    }
}
