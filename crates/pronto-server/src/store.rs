//! The metadata store: embedded SQLite (`DATA_DIR/pronto.db`, WAL mode).
//!
//! One connection behind a mutex; every call runs on tokio's blocking pool. The control plane
//! writes rarely and SQLite serializes writers anyway, so a pool would buy nothing yet.
//!
//! A function row keeps its spec as JSON (the source of truth) beside the columns that are
//! queried or that change on their own schedule: the name (primary key), the pinned image,
//! times, and the acceleration status (NULL for `accelerationType: None`). Published versions
//! (and the configuration still serving during an update, as version 0) are rows of
//! `function_configs` with the same columns; aliases and provision configs have their own
//! tables; all are keyed by `functions.id` and go with the function.
//!
//! Schema changes are append-only [`MIGRATIONS`]; `schema_version` records how many ran. A
//! database from a newer Pronto is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::model::{
    format_time, AccelerationInfo, AccelerationStatus, Alias, Function, FunctionSpec, KeptImage,
    PinnedImage, ProvisionConfig, RegistryCredential, TraceSummary, Version,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "pronto.db";

/// Schema migrations, in order; migration `i` brings the schema to version `i + 1`. Never edit
/// a shipped one: append.
const MIGRATIONS: &[&str] = &[
    // 1: functions.
    "CREATE TABLE functions (
        name TEXT PRIMARY KEY NOT NULL,
        id TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        image_ref TEXT NOT NULL,
        image_digest TEXT NOT NULL,
        acceleration TEXT,
        created_time TEXT NOT NULL,
        updated_time TEXT NOT NULL
    ) STRICT;
    CREATE INDEX functions_image_digest ON functions (image_digest);",
    // 2: access traces (what a function's first accelerated start read, for prefetch), one
    // per function and image; they go with the function.
    "CREATE TABLE access_traces (
        function_name TEXT NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
        image_digest TEXT NOT NULL,
        chunks BLOB NOT NULL,
        recorded_time TEXT NOT NULL,
        PRIMARY KEY (function_name, image_digest)
    ) STRICT;",
    // 3: the pinned image's manifest and config, kept with the function so that a digest is
    // resolved against the registry once (NULL for rows written before).
    "ALTER TABLE functions ADD COLUMN image_manifest BLOB;
    ALTER TABLE functions ADD COLUMN image_config BLOB;",
    // 4: releases. `function_configs` holds configurations other than LATEST's own row:
    // published versions (1, 2, ...; numbers never reused, hence `next_version`) and, as
    // version 0, the configuration that keeps serving LATEST while an update's acceleration
    // prepares. Aliases name versions; provision configs keep instances of a qualifier warm.
    "ALTER TABLE functions ADD COLUMN next_version INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE function_configs (
        function_id TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        description TEXT NOT NULL,
        spec TEXT NOT NULL,
        image_ref TEXT NOT NULL,
        image_digest TEXT NOT NULL,
        acceleration TEXT,
        image_manifest BLOB,
        image_config BLOB,
        config_time TEXT NOT NULL,
        created_time TEXT NOT NULL,
        PRIMARY KEY (function_id, version)
    ) STRICT;
    CREATE INDEX function_configs_image_digest ON function_configs (image_digest);
    CREATE TABLE aliases (
        function_id TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        additional_version INTEGER,
        additional_weight REAL,
        description TEXT NOT NULL,
        created_time TEXT NOT NULL,
        updated_time TEXT NOT NULL,
        PRIMARY KEY (function_id, name)
    ) STRICT;
    CREATE TABLE provision_configs (
        function_id TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
        qualifier TEXT NOT NULL,
        target INTEGER NOT NULL,
        updated_time TEXT NOT NULL,
        PRIMARY KEY (function_id, qualifier)
    ) STRICT;",
    // 5: registry credentials stored under a name, for functions to refer to
    // (`registryConfig.credentialName`). The password is a secret: never returned by the API;
    // the database file is 0600 in a 0700 directory.
    "CREATE TABLE registry_credentials (
        name TEXT PRIMARY KEY NOT NULL,
        registry TEXT NOT NULL,
        username TEXT NOT NULL,
        password TEXT NOT NULL,
        created_time TEXT NOT NULL
    ) STRICT;",
    // 6: with an access trace, the profile of the start that recorded it (JSON of
    // `explain::StartProfile`: what `explain` predicts whole cold starts from).
    "ALTER TABLE access_traces ADD COLUMN start_profile TEXT;",
];

/// `function_configs.version` of the configuration still serving LATEST during an update.
const SERVING: i64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migrating database {path} to schema version {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this pronto supports \
         ({supported})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: usize,
    },
    #[error("making {path} private (0600): {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("function {0} already exists")]
    AlreadyExists(String),
    #[error("registry credential {0} already exists")]
    CredentialAlreadyExists(String),
    #[error("registry credential {0} not found")]
    CredentialNotFound(String),
    #[error("function {0} not found")]
    NotFound(String),
    #[error("function {from} cannot be renamed to {to}")]
    Rename { from: String, to: String },
    #[error("function {function} has no version {version}")]
    VersionNotFound { function: String, version: u32 },
    #[error("function {function} has no alias {alias}")]
    AliasNotFound { function: String, alias: String },
    #[error("function {function} already has an alias {alias}")]
    AliasAlreadyExists { function: String, alias: String },
    #[error("version {version} of function {function} is used by alias {alias}; point the alias elsewhere first")]
    VersionInUse {
        function: String,
        version: u32,
        alias: String,
    },
    #[error("function {function} has no provision config for qualifier {qualifier}")]
    ProvisionConfigNotFound { function: String, qualifier: String },
    #[error("stored function {name} is corrupt: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("{op}: {source}")]
    Query {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Which functions [`Store::list_functions`] returns: by name, ascending.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only names starting with this (case-sensitive).
    pub prefix: Option<String>,
    /// Only names after this one (the previous page's last name).
    pub after: Option<String>,
    pub limit: usize,
}

/// The metadata store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) and migrates `DATA_DIR/pronto.db`. Blocking.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // Rows hold secrets (registry credentials): the file and its WAL and shared-memory
        // files (which SQLite creates with the database's mode) are the daemon's alone.
        restrict_db_file(&path).map_err(|source| StoreError::Permissions {
            path: path.clone(),
            source,
        })?;
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // WAL: readers never block the writer; NORMAL is durable across process crashes (a power
        // loss may drop the last commits, not corrupt the file).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock happens inside a transaction, which rolled back as
            // it unwound: the connection is fine to reuse.
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await?
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.with_conn(|c| read_version(c).map_err(query("read schema version")))
            .await
    }

    /// Inserts a new function; [`StoreError::AlreadyExists`] if the name is taken.
    pub async fn create_function(&self, f: Function) -> Result<(), StoreError> {
        self.with_conn(move |c| {
            let row = Columns::of(&f)?;
            let r = c.execute(
                "INSERT INTO functions
                   (name, id, spec, image_ref, image_digest, acceleration, created_time,
                    updated_time, image_manifest, image_config)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    f.spec.function_name,
                    f.function_id,
                    row.spec,
                    row.image_ref,
                    row.image_digest,
                    row.acceleration,
                    row.created_time,
                    row.updated_time,
                    row.image_manifest,
                    row.image_config
                ],
            );
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::AlreadyExists(f.spec.function_name.clone()))
                }
                Err(source) => Err(StoreError::Query {
                    op: "insert function",
                    source,
                }),
            }
        })
        .await
    }

    /// True if a function is named `name`.
    pub async fn function_exists(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            c.query_row("SELECT 1 FROM functions WHERE name = ?1", [&name], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(query("look up function"))
        })
        .await
    }

    /// The function named `name`; [`StoreError::NotFound`] if there is none.
    pub async fn get_function(&self, name: &str) -> Result<Function, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| get(c, &name)).await
    }

    /// `f` with its access-trace summaries filled in (what the API shows; invocations and
    /// jobs do not need them, so reads leave them out).
    pub async fn with_trace(&self, mut f: Function) -> Result<Function, StoreError> {
        self.with_conn(move |c| {
            fill_trace(c, &mut f)?;
            Ok(f)
        })
        .await
    }

    /// Every function, a page at a time (for the jobs resumed at start).
    pub async fn all_functions(&self) -> Result<Vec<Function>, StoreError> {
        let (mut all, mut after) = (Vec::new(), None);
        loop {
            let page = self
                .list_functions(ListQuery {
                    prefix: None,
                    after: after.take(),
                    limit: 100,
                })
                .await?;
            let Some(last) = page.last() else {
                return Ok(all);
            };
            after = Some(last.spec.function_name.clone());
            all.extend(page);
        }
    }

    /// Functions by name, ascending, with their access-trace summaries.
    pub async fn list_functions(&self, q: ListQuery) -> Result<Vec<Function>, StoreError> {
        self.with_conn(move |c| {
            // substr, not LIKE: LIKE ignores ASCII case and treats `_` (valid in names) as a
            // wildcard.
            let mut stmt = c
                .prepare_cached(
                    "SELECT name, id, spec, image_ref, image_digest, acceleration, created_time,
                            updated_time, image_manifest, image_config
                     FROM functions
                     WHERE (?1 IS NULL OR substr(name, 1, length(?1)) = ?1)
                       AND (?2 IS NULL OR name > ?2)
                     ORDER BY name
                     LIMIT ?3",
                )
                .map_err(query("list functions"))?;
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![q.prefix, q.after, limit], Columns::read)
                .map_err(query("list functions"))?;
            let mut functions = rows
                .map(|r| r.map_err(query("list functions"))?.into_function())
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            for f in &mut functions {
                f.serving = config(c, &f.function_id, SERVING)?.map(|(_, _, f)| Box::new(f));
                fill_trace(c, f)?;
            }
            Ok(functions)
        })
        .await
    }

    /// Reads, changes (with `f`) and writes back the function named `name` in one transaction,
    /// so concurrent updates cannot lose each other's changes. A rename by `f` is refused
    /// ([`StoreError::Rename`]): the name is the key.
    pub async fn update_function<F>(&self, name: &str, f: F) -> Result<Function, StoreError>
    where
        F: FnOnce(&mut Function) + Send + 'static,
    {
        let name = name.to_string();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("begin update"))?;
            let mut function = get(&tx, &name)?;
            f(&mut function);
            if function.spec.function_name != name {
                // The name is the key; the transaction rolls back as it drops.
                return Err(StoreError::Rename {
                    from: name,
                    to: function.spec.function_name,
                });
            }
            let row = Columns::of(&function)?;
            tx.execute(
                "UPDATE functions
                 SET spec = ?2, image_ref = ?3, image_digest = ?4, acceleration = ?5,
                     updated_time = ?6, image_manifest = ?7, image_config = ?8
                 WHERE name = ?1",
                params![
                    name,
                    row.spec,
                    row.image_ref,
                    row.image_digest,
                    row.acceleration,
                    row.updated_time,
                    row.image_manifest,
                    row.image_config
                ],
            )
            .map_err(query("update function"))?;
            match &function.serving {
                Some(serving) => {
                    let created = format_time(serving.last_modified_time);
                    put_config(&tx, serving, SERVING, "", &created)?
                }
                None => {
                    tx.execute(
                        "DELETE FROM function_configs WHERE function_id = ?1 AND version = ?2",
                        params![function.function_id, SERVING],
                    )
                    .map_err(query("update function"))?;
                }
            }
            tx.commit().map_err(query("commit update"))?;
            Ok(function)
        })
        .await
    }

    /// The access trace recorded for `function` running `image_digest`, encoded as
    /// [`pronto_runtime::AccessTrace::to_bytes`].
    pub async fn access_trace(
        &self,
        function: &str,
        image_digest: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (function, image_digest) = (function.to_string(), image_digest.to_string());
        self.with_conn(move |c| {
            c.query_row(
                "SELECT chunks FROM access_traces WHERE function_name = ?1 AND image_digest = ?2",
                [&function, &image_digest],
                |r| r.get(0),
            )
            .optional()
            .map_err(query("read access trace"))
        })
        .await
    }

    /// The access trace of `function` running `image_digest` (as [`Store::access_trace`]) and
    /// the profile of the start that recorded it (JSON), if it was kept.
    pub async fn access_trace_and_profile(
        &self,
        function: &str,
        image_digest: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        let (function, image_digest) = (function.to_string(), image_digest.to_string());
        self.with_conn(move |c| {
            c.query_row(
                "SELECT chunks, start_profile FROM access_traces
                 WHERE function_name = ?1 AND image_digest = ?2",
                [&function, &image_digest],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(query("read access trace"))
        })
        .await
    }

    /// Keeps `profile` (JSON) with `function`'s trace of `image_digest`, if that trace exists.
    pub async fn set_start_profile(
        &self,
        function: &str,
        image_digest: &str,
        profile: String,
    ) -> Result<(), StoreError> {
        let (function, image_digest) = (function.to_string(), image_digest.to_string());
        self.with_conn(move |c| {
            c.execute(
                "UPDATE access_traces SET start_profile = ?3
                 WHERE function_name = ?1 AND image_digest = ?2",
                [&function, &image_digest, &profile],
            )
            .map(drop)
            .map_err(query("store start profile"))
        })
        .await
    }

    /// Stores `function`'s access trace for `image_digest`, replacing any, and drops its traces
    /// of other images (the function no longer runs them). Nothing happens if the function is
    /// gone.
    pub async fn put_access_trace(
        &self,
        function: &str,
        image_digest: &str,
        chunks: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (function, image_digest) = (function.to_string(), image_digest.to_string());
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("store access trace"))?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM functions WHERE name = ?1)",
                    [&function],
                    |r| r.get(0),
                )
                .map_err(query("store access trace"))?;
            if exists {
                // Traces of images the function no longer runs go; those of its versions (or
                // of the configuration still serving during an update) stay.
                tx.execute(
                    "DELETE FROM access_traces WHERE function_name = ?1
                       AND image_digest NOT IN (
                         SELECT c.image_digest FROM function_configs c
                         JOIN functions f ON f.id = c.function_id WHERE f.name = ?1)",
                    [&function],
                )
                .map_err(query("store access trace"))?;
                tx.execute(
                    "INSERT OR REPLACE INTO access_traces (function_name, image_digest, chunks, recorded_time)
                     VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![
                        function,
                        image_digest,
                        chunks,
                        format_time(OffsetDateTime::now_utc())
                    ],
                )
                .map_err(query("store access trace"))?;
            }
            tx.commit().map_err(query("store access trace"))
        })
        .await
    }

    /// Publishes `LATEST`'s configuration (the one its user set, even if an update is still
    /// preparing) as the next version.
    pub async fn publish_version(
        &self,
        name: &str,
        description: String,
    ) -> Result<Version, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("publish version"))?;
            let mut function = get(&tx, &name)?;
            function.serving = None;
            let next: i64 = tx
                .query_row(
                    "SELECT next_version FROM functions WHERE id = ?1",
                    [&function.function_id],
                    |r| r.get(0),
                )
                .map_err(query("publish version"))?;
            let version_id = u32::try_from(next).map_err(|_| StoreError::Corrupt {
                name: name.clone(),
                reason: format!("next version {next}"),
            })?;
            let created = crate::model::now();
            put_config(&tx, &function, next, &description, &format_time(created))?;
            tx.execute(
                "UPDATE functions SET next_version = ?2 WHERE id = ?1",
                params![function.function_id, next + 1],
            )
            .map_err(query("publish version"))?;
            tx.commit().map_err(query("publish version"))?;
            Ok(Version {
                version_id,
                description,
                created_time: created,
                function,
            })
        })
        .await
    }

    /// One published version.
    pub async fn get_version(&self, name: &str, version: u32) -> Result<Version, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let id = function_id(c, &name)?;
            let (description, created, function) =
                config(c, &id, i64::from(version))?.ok_or_else(|| StoreError::VersionNotFound {
                    function: name.clone(),
                    version,
                })?;
            Ok(Version {
                version_id: version,
                description,
                created_time: parse_time(&name, &created)?,
                function,
            })
        })
        .await
    }

    /// Published versions, newest first (`backward`) or oldest first, after version `after`
    /// in that order, at most `limit`.
    pub async fn list_versions(
        &self,
        name: &str,
        backward: bool,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let id = function_id(c, &name)?;
            let sql = if backward {
                "SELECT version FROM function_configs WHERE function_id = ?1 AND version > 0
                   AND (?2 IS NULL OR version < ?2) ORDER BY version DESC LIMIT ?3"
            } else {
                "SELECT version FROM function_configs WHERE function_id = ?1 AND version > 0
                   AND (?2 IS NULL OR version > ?2) ORDER BY version ASC LIMIT ?3"
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let versions: Vec<i64> = c
                .prepare_cached(sql)
                .and_then(|mut s| {
                    s.query_map(params![id, after, limit], |r| r.get(0))?
                        .collect()
                })
                .map_err(query("list versions"))?;
            let mut out = Vec::with_capacity(versions.len());
            for v in versions {
                if let Some((description, created, function)) = config(c, &id, v)? {
                    out.push(Version {
                        version_id: v as u32,
                        description,
                        created_time: parse_time(&name, &created)?,
                        function,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a version; refused while an alias points to it.
    pub async fn delete_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("delete version"))?;
            let id = function_id(&tx, &name)?;
            let alias: Option<String> = tx
                .query_row(
                    "SELECT name FROM aliases WHERE function_id = ?1
                       AND (version = ?2 OR additional_version = ?2) ORDER BY name LIMIT 1",
                    params![id, version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(query("delete version"))?;
            if let Some(alias) = alias {
                return Err(StoreError::VersionInUse {
                    function: name,
                    version,
                    alias,
                });
            }
            let n = tx
                .execute(
                    "DELETE FROM function_configs WHERE function_id = ?1 AND version = ?2",
                    params![id, version],
                )
                .map_err(query("delete version"))?;
            if n == 0 {
                return Err(StoreError::VersionNotFound {
                    function: name,
                    version,
                });
            }
            tx.execute(
                "DELETE FROM provision_configs WHERE function_id = ?1 AND qualifier = ?2",
                params![id, version.to_string()],
            )
            .map_err(query("delete version"))?;
            tx.commit().map_err(query("delete version"))
        })
        .await
    }

    /// Records a finished conversion of `image_digest` in the published versions of `name`
    /// that run it and are still `Preparing` (versions published before it finished).
    pub async fn record_version_acceleration(
        &self,
        name: &str,
        image_digest: &str,
        info: &AccelerationInfo,
    ) -> Result<usize, StoreError> {
        let (name, digest) = (name.to_string(), image_digest.to_string());
        let json = serde_json::to_string(info).map_err(|e| StoreError::Corrupt {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("record acceleration"))?;
            let Ok(id) = function_id(&tx, &name) else {
                return Ok(0);
            };
            let rows: Vec<(i64, Option<String>)> = tx
                .prepare(
                    "SELECT version, acceleration FROM function_configs
                     WHERE function_id = ?1 AND version > 0 AND image_digest = ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![id, digest], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(query("record acceleration"))?;
            let mut n = 0;
            for (version, acceleration) in rows {
                let preparing = acceleration
                    .and_then(|a| serde_json::from_str::<AccelerationInfo>(&a).ok())
                    .is_some_and(|a| a.status == AccelerationStatus::Preparing);
                if preparing {
                    tx.execute(
                        "UPDATE function_configs SET acceleration = ?3
                         WHERE function_id = ?1 AND version = ?2",
                        params![id, version, json],
                    )
                    .map_err(query("record acceleration"))?;
                    n += 1;
                }
            }
            tx.commit().map_err(query("record acceleration"))?;
            Ok(n)
        })
        .await
    }

    /// Creates (`create`) or replaces an alias; its versions must exist.
    pub async fn put_alias(
        &self,
        name: &str,
        alias: Alias,
        create: bool,
    ) -> Result<Alias, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("store alias"))?;
            let id = function_id(&tx, &name)?;
            for v in
                std::iter::once(alias.version_id).chain(alias.additional_version.map(|(v, _)| v))
            {
                if config(&tx, &id, i64::from(v))?.is_none() {
                    return Err(StoreError::VersionNotFound {
                        function: name,
                        version: v,
                    });
                }
            }
            let exists = tx
                .query_row(
                    "SELECT 1 FROM aliases WHERE function_id = ?1 AND name = ?2",
                    params![id, alias.alias_name],
                    |_| Ok(()),
                )
                .optional()
                .map_err(query("store alias"))?
                .is_some();
            if create && exists {
                return Err(StoreError::AliasAlreadyExists {
                    function: name,
                    alias: alias.alias_name,
                });
            }
            if !create && !exists {
                return Err(StoreError::AliasNotFound {
                    function: name,
                    alias: alias.alias_name,
                });
            }
            tx.execute(
                "INSERT OR REPLACE INTO aliases
                   (function_id, name, version, additional_version, additional_weight,
                    description, created_time, updated_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    alias.alias_name,
                    alias.version_id,
                    alias.additional_version.map(|(v, _)| v),
                    alias.additional_version.map(|(_, w)| w),
                    alias.description,
                    format_time(alias.created_time),
                    format_time(alias.last_modified_time)
                ],
            )
            .map_err(query("store alias"))?;
            tx.commit().map_err(query("store alias"))?;
            Ok(alias)
        })
        .await
    }

    pub async fn get_alias(&self, name: &str, alias: &str) -> Result<Alias, StoreError> {
        let (name, alias) = (name.to_string(), alias.to_string());
        self.with_conn(move |c| {
            let id = function_id(c, &name)?;
            c.query_row(
                &format!(
                    "SELECT {ALIAS_COLUMNS} FROM aliases WHERE function_id = ?1 AND name = ?2"
                ),
                params![id, alias],
                |r| read_alias(&name, r),
            )
            .optional()
            .map_err(query("get alias"))?
            .ok_or_else(|| StoreError::AliasNotFound {
                function: name.clone(),
                alias,
            })?
        })
        .await
    }

    /// Aliases by name, after `after`, at most `limit`.
    pub async fn list_aliases(
        &self,
        name: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Alias>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let id = function_id(c, &name)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {ALIAS_COLUMNS} FROM aliases WHERE function_id = ?1
                       AND (?2 IS NULL OR name > ?2) ORDER BY name LIMIT ?3"
                ))
                .map_err(query("list aliases"))?;
            let rows = stmt
                .query_map(params![id, after, limit], |r| read_alias(&name, r))
                .map_err(query("list aliases"))?;
            rows.map(|r| r.map_err(query("list aliases"))?).collect()
        })
        .await
    }

    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<(), StoreError> {
        let (name, alias) = (name.to_string(), alias.to_string());
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(query("delete alias"))?;
            let id = function_id(&tx, &name)?;
            let n = tx
                .execute(
                    "DELETE FROM aliases WHERE function_id = ?1 AND name = ?2",
                    params![id, alias],
                )
                .map_err(query("delete alias"))?;
            if n == 0 {
                return Err(StoreError::AliasNotFound {
                    function: name,
                    alias,
                });
            }
            tx.execute(
                "DELETE FROM provision_configs WHERE function_id = ?1 AND qualifier = ?2",
                params![id, alias],
            )
            .map_err(query("delete alias"))?;
            tx.commit().map_err(query("delete alias"))
        })
        .await
    }

    /// Sets how many instances of `qualifier` are kept warm (0 removes the config).
    pub async fn put_provision_config(&self, p: ProvisionConfig) -> Result<(), StoreError> {
        self.with_conn(move |c| {
            let id = function_id(c, &p.function_name)?;
            if p.target == 0 {
                c.execute(
                    "DELETE FROM provision_configs WHERE function_id = ?1 AND qualifier = ?2",
                    params![id, p.qualifier],
                )
            } else {
                c.execute(
                    "INSERT OR REPLACE INTO provision_configs (function_id, qualifier, target, updated_time)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id, p.qualifier, p.target, format_time(crate::model::now())],
                )
            }
            .map_err(query("store provision config"))?;
            Ok(())
        })
        .await
    }

    /// Provision configs: of one function, or of all (by function name, then qualifier).
    pub async fn provision_configs(
        &self,
        function: Option<&str>,
    ) -> Result<Vec<ProvisionConfig>, StoreError> {
        let function = function.map(str::to_string);
        self.with_conn(move |c| {
            if let Some(name) = &function {
                function_id(c, name)?;
            }
            let mut stmt = c
                .prepare_cached(
                    "SELECT f.name, p.qualifier, p.target FROM provision_configs p
                     JOIN functions f ON f.id = p.function_id
                     WHERE ?1 IS NULL OR f.name = ?1 ORDER BY f.name, p.qualifier",
                )
                .map_err(query("list provision configs"))?;
            let rows = stmt
                .query_map(params![function], |r| {
                    Ok(ProvisionConfig {
                        function_name: r.get(0)?,
                        qualifier: r.get(1)?,
                        target: r.get(2)?,
                    })
                })
                .map_err(query("list provision configs"))?;
            rows.map(|r| r.map_err(query("list provision configs")))
                .collect()
        })
        .await
    }

    /// Stores a named registry credential; [`StoreError::CredentialAlreadyExists`] if the name
    /// is taken.
    pub async fn create_credential(&self, cred: RegistryCredential) -> Result<(), StoreError> {
        self.with_conn(move |c| {
            let r = c.execute(
                "INSERT INTO registry_credentials (name, registry, username, password, created_time)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    cred.name,
                    cred.registry,
                    cred.username,
                    cred.password,
                    format_time(cred.created_time)
                ],
            );
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::CredentialAlreadyExists(cred.name.clone()))
                }
                Err(source) => Err(StoreError::Query {
                    op: "insert registry credential",
                    source,
                }),
            }
        })
        .await
    }

    /// Every named registry credential, by name.
    pub async fn credentials(&self) -> Result<Vec<RegistryCredential>, StoreError> {
        self.with_conn(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT name, registry, username, password, created_time
                     FROM registry_credentials ORDER BY name",
                )
                .map_err(query("list registry credentials"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(query("list registry credentials"))?;
            let mut out = Vec::new();
            for row in rows {
                let (name, registry, username, password, created) =
                    row.map_err(query("list registry credentials"))?;
                let created_time = parse_time(&format!("registry credential {name}"), &created)?;
                out.push(RegistryCredential {
                    name,
                    registry,
                    username,
                    password,
                    created_time,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a named registry credential; [`StoreError::CredentialNotFound`] if none.
    pub async fn delete_credential(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let n = c
                .execute("DELETE FROM registry_credentials WHERE name = ?1", [&name])
                .map_err(query("delete registry credential"))?;
            if n == 0 {
                return Err(StoreError::CredentialNotFound(name));
            }
            Ok(())
        })
        .await
    }

    /// Deletes the function named `name`; [`StoreError::NotFound`] if there is none.
    pub async fn delete_function(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            let n = c
                .execute("DELETE FROM functions WHERE name = ?1", [&name])
                .map_err(query("delete function"))?;
            if n == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }
}

/// Creates `path` 0600 if it is missing, and removes group and other bits from it and from
/// its `-wal` and `-shm` files if they exist (a database written by an older daemon).
fn restrict_db_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::metadata(&name) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600))?
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn query(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

fn read_version(c: &Connection) -> Result<i64, rusqlite::Error> {
    c.query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map(|v| v.unwrap_or(0))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |version| {
        move |source| StoreError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        }
    };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
         INSERT INTO schema_version (version)
           SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);",
    )
    .map_err(err(0))?;
    let found = read_version(conn).map_err(err(0))?;
    if found > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i + 1;
        // Each migration and its version bump commit together, so a crash leaves a schema that
        // matches its recorded version.
        let tx = conn.transaction().map_err(err(version))?;
        tx.execute_batch(sql).map_err(err(version))?;
        tx.execute("UPDATE schema_version SET version = ?1", [version as i64])
            .map_err(err(version))?;
        tx.commit().map_err(err(version))?;
        tracing::info!(path = %path.display(), version, "migrated database schema");
    }
    Ok(())
}

fn get(c: &Connection, name: &str) -> Result<Function, StoreError> {
    let mut f = c
        .prepare_cached(
            "SELECT name, id, spec, image_ref, image_digest, acceleration, created_time,
                    updated_time, image_manifest, image_config
             FROM functions WHERE name = ?1",
        )
        .and_then(|mut s| s.query_row([name], Columns::read).optional())
        .map_err(query("get function"))?
        .ok_or_else(|| StoreError::NotFound(name.to_string()))?
        .into_function()?;
    f.serving = config(c, &f.function_id, SERVING)?.map(|(_, _, f)| Box::new(f));
    Ok(f)
}

/// Sets `f.trace` (and its serving configuration's) from `access_traces`.
fn fill_trace(c: &Connection, f: &mut Function) -> Result<(), StoreError> {
    let name = f.spec.function_name.clone();
    let summary = |digest: String| -> Result<Option<TraceSummary>, StoreError> {
        let row: Option<(i64, String)> = c
            .prepare_cached(
                "SELECT length(chunks) / 32, recorded_time FROM access_traces
                 WHERE function_name = ?1 AND image_digest = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![name, digest], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(query("read access trace"))?;
        row.map(|(chunks, t)| {
            Ok(TraceSummary {
                chunks: chunks.max(0) as u64,
                recorded_time: parse_time(&name, &t)?,
            })
        })
        .transpose()
    };
    f.trace = summary(f.image.manifest_digest.to_string())?;
    if let Some(serving) = &mut f.serving {
        serving.trace = summary(serving.image.manifest_digest.to_string())?;
    }
    Ok(())
}

/// The configuration row `version` of a function (by id): (description, created, config).
fn config(
    c: &Connection,
    function_id: &str,
    version: i64,
) -> Result<Option<(String, String, Function)>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT f.name, f.id, c.spec, c.image_ref, c.image_digest, c.acceleration,
                    f.created_time, c.config_time, c.image_manifest, c.image_config,
                    c.description, c.created_time
             FROM function_configs c JOIN functions f ON f.id = c.function_id
             WHERE c.function_id = ?1 AND c.version = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![function_id, version], |r| {
                Ok((
                    Columns::read(r)?,
                    r.get::<_, String>(10)?,
                    r.get::<_, String>(11)?,
                ))
            })
            .optional()
        })
        .map_err(query("get function configuration"))?;
    row.map(|(cols, description, created)| Ok((description, created, cols.into_function()?)))
        .transpose()
}

/// Writes `f`'s configuration as row `version` of its function (replacing it).
fn put_config(
    c: &Connection,
    f: &Function,
    version: i64,
    description: &str,
    created: &str,
) -> Result<(), StoreError> {
    let row = Columns::of(f)?;
    c.execute(
        "INSERT OR REPLACE INTO function_configs
           (function_id, version, description, spec, image_ref, image_digest, acceleration,
            image_manifest, image_config, config_time, created_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            f.function_id,
            version,
            description,
            row.spec,
            row.image_ref,
            row.image_digest,
            row.acceleration,
            row.image_manifest,
            row.image_config,
            row.updated_time,
            created
        ],
    )
    .map_err(query("store function configuration"))?;
    Ok(())
}

fn function_id(c: &Connection, name: &str) -> Result<String, StoreError> {
    c.query_row("SELECT id FROM functions WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .map_err(query("look up function"))?
    .ok_or_else(|| StoreError::NotFound(name.to_string()))
}

fn parse_time(name: &str, s: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| StoreError::Corrupt {
        name: name.to_string(),
        reason: format!("time {s:?}: {e}"),
    })
}

fn read_alias(function: &str, r: &Row<'_>) -> rusqlite::Result<Result<Alias, StoreError>> {
    let (name, version, extra, weight, description, created, updated): (
        String,
        i64,
        Option<i64>,
        Option<f64>,
        String,
        String,
        String,
    ) = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    );
    Ok((|| {
        let version_id = |v: i64| {
            u32::try_from(v).map_err(|_| StoreError::Corrupt {
                name: function.to_string(),
                reason: format!("alias {name}: version {v}"),
            })
        };
        Ok(Alias {
            version_id: version_id(version)?,
            additional_version: match (extra, weight) {
                (Some(v), Some(w)) => Some((version_id(v)?, w)),
                _ => None,
            },
            description,
            created_time: parse_time(function, &created)?,
            last_modified_time: parse_time(function, &updated)?,
            alias_name: name,
        })
    })())
}

const ALIAS_COLUMNS: &str =
    "name, version, additional_version, additional_weight, description, created_time, updated_time";

/// A `functions` row as text, both ways.
struct Columns {
    name: String,
    id: String,
    spec: String,
    image_ref: String,
    image_digest: String,
    acceleration: Option<String>,
    created_time: String,
    updated_time: String,
    image_manifest: Option<Vec<u8>>,
    image_config: Option<Vec<u8>>,
}

impl Columns {
    fn of(f: &Function) -> Result<Columns, StoreError> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            name: f.spec.function_name.clone(),
            reason: e.to_string(),
        };
        Ok(Columns {
            name: f.spec.function_name.clone(),
            id: f.function_id.clone(),
            spec: serde_json::to_string(&f.spec).map_err(corrupt)?,
            image_ref: f.image.reference.to_string(),
            image_digest: f.image.manifest_digest.to_string(),
            acceleration: f
                .acceleration
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(corrupt)?,
            created_time: format_time(f.created_time),
            updated_time: format_time(f.last_modified_time),
            image_manifest: f.image.kept.as_ref().map(|k| k.manifest.to_vec()),
            image_config: f.image.kept.as_ref().map(|k| k.config.to_vec()),
        })
    }

    fn read(r: &Row<'_>) -> rusqlite::Result<Columns> {
        Ok(Columns {
            name: r.get(0)?,
            id: r.get(1)?,
            spec: r.get(2)?,
            image_ref: r.get(3)?,
            image_digest: r.get(4)?,
            acceleration: r.get(5)?,
            created_time: r.get(6)?,
            updated_time: r.get(7)?,
            image_manifest: r.get(8)?,
            image_config: r.get(9)?,
        })
    }

    /// Parses and checks every column: the file may have been edited or damaged.
    fn into_function(self) -> Result<Function, StoreError> {
        let name = self.name;
        let corrupt = |reason: String| StoreError::Corrupt {
            name: name.clone(),
            reason,
        };
        let spec: FunctionSpec =
            serde_json::from_str(&self.spec).map_err(|e| corrupt(format!("spec: {e}")))?;
        if spec.function_name != name {
            return Err(corrupt(format!(
                "spec names function {:?}",
                spec.function_name
            )));
        }
        let reference = self
            .image_ref
            .parse()
            .map_err(|e| corrupt(format!("image {:?}: {e}", self.image_ref)))?;
        let manifest_digest = self
            .image_digest
            .parse()
            .map_err(|e| corrupt(format!("image digest {:?}: {e}", self.image_digest)))?;
        let acceleration = self
            .acceleration
            .map(|a| serde_json::from_str::<AccelerationInfo>(&a))
            .transpose()
            .map_err(|e| corrupt(format!("acceleration: {e}")))?;
        let time = |s: &str| {
            OffsetDateTime::parse(s, &Rfc3339).map_err(|e| corrupt(format!("time {s:?}: {e}")))
        };
        Ok(Function {
            function_id: self.id,
            spec,
            image: PinnedImage {
                reference,
                manifest_digest,
                kept: match (self.image_manifest, self.image_config) {
                    (Some(manifest), Some(config)) => Some(KeptImage {
                        manifest: manifest.into(),
                        config: config.into(),
                    }),
                    _ => None,
                },
            },
            acceleration,
            created_time: time(&self.created_time)?,
            last_modified_time: time(&self.updated_time)?,
            serving: None,
            trace: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FunctionInput, FunctionPatch};
    use pronto_image::Reference;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn function(name: &str) -> Function {
        let input: FunctionInput = serde_json::from_value(serde_json::json!({
            "functionName": name,
            "customContainerConfig": {"image": "127.0.0.1:5000/app:v1"},
            "environmentVariables": {"A": "1"},
        }))
        .unwrap();
        let (spec, reference) = input.validate().unwrap().into_new_spec().unwrap();
        let digest: pronto_image::Digest = DIGEST.parse().unwrap();
        Function {
            function_id: uuid::Uuid::new_v4().to_string(),
            spec,
            image: PinnedImage {
                reference: Reference {
                    tag: None,
                    ..reference.with_digest(digest.clone())
                },
                manifest_digest: digest,
                kept: Some(KeptImage {
                    manifest: bytes::Bytes::from_static(b"{}"),
                    config: bytes::Bytes::from_static(b"{\"config\":{}}"),
                }),
            },
            acceleration: None,
            created_time: crate::model::now(),
            last_modified_time: crate::model::now(),
            serving: None,
            trace: None,
        }
    }

    #[tokio::test]
    async fn crud_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        let f = function("hello");
        store.create_function(f.clone()).await.unwrap();
        assert_eq!(store.get_function("hello").await.unwrap(), f);
        let e = store.create_function(function("hello")).await.unwrap_err();
        assert_eq!(e.to_string(), "function hello already exists");

        let updated = store
            .update_function("hello", |f| {
                FunctionPatch {
                    memory_size: Some(1024),
                    ..Default::default()
                }
                .apply_to(&mut f.spec);
            })
            .await
            .unwrap();
        assert_eq!(updated.spec.memory_size, 1024);
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_function("hello").await.unwrap(), updated);
        store.delete_function("hello").await.unwrap();
        let e = store.get_function("hello").await.unwrap_err();
        assert_eq!(e.to_string(), "function hello not found");
        let e = store.delete_function("hello").await.unwrap_err();
        assert_eq!(e.to_string(), "function hello not found");
        let e = store.update_function("hello", |_| {}).await.unwrap_err();
        assert_eq!(e.to_string(), "function hello not found");

        store.create_function(function("a")).await.unwrap();
        let e = store
            .update_function("a", |f| f.spec.function_name = "b".into())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "function a cannot be renamed to b");
        assert_eq!(
            store.get_function("a").await.unwrap().spec.function_name,
            "a"
        );
    }

    #[tokio::test]
    async fn list_by_prefix_is_literal_and_case_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in ["a_1", "ab", "A_2", "a-3", "b"] {
            store.create_function(function(n)).await.unwrap();
        }
        let names = |fs: Vec<Function>| -> Vec<String> {
            fs.into_iter().map(|f| f.spec.function_name).collect()
        };
        let q = |prefix: Option<&str>, after: Option<&str>, limit| ListQuery {
            prefix: prefix.map(Into::into),
            after: after.map(Into::into),
            limit,
        };
        let all = store.list_functions(q(None, None, 100)).await.unwrap();
        assert_eq!(names(all), ["A_2", "a-3", "a_1", "ab", "b"]);
        let a_ = store
            .list_functions(q(Some("a_"), None, 100))
            .await
            .unwrap();
        assert_eq!(names(a_), ["a_1"]);
        let page = store
            .list_functions(q(Some("a"), Some("a-3"), 1))
            .await
            .unwrap();
        assert_eq!(names(page), ["a_1"]);
    }

    #[tokio::test]
    async fn access_traces_are_kept_per_image_and_go_with_the_function() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_function(function("f")).await.unwrap();
        assert_eq!(store.access_trace("f", "sha256:a").await.unwrap(), None);
        store
            .put_access_trace("f", "sha256:a", vec![1; 64])
            .await
            .unwrap();
        assert_eq!(
            store.access_trace("f", "sha256:a").await.unwrap(),
            Some(vec![1; 64])
        );
        // A new image's trace replaces the old image's.
        store
            .put_access_trace("f", "sha256:b", vec![2; 32])
            .await
            .unwrap();
        assert_eq!(store.access_trace("f", "sha256:a").await.unwrap(), None);
        assert_eq!(
            store.access_trace("f", "sha256:b").await.unwrap(),
            Some(vec![2; 32])
        );
        // Survives a reopen; goes when the function does; none for a missing function.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.access_trace("f", "sha256:b").await.unwrap().is_some());
        store.delete_function("f").await.unwrap();
        assert_eq!(store.access_trace("f", "sha256:b").await.unwrap(), None);
        store
            .put_access_trace("gone", "sha256:b", vec![3; 32])
            .await
            .unwrap();
        assert_eq!(store.access_trace("gone", "sha256:b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        drop(c);
        let e = Store::open(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "database {} has schema version 99, newer than this pronto supports ({})",
                dir.path().join(DB_FILE).display(),
                MIGRATIONS.len()
            )
        );
    }

    #[tokio::test]
    async fn wal_mode_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mode: String = store
            .with_conn(|c| {
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .map_err(query("pragma"))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn corrupt_rows_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_function(function("f")).await.unwrap();
        store
            .with_conn(|c| {
                c.execute("UPDATE functions SET image_digest = 'md5:x'", [])
                    .map_err(query("tamper"))
            })
            .await
            .unwrap();
        let e = store.get_function("f").await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("stored function f is corrupt: image digest \"md5:x\": "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_function_stored_before_images_were_kept_reads_back_without_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A database as a Pronto with schema version 2 left it.
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (2);",
            )
            .unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            let f = function("old");
            let row = Columns::of(&f).unwrap();
            c.execute(
                "INSERT INTO functions (name, id, spec, image_ref, image_digest, acceleration,
                   created_time, updated_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    row.name,
                    row.id,
                    row.spec,
                    row.image_ref,
                    row.image_digest,
                    row.acceleration,
                    row.created_time,
                    row.updated_time
                ],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        let old = store.get_function("old").await.unwrap();
        assert_eq!(old.image.kept, None);
        assert_eq!(old.image.manifest_digest.to_string(), DIGEST);

        // Kept from the next write on.
        let kept = function("old").image.kept;
        let updated = store
            .update_function("old", move |f| f.image.kept = kept)
            .await
            .unwrap();
        assert!(updated.image.kept.is_some());
        assert_eq!(store.get_function("old").await.unwrap(), updated);
    }
}
