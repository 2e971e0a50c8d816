//! Schema migrations: numbered `.sql` files from `migrations/`, embedded in
//! the binary and applied in order inside one transaction each. The number
//! of applied migrations is kept in `PRAGMA user_version`.

use rusqlite::Connection;

/// Every migration, in the order it must be applied; the schema version of
/// a database is the number of entries applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial.sql",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        "0002_stable_ids_fingerprints.sql",
        include_str!("../../migrations/0002_stable_ids_fingerprints.sql"),
    ),
];

#[derive(Debug)]
pub enum MigrationError {
    TooNew { found: i64, supported: i64 },
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrationError {
    fn from(error: rusqlite::Error) -> Self {
        MigrationError::Sqlite(error)
    }
}

/// Applies the migrations that `connection` has not seen yet and returns
/// the resulting schema version.
///
/// # Errors
/// [`MigrationError::TooNew`] when the database was written by a newer
/// imgsim with migrations this build does not know; nothing is changed then.
pub fn apply_migrations(connection: &mut Connection) -> Result<i64, MigrationError> {
    let supported = MIGRATIONS.len() as i64;
    loop {
        // The version is read inside an immediate transaction, so two
        // processes opening a new database never apply the same migration
        // twice.
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > supported {
            return Err(MigrationError::TooNew {
                found: version,
                supported,
            });
        }
        if version == supported {
            return Ok(version);
        }
        let (_, sql) = MIGRATIONS[version as usize];
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", version + 1)?;
        transaction.commit()?;
    }
}
