//! The memo: which chunks a repository already stores, and where (pack, offset), so a later
//! conversion — a new version of the image, or another image sharing its base layers —
//! references them instead of storing and uploading them again; and, per layer digest, the chunk
//! list of every file that layer's entries wrote, so a layer converted once is not read, hashed
//! or chunked again. A SQLite file; entries are only trusted once their packs are seen in the
//! registry.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use pronto_format::Compression;
use pronto_image::Digest;
use rusqlite::{params, Connection};

#[derive(Debug, thiserror::Error)]
pub enum MemoError {
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// One chunk of a remembered file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileChunk {
    /// The chunk's BLAKE3 digest, in hex.
    pub digest: String,
    /// Written `sha256:<hex>`, as before it was typed: rows stay readable.
    pub pack: Digest,
    pub pack_size: u64,
    pub offset: u64,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    pub compression: u8,
}

/// (layer digest, entry path) → (file size, chunks).
pub type LayerFiles = std::collections::HashMap<(Digest, Vec<u8>), (u64, Vec<FileChunk>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoChunk {
    pub pack: Digest,
    pub pack_size: u64,
    pub offset: u64,
    pub compressed_size: u32,
    pub compression: Compression,
}

pub struct Memo {
    conn: Connection,
    path: String,
}

/// What the memo holds for one conversion: the repository's chunks and the files of the image's
/// layers, as recorded. Usable only once [`Recalled::retain_present`] has dropped what points
/// into packs the registry no longer has.
#[derive(Debug, Default)]
pub struct Recalled {
    pub chunks: Vec<([u8; 32], MemoChunk)>,
    pub files: LayerFiles,
}

impl Recalled {
    /// Every pack the entries point into, once each.
    pub fn packs(&self) -> BTreeSet<Digest> {
        let chunks = self.chunks.iter().map(|(_, c)| c.pack.clone());
        let files = self
            .files
            .values()
            .flat_map(|(_, chunks)| chunks.iter().map(|c| c.pack.clone()));
        chunks.chain(files).collect()
    }

    /// Drops the entries that point into a pack not in `present` (deleted from the registry
    /// since it was recorded): a chunk, or a whole file if any of its chunks does.
    pub fn retain_present(&mut self, present: &HashSet<Digest>) {
        self.chunks.retain(|(_, c)| present.contains(&c.pack));
        self.files
            .retain(|_, (_, chunks)| chunks.iter().all(|c| present.contains(&c.pack)));
    }
}

impl Memo {
    pub fn open(path: &Path) -> Result<Memo, MemoError> {
        let p = path.display().to_string();
        let err = |source| MemoError::Sqlite {
            path: p.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS chunks (
               repo TEXT NOT NULL, digest BLOB NOT NULL, pack TEXT NOT NULL, pack_size INTEGER NOT NULL,
               offset INTEGER NOT NULL, compressed_size INTEGER NOT NULL, compression INTEGER NOT NULL,
               PRIMARY KEY (repo, digest));
             CREATE TABLE IF NOT EXISTS layer_files (
               repo TEXT NOT NULL, layer TEXT NOT NULL, path BLOB NOT NULL, size INTEGER NOT NULL,
               chunks TEXT NOT NULL,
               PRIMARY KEY (repo, layer, path));",
        )
        .map_err(err)?;
        Ok(Memo { conn, path: p })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> MemoError + '_ {
        |source| MemoError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The chunks recorded for `repo` and the files recorded for `layers` in `repo`.
    pub fn recall(&self, repo: &str, layers: &[Digest]) -> Result<Recalled, MemoError> {
        Ok(Recalled {
            chunks: self.chunks_of(repo)?,
            files: self.layer_files(repo, layers)?,
        })
    }

    /// Every chunk recorded for `repo`; malformed rows are skipped.
    pub fn chunks_of(&self, repo: &str) -> Result<Vec<([u8; 32], MemoChunk)>, MemoError> {
        let mut stmt = self
            .conn
            .prepare("SELECT digest, pack, pack_size, offset, compressed_size, compression FROM chunks WHERE repo = ?1")
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![repo], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (digest, pack, pack_size, offset, csize, comp) = row.map_err(self.err())?;
            let (Ok(digest), Ok(pack), Some(compression)) = (
                <[u8; 32]>::try_from(digest.as_slice()),
                pack.parse::<Digest>(),
                match comp {
                    0 => Some(Compression::None),
                    1 => Some(Compression::Zstd),
                    2 => Some(Compression::Lz4),
                    _ => None,
                },
            ) else {
                continue;
            };
            out.push((
                digest,
                MemoChunk {
                    pack,
                    pack_size: pack_size as u64,
                    offset: offset as u64,
                    compressed_size: csize as u32,
                    compression,
                },
            ));
        }
        Ok(out)
    }

    /// The remembered files of `layers` in `repo`.
    pub fn layer_files(&self, repo: &str, layers: &[Digest]) -> Result<LayerFiles, MemoError> {
        let mut out = LayerFiles::new();
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, chunks FROM layer_files WHERE repo = ?1 AND layer = ?2")
            .map_err(self.err())?;
        for layer in layers {
            let rows = stmt
                .query_map(params![repo, layer.to_string()], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(self.err())?;
            for row in rows {
                let (path, size, chunks) = row.map_err(self.err())?;
                // A row this version cannot read is a miss, not an error.
                if let Ok(chunks) = serde_json::from_str::<Vec<FileChunk>>(&chunks) {
                    out.insert((layer.clone(), path), (size as u64, chunks));
                }
            }
        }
        Ok(out)
    }

    pub fn record_layer_files(&mut self, repo: &str, files: &LayerFiles) -> Result<(), MemoError> {
        let path = self.path.clone();
        let err = |source| MemoError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare("INSERT OR REPLACE INTO layer_files VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(err)?;
            for ((layer, file), (size, chunks)) in files {
                let chunks = serde_json::to_string(chunks).expect("chunks serialize");
                stmt.execute(params![repo, layer.to_string(), file, *size as i64, chunks])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    pub fn record(
        &mut self,
        repo: &str,
        chunks: &[([u8; 32], MemoChunk)],
    ) -> Result<(), MemoError> {
        let path = self.path.clone();
        let err = |source| MemoError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare("INSERT OR REPLACE INTO chunks VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(err)?;
            for (d, c) in chunks {
                stmt.execute(params![
                    repo,
                    d.as_slice(),
                    c.pack.to_string(),
                    c.pack_size as i64,
                    c.offset as i64,
                    c.compressed_size as i64,
                    c.compression as u8 as i64
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "127.0.0.1:5000/fn/app";

    fn pack(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn chunk(pack_n: u8, offset: u64, compression: Compression) -> MemoChunk {
        MemoChunk {
            pack: pack(pack_n),
            pack_size: 40 << 30,
            offset,
            compressed_size: u32::MAX,
            compression,
        }
    }

    fn file_chunk(digest: u8, pack_n: u8, offset: u64) -> FileChunk {
        FileChunk {
            digest: hex::encode([digest; 32]),
            pack: pack(pack_n),
            pack_size: 1 << 20,
            offset,
            compressed_size: 100,
            uncompressed_size: 4096,
            compression: Compression::Zstd as u8,
        }
    }

    fn layer(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn open(dir: &tempfile::TempDir) -> Memo {
        Memo::open(&dir.path().join("memo.db")).unwrap()
    }

    fn sorted(mut v: Vec<([u8; 32], MemoChunk)>) -> Vec<([u8; 32], MemoChunk)> {
        v.sort_by_key(|(d, _)| *d);
        v
    }

    #[test]
    fn chunks_round_trip_every_field_per_repository() {
        let dir = tempfile::tempdir().unwrap();
        let mut memo = open(&dir);
        let mine = vec![
            ([1; 32], chunk(0xa, 0, Compression::None)),
            ([2; 32], chunk(0xa, 5 << 32, Compression::Zstd)),
            (
                [3; 32],
                chunk(0xb, u64::from(u32::MAX) + 1, Compression::Lz4),
            ),
        ];
        memo.record(REPO, &mine).unwrap();
        memo.record(
            "127.0.0.1:5000/other",
            &[([9; 32], chunk(0xc, 7, Compression::Zstd))],
        )
        .unwrap();
        assert_eq!(sorted(memo.chunks_of(REPO).unwrap()), mine);
        assert_eq!(
            memo.chunks_of("127.0.0.1:5000/other").unwrap(),
            [([9; 32], chunk(0xc, 7, Compression::Zstd))]
        );
        assert!(memo.chunks_of("127.0.0.1:5000/fn").unwrap().is_empty());

        // A chunk stored again (in a new pack) replaces the old row.
        let moved = chunk(0xd, 12, Compression::Lz4);
        memo.record(REPO, &[([2; 32], moved.clone())]).unwrap();
        let now = sorted(memo.chunks_of(REPO).unwrap());
        assert_eq!(now.len(), 3);
        assert_eq!(now[1], ([2; 32], moved));
    }

    #[test]
    fn layer_files_are_per_repository_and_layer() {
        let dir = tempfile::tempdir().unwrap();
        let mut memo = open(&dir);
        let mut files = LayerFiles::new();
        let name = b"usr/lib/caf\xe9".to_vec();
        let two = vec![file_chunk(1, 0xa, 0), file_chunk(2, 0xb, 100)];
        files.insert((layer(1), name.clone()), (4096 + 10, two.clone()));
        files.insert((layer(1), b"empty".to_vec()), (0, vec![]));
        files.insert(
            (layer(2), b"etc/x".to_vec()),
            (1, vec![file_chunk(3, 0xa, 200)]),
        );
        memo.record_layer_files(REPO, &files).unwrap();

        let one = memo.layer_files(REPO, &[layer(1)]).unwrap();
        assert_eq!(one.len(), 2);
        assert_eq!(one[&(layer(1), name)], (4096 + 10, two));
        assert_eq!(one[&(layer(1), b"empty".to_vec())], (0, vec![]));
        assert_eq!(
            memo.layer_files(REPO, &[layer(2), layer(1)]).unwrap(),
            files
        );
        assert!(memo.layer_files(REPO, &[layer(3)]).unwrap().is_empty());
        assert!(memo
            .layer_files("127.0.0.1:5000/other", &[layer(1), layer(2)])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn entries_in_packs_that_are_gone_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut memo = open(&dir);
        memo.record(
            REPO,
            &[
                ([1; 32], chunk(0xa, 0, Compression::Zstd)),
                ([2; 32], chunk(0xb, 0, Compression::Zstd)),
            ],
        )
        .unwrap();
        let mut files = LayerFiles::new();
        // Both chunks in a pack that stays; one chunk of two in a pack that is gone.
        files.insert(
            (layer(1), b"kept".to_vec()),
            (2, vec![file_chunk(1, 0xa, 0), file_chunk(4, 0xa, 9)]),
        );
        files.insert(
            (layer(1), b"half-gone".to_vec()),
            (2, vec![file_chunk(1, 0xa, 0), file_chunk(2, 0xb, 0)]),
        );
        files.insert((layer(1), b"empty".to_vec()), (0, vec![]));
        memo.record_layer_files(REPO, &files).unwrap();

        let mut recalled = memo.recall(REPO, &[layer(1)]).unwrap();
        assert_eq!(recalled.chunks.len(), 2);
        assert_eq!(recalled.files.len(), 3);
        assert_eq!(
            recalled.packs().into_iter().collect::<Vec<_>>(),
            [pack(0xa), pack(0xb)]
        );
        recalled.retain_present(&HashSet::from([pack(0xa)]));
        assert_eq!(
            recalled.chunks,
            [([1; 32], chunk(0xa, 0, Compression::Zstd))]
        );
        let mut kept: Vec<_> = recalled.files.keys().map(|(_, p)| p.clone()).collect();
        kept.sort();
        assert_eq!(kept, [b"empty".to_vec(), b"kept".to_vec()]);

        recalled.retain_present(&HashSet::new());
        assert!(recalled.chunks.is_empty());
        assert_eq!(
            recalled.files.len(),
            1,
            "a file without chunks needs no pack"
        );
    }

    #[test]
    fn a_reopened_memo_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = vec![([7; 32], chunk(0xa, 3, Compression::Lz4))];
        let mut files = LayerFiles::new();
        files.insert((layer(1), b"f".to_vec()), (5, vec![file_chunk(7, 0xa, 3)]));
        {
            let mut memo = open(&dir);
            memo.record(REPO, &chunks).unwrap();
            memo.record_layer_files(REPO, &files).unwrap();
        }
        let memo = open(&dir);
        let recalled = memo.recall(REPO, &[layer(1)]).unwrap();
        assert_eq!(recalled.chunks, chunks);
        assert_eq!(recalled.files, files);
    }

    #[test]
    fn rows_this_version_cannot_read_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo.db");
        let mut memo = Memo::open(&path).unwrap();
        memo.record(REPO, &[([1; 32], chunk(0xa, 0, Compression::Zstd))])
            .unwrap();
        let mut files = LayerFiles::new();
        files.insert(
            (layer(1), b"good".to_vec()),
            (1, vec![file_chunk(1, 0xa, 0)]),
        );
        memo.record_layer_files(REPO, &files).unwrap();
        let raw = Connection::open(&path).unwrap();
        let pack = pack(0xa).to_string();
        let sql = "INSERT INTO chunks VALUES (?1, ?2, ?3, 1, 0, 1, ?4)";
        raw.execute(sql, params![REPO, [2u8; 32].as_slice(), pack, 9]) // unknown compression
            .unwrap();
        raw.execute(sql, params![REPO, [3u8; 31].as_slice(), pack, 1]) // short digest
            .unwrap();
        let upper = format!("sha256:{}", "AB".repeat(32));
        raw.execute(sql, params![REPO, [4u8; 32].as_slice(), upper, 1])
            .unwrap();
        let layer1 = layer(1).to_string();
        let sql = "INSERT INTO layer_files VALUES (?1, ?2, ?3, 1, ?4)";
        raw.execute(sql, params![REPO, layer1, b"bad-json".as_slice(), "[{"])
            .unwrap();
        let bad_pack = r#"[{"digest":"00","pack":"sha512:00","pack_size":1,"offset":0,"compressed_size":1,"uncompressed_size":1,"compression":1}]"#;
        raw.execute(sql, params![REPO, layer1, b"bad-pack".as_slice(), bad_pack])
            .unwrap();

        let recalled = memo.recall(REPO, &[layer(1)]).unwrap();
        assert_eq!(
            recalled.chunks,
            [([1; 32], chunk(0xa, 0, Compression::Zstd))]
        );
        assert_eq!(recalled.files, files);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo.db");
        std::fs::write(&path, vec![0x5a; 64 << 10]).unwrap();
        let e = Memo::open(&path).err().expect("garbage is not a memo");
        assert_eq!(
            e.to_string(),
            format!("{}: file is not a database", path.display())
        );
    }
}
