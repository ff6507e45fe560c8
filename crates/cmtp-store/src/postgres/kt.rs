//! The key directory's tables in PostgreSQL (schema version 5): [`KtStore`].

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{DbResult, Kind, PostgresStore, retryable};
use crate::error::StoreError;
use crate::kt::{KtPairs, KtRecord, KtStore, KtValueState, check_ids};

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(row: &Row, idx: usize) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(idx).db()?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value: {v}")))
}

fn state(row: &Row) -> Result<KtValueState, StoreError> {
    let node_label: &[u8] = row.try_get(4).db()?;
    let node_label: [u8; 32] = node_label
        .try_into()
        .map_err(|_| StoreError::Corrupt("node label is not 32 bytes".into()))?;
    Ok(KtValueState {
        label: row.try_get(0).db()?,
        epoch: unsigned(row, 1)?,
        version: unsigned(row, 2)?,
        value: row.try_get(3).db()?,
        node_label,
        node_label_len: u32::try_from(unsigned(row, 5)?)
            .map_err(|_| StoreError::Corrupt("node label length out of range".into()))?,
    })
}

const STATE_COLUMNS: &str = "label, epoch, version, value, node_label, node_label_len";

async fn write(c: &mut deadpool_postgres::Client, records: &[KtRecord]) -> Result<(), StoreError> {
    let tx = c.transaction().await.db()?;
    let node = tx
        .prepare_cached(
            "INSERT INTO kt_nodes (id, data) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
        )
        .await
        .db()?;
    let value = tx
        .prepare_cached(
            "INSERT INTO kt_values (label, epoch, version, value, node_label, node_label_len)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (label, epoch) DO UPDATE SET version = EXCLUDED.version,
                 value = EXCLUDED.value, node_label = EXCLUDED.node_label,
                 node_label_len = EXCLUDED.node_label_len",
        )
        .await
        .db()?;
    for r in records {
        match r {
            KtRecord::Node { id, data } => {
                tx.execute(&node, &[id, data]).await.db()?;
            }
            KtRecord::Value(s) => {
                let len = i64::from(s.node_label_len);
                tx.execute(
                    &value,
                    &[
                        &s.label,
                        &sql(s.epoch),
                        &sql(s.version),
                        &s.value,
                        &&s.node_label[..],
                        &len,
                    ],
                )
                .await
                .db()?;
            }
        }
    }
    tx.commit().await.db()
}

/// Runs `$body` with a pooled client `$c`, retrying as the store's other
/// operations do.
macro_rules! with_client {
    ($self:ident, $kind:ident, |$c:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            let result = async {
                #[allow(unused_mut)]
                let mut $c = $self.client().await?;
                $body
            }
            .await;
            match result {
                Err(e) if attempt < 3 && retryable(&e, Kind::$kind, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2 << attempt)).await;
                }
                other => break other,
            }
        }
    }};
}

impl KtStore for PostgresStore {
    async fn kt_write(&self, records: Vec<KtRecord>) -> Result<(), StoreError> {
        for r in &records {
            if let KtRecord::Node { id, .. } = r {
                check_ids(std::slice::from_ref(id))?;
            }
        }
        with_client!(self, Write, |c| write(&mut c, &records).await)
    }

    async fn kt_nodes(&self, ids: Vec<Vec<u8>>) -> Result<KtPairs, StoreError> {
        check_ids(&ids)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        with_client!(self, Read, |c| {
            let rows = c
                .query("SELECT id, data FROM kt_nodes WHERE id = ANY($1)", &[&ids])
                .await
                .db()?;
            rows.iter()
                .map(|r| Ok((r.try_get(0).db()?, r.try_get(1).db()?)))
                .collect()
        })
    }

    async fn kt_states(&self, label: Vec<u8>) -> Result<Vec<KtValueState>, StoreError> {
        with_client!(self, Read, |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {STATE_COLUMNS} FROM kt_values WHERE label = $1 ORDER BY epoch"
                    ),
                    &[&label],
                )
                .await
                .db()?;
            rows.iter().map(state).collect()
        })
    }

    async fn kt_latest_states(
        &self,
        labels: Vec<Vec<u8>>,
        max_epoch: u64,
    ) -> Result<Vec<KtValueState>, StoreError> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        with_client!(self, Read, |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT DISTINCT ON (label) {STATE_COLUMNS} FROM kt_values
                         WHERE label = ANY($1) AND epoch <= $2
                         ORDER BY label, epoch DESC"
                    ),
                    &[&labels, &sql(max_epoch)],
                )
                .await
                .db()?;
            rows.iter().map(state).collect()
        })
    }

    async fn kt_all_latest(&self) -> Result<KtPairs, StoreError> {
        with_client!(self, Read, |c| {
            let rows = c
                .query(
                    "SELECT DISTINCT ON (label) label, value FROM kt_values
                     ORDER BY label, epoch DESC",
                    &[],
                )
                .await
                .db()?;
            rows.iter()
                .map(|r| Ok((r.try_get(0).db()?, r.try_get(1).db()?)))
                .collect()
        })
    }

    async fn kt_identity_keys(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        with_client!(self, Read, |c| {
            let rows = c
                .query(
                    "SELECT account, identity_pk FROM users ORDER BY account",
                    &[],
                )
                .await
                .db()?;
            rows.iter()
                .map(|r| {
                    let account: String = r.try_get(0).db()?;
                    let pk: &[u8] = r.try_get(1).db()?;
                    let pk: [u8; 32] = pk.try_into().map_err(|_| {
                        StoreError::Corrupt(format!("identity key of {account} is not 32 bytes"))
                    })?;
                    Ok((account, pk))
                })
                .collect()
        })
    }

    async fn kt_put_head(&self, epoch: u64, head: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        with_client!(self, Write, |c| {
            c.execute(
                "INSERT INTO kt_heads (epoch, head) VALUES ($1, $2) ON CONFLICT (epoch) DO NOTHING",
                &[&sql(epoch), &head],
            )
            .await
            .db()?;
            let row = c
                .query_one("SELECT head FROM kt_heads WHERE epoch = $1", &[&sql(epoch)])
                .await
                .db()?;
            row.try_get(0).db()
        })
    }

    async fn kt_head(&self, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        with_client!(self, Read, |c| {
            let row = c
                .query_opt("SELECT head FROM kt_heads WHERE epoch = $1", &[&sql(epoch)])
                .await
                .db()?;
            row.map(|r| r.try_get(0).db()).transpose()
        })
    }

    async fn kt_latest_head(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        with_client!(self, Read, |c| {
            let row = c
                .query_opt(
                    "SELECT epoch, head FROM kt_heads ORDER BY epoch DESC LIMIT 1",
                    &[],
                )
                .await
                .db()?;
            row.map(|r| Ok((unsigned(&r, 0)?, r.try_get(1).db()?)))
                .transpose()
        })
    }

    async fn kt_heads(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        with_client!(self, Read, |c| {
            let rows = c
                .query(
                    "SELECT epoch, head FROM kt_heads WHERE epoch >= $1 AND epoch <= $2
                     ORDER BY epoch",
                    &[&sql(from), &sql(to)],
                )
                .await
                .db()?;
            rows.iter()
                .map(|r| Ok((unsigned(r, 0)?, r.try_get(1).db()?)))
                .collect()
        })
    }

    async fn kt_add_cosignature(
        &self,
        epoch: u64,
        witness: &str,
        cosignature: Vec<u8>,
    ) -> Result<(), StoreError> {
        with_client!(self, Write, |c| {
            c.execute(
                "INSERT INTO kt_cosignatures (epoch, witness, cosignature) VALUES ($1, $2, $3)
                 ON CONFLICT (epoch, witness) DO UPDATE SET cosignature = EXCLUDED.cosignature",
                &[&sql(epoch), &witness, &cosignature],
            )
            .await
            .db()?;
            Ok(())
        })
    }

    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        with_client!(self, Read, |c| {
            let rows = c
                .query(
                    "SELECT cosignature FROM kt_cosignatures WHERE epoch = $1 ORDER BY witness",
                    &[&sql(epoch)],
                )
                .await
                .db()?;
            rows.iter().map(|r| r.try_get(0).db()).collect()
        })
    }

    async fn kt_witnessed(&self, domain: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        with_client!(self, Read, |c| {
            let row = c
                .query_opt(
                    "SELECT epoch, head FROM kt_witnessed WHERE domain = $1",
                    &[&domain],
                )
                .await
                .db()?;
            row.map(|r| Ok((unsigned(&r, 0)?, r.try_get(1).db()?)))
                .transpose()
        })
    }

    async fn kt_set_witnessed(
        &self,
        domain: &str,
        epoch: u64,
        head: Vec<u8>,
    ) -> Result<(), StoreError> {
        with_client!(self, Write, |c| {
            // Never backwards: the update applies only to an older epoch.
            let n = c
                .execute(
                    "INSERT INTO kt_witnessed (domain, epoch, head) VALUES ($1, $2, $3)
                     ON CONFLICT (domain) DO UPDATE SET epoch = EXCLUDED.epoch, head = EXCLUDED.head
                     WHERE kt_witnessed.epoch <= EXCLUDED.epoch",
                    &[&domain, &sql(epoch), &head],
                )
                .await
                .db()?;
            if n == 0 {
                return Err(StoreError::Constraint(format!(
                    "{domain} was witnessed at a newer epoch"
                )));
            }
            Ok(())
        })
    }

    async fn kt_put_evidence(
        &self,
        domain: &str,
        evidence: Vec<u8>,
        now: u64,
    ) -> Result<(), StoreError> {
        with_client!(self, Write, |c| {
            c.execute(
                "INSERT INTO kt_evidence (domain, evidence, found_at) VALUES ($1, $2, $3)
                 ON CONFLICT (domain) DO NOTHING",
                &[&domain, &evidence, &sql(now)],
            )
            .await
            .db()?;
            Ok(())
        })
    }

    async fn kt_evidence(&self, domain: &str) -> Result<Option<Vec<u8>>, StoreError> {
        with_client!(self, Read, |c| {
            let row = c
                .query_opt(
                    "SELECT evidence FROM kt_evidence WHERE domain = $1",
                    &[&domain],
                )
                .await
                .db()?;
            row.map(|r| r.try_get(0).db()).transpose()
        })
    }

    async fn kt_claim_publisher(
        &self,
        node: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError> {
        with_client!(self, Write, |c| {
            let n = c
                .execute(
                    "INSERT INTO kt_publisher (id, node, until) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, until = EXCLUDED.until
                     WHERE kt_publisher.node = EXCLUDED.node OR kt_publisher.until <= $3",
                    &[&node, &sql(until), &sql(now)],
                )
                .await
                .db()?;
            Ok(n == 1)
        })
    }
}
