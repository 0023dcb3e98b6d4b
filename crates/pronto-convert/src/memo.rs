//! The memo: which chunks a repository already stores, and where (pack, offset), so a later
//! conversion — a new version of the image, or another image sharing its base layers —
//! references them instead of storing and uploading them again; and, per layer digest, the chunk
//! list of every file that layer's entries wrote, so a layer converted once is not read, hashed
//! or chunked again. A SQLite file; entries are only trusted once their packs are seen in the
//! registry.

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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone)]
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
