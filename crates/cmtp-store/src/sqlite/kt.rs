//! The key directory's tables in SQLite (schema version 5): [`KtStore`].

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::{DbResult, SqliteStore};
use crate::error::StoreError;
use crate::kt::{KtPairs, KtRecord, KtStore, KtValueState, check_ids};

/// Ids per `IN (...)` query (SQLite allows 32766 parameters; smaller
/// statements are cached better).
const CHUNK: usize = 500;

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn state(row: &Row<'_>) -> rusqlite::Result<KtValueState> {
    let node_label: Vec<u8> = row.get(4)?;
    let node_label: [u8; 32] = node_label.as_slice().try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            "node label is not 32 bytes".into(),
        )
    })?;
    let len: i64 = row.get(5)?;
    Ok(KtValueState {
        label: row.get(0)?,
        epoch: get_u64(row, 1)?,
        version: get_u64(row, 2)?,
        value: row.get(3)?,
        node_label,
        node_label_len: u32::try_from(len)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(5, len))?,
    })
}

const STATE_COLUMNS: &str = "label, epoch, version, value, node_label, node_label_len";

fn write(c: &Connection, records: &[KtRecord]) -> Result<(), StoreError> {
    let mut node = c
        .prepare_cached("INSERT OR REPLACE INTO kt_nodes (id, data) VALUES (?1, ?2)")
        .db()?;
    let mut value = c
        .prepare_cached(
            "INSERT OR REPLACE INTO kt_values
                 (label, epoch, version, value, node_label, node_label_len)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db()?;
    for r in records {
        match r {
            KtRecord::Node { id, data } => {
                node.execute(params![id, data]).db()?;
            }
            KtRecord::Value(s) => {
                value
                    .execute(params![
                        s.label,
                        sql(s.epoch),
                        sql(s.version),
                        s.value,
                        &s.node_label[..],
                        s.node_label_len
                    ])
                    .db()?;
            }
        }
    }
    Ok(())
}

fn nodes(c: &Connection, ids: &[Vec<u8>]) -> Result<KtPairs, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT id, data FROM kt_nodes WHERE id IN ({marks})"
            ))
            .db()?;
        let rows = stmt
            .query_map(params_from_iter(chunk.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .db()?;
        for row in rows {
            out.push(row.db()?);
        }
    }
    Ok(out)
}

fn latest_states(
    c: &Connection,
    labels: &[Vec<u8>],
    max_epoch: u64,
) -> Result<Vec<KtValueState>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {STATE_COLUMNS} FROM kt_values WHERE label = ?1 AND epoch <= ?2
             ORDER BY epoch DESC LIMIT 1"
        ))
        .db()?;
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        if let Some(s) = stmt
            .query_row(params![label, sql(max_epoch)], state)
            .optional()
            .db()?
        {
            out.push(s);
        }
    }
    Ok(out)
}

impl KtStore for SqliteStore {
    async fn kt_write(&self, records: Vec<KtRecord>) -> Result<(), StoreError> {
        for r in &records {
            if let KtRecord::Node { id, .. } = r {
                check_ids(std::slice::from_ref(id))?;
            }
        }
        let weight = records
            .iter()
            .map(|r| match r {
                KtRecord::Node { id, data } => id.len() + data.len(),
                KtRecord::Value(s) => s.label.len() + s.value.len() + 64,
            })
            .sum();
        self.write(weight, move |c| write(c, &records)).await
    }

    async fn kt_nodes(&self, ids: Vec<Vec<u8>>) -> Result<KtPairs, StoreError> {
        check_ids(&ids)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |c| nodes(c, &ids)).await
    }

    async fn kt_states(&self, label: Vec<u8>) -> Result<Vec<KtValueState>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {STATE_COLUMNS} FROM kt_values WHERE label = ?1 ORDER BY epoch"
                ))
                .db()?;
            let rows = stmt.query_map([label], state).db()?;
            rows.collect::<rusqlite::Result<Vec<_>>>().db()
        })
        .await
    }

    async fn kt_latest_states(
        &self,
        labels: Vec<Vec<u8>>,
        max_epoch: u64,
    ) -> Result<Vec<KtValueState>, StoreError> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |c| latest_states(c, &labels, max_epoch))
            .await
    }

    async fn kt_all_latest(&self) -> Result<KtPairs, StoreError> {
        self.read(|c| {
            // SQLite takes the bare columns from the row of max(epoch).
            let mut stmt = c
                .prepare_cached(
                    "SELECT label, value, max(epoch) FROM kt_values GROUP BY label ORDER BY label",
                )
                .db()?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
            rows.collect::<rusqlite::Result<Vec<_>>>().db()
        })
        .await
    }

    async fn kt_identity_keys(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT account, identity_pk FROM users ORDER BY account")
                .db()?;
            let rows = stmt
                .query_map([], |r| {
                    let pk: Vec<u8> = r.get(1)?;
                    Ok((r.get::<_, String>(0)?, pk))
                })
                .db()?;
            let mut out = Vec::new();
            for row in rows {
                let (account, pk) = row.db()?;
                let pk: [u8; 32] = pk.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt(format!("identity key of {account} is not 32 bytes"))
                })?;
                out.push((account, pk));
            }
            Ok(out)
        })
        .await
    }

    async fn kt_put_head(&self, epoch: u64, head: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.write(head.len(), move |c| {
            c.execute(
                "INSERT INTO kt_heads (epoch, head) VALUES (?1, ?2) ON CONFLICT (epoch) DO NOTHING",
                params![sql(epoch), head],
            )
            .db()?;
            c.query_row(
                "SELECT head FROM kt_heads WHERE epoch = ?1",
                [sql(epoch)],
                |r| r.get(0),
            )
            .db()
        })
        .await
    }

    async fn kt_head(&self, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT head FROM kt_heads WHERE epoch = ?1",
                [sql(epoch)],
                |r| r.get(0),
            )
            .optional()
            .db()
        })
        .await
    }

    async fn kt_latest_head(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT epoch, head FROM kt_heads ORDER BY epoch DESC LIMIT 1",
                [],
                |r| Ok((get_u64(r, 0)?, r.get(1)?)),
            )
            .optional()
            .db()
        })
        .await
    }

    async fn kt_heads(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT epoch, head FROM kt_heads WHERE epoch >= ?1 AND epoch <= ?2
                     ORDER BY epoch",
                )
                .db()?;
            let rows = stmt
                .query_map(params![sql(from), sql(to)], |r| {
                    Ok((get_u64(r, 0)?, r.get(1)?))
                })
                .db()?;
            rows.collect::<rusqlite::Result<Vec<_>>>().db()
        })
        .await
    }

    async fn kt_add_cosignature(
        &self,
        epoch: u64,
        witness: &str,
        cosignature: Vec<u8>,
    ) -> Result<(), StoreError> {
        let witness = witness.to_owned();
        self.write(cosignature.len(), move |c| {
            c.execute(
                "INSERT OR REPLACE INTO kt_cosignatures (epoch, witness, cosignature)
                 VALUES (?1, ?2, ?3)",
                params![sql(epoch), witness, cosignature],
            )
            .db()?;
            Ok(())
        })
        .await
    }

    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT cosignature FROM kt_cosignatures WHERE epoch = ?1 ORDER BY witness",
                )
                .db()?;
            let rows = stmt.query_map([sql(epoch)], |r| r.get(0)).db()?;
            rows.collect::<rusqlite::Result<Vec<_>>>().db()
        })
        .await
    }

    async fn kt_witnessed(&self, domain: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let domain = domain.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT epoch, head FROM kt_witnessed WHERE domain = ?1",
                [domain],
                |r| Ok((get_u64(r, 0)?, r.get(1)?)),
            )
            .optional()
            .db()
        })
        .await
    }

    async fn kt_set_witnessed(
        &self,
        domain: &str,
        epoch: u64,
        head: Vec<u8>,
    ) -> Result<(), StoreError> {
        let domain = domain.to_owned();
        self.write(head.len(), move |c| {
            let current: Option<u64> = c
                .query_row(
                    "SELECT epoch FROM kt_witnessed WHERE domain = ?1",
                    [&domain],
                    |r| get_u64(r, 0),
                )
                .optional()
                .db()?;
            if current.is_some_and(|e| e > epoch) {
                return Err(StoreError::Constraint(format!(
                    "{domain} was witnessed at a newer epoch"
                )));
            }
            c.execute(
                "INSERT OR REPLACE INTO kt_witnessed (domain, epoch, head) VALUES (?1, ?2, ?3)",
                params![domain, sql(epoch), head],
            )
            .db()?;
            Ok(())
        })
        .await
    }

    async fn kt_put_evidence(
        &self,
        domain: &str,
        evidence: Vec<u8>,
        now: u64,
    ) -> Result<(), StoreError> {
        let domain = domain.to_owned();
        self.write(evidence.len(), move |c| {
            c.execute(
                "INSERT INTO kt_evidence (domain, evidence, found_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (domain) DO NOTHING",
                params![domain, evidence, sql(now)],
            )
            .db()?;
            Ok(())
        })
        .await
    }

    async fn kt_evidence(&self, domain: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let domain = domain.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT evidence FROM kt_evidence WHERE domain = ?1",
                [domain],
                |r| r.get(0),
            )
            .optional()
            .db()
        })
        .await
    }

    async fn kt_claim_publisher(
        &self,
        node: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError> {
        let node = node.to_owned();
        self.write(0, move |c| {
            let changed = c
                .execute(
                    "INSERT INTO kt_publisher (id, node, until) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET node = excluded.node, until = excluded.until
                     WHERE kt_publisher.node = excluded.node OR kt_publisher.until <= ?3",
                    params![node, sql(until), sql(now)],
                )
                .db()?;
            Ok(changed == 1)
        })
        .await
    }
}
