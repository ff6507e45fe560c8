//! What the `cmtpd` subcommands do: prepare a data directory, manage users
//! and invites, inspect the relay queue, print the DNS records to publish.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use cmtp_proto::account::Registration;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::{KsfParams, ServerSetup, server_registration_response};
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::RegistrationOffer;
use cmtp_store::{
    AnyStore, Credentials, NewUser, OutboundEntry, SqliteConfig, Store, StoreConfig, UserSummary,
};

use crate::config::{CONFIG_FILE, Config};
use crate::keyfile;
use crate::state::{OPAQUE_SETUP_SECRET, now};

/// What [`prepare`] found or made.
#[derive(Debug)]
pub struct Prepared {
    /// The server key.
    pub key: IdentityKey,
    /// Whether the key was created now.
    pub key_created: bool,
    /// The opened store.
    pub store: AnyStore,
}

/// Creates the data directory (mode 0700), the server key (0600) and the
/// database if they do not exist, and opens them.
pub async fn prepare(cfg: &Config) -> anyhow::Result<Prepared> {
    let dir = &cfg.data_dir;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(dir = %dir.display(), "created data directory");
    }
    let key_path = cfg.key_path();
    let (key, key_created) = keyfile::load_or_create(&key_path)?;
    if key_created {
        tracing::info!(path = %key_path.display(), fingerprint = %key.public().fingerprint_hex(), "created server key");
    }
    let store = open_store(cfg).await?;
    Ok(Prepared {
        key,
        key_created,
        store,
    })
}

/// Opens the configured store.
pub async fn open_store(cfg: &Config) -> anyhow::Result<AnyStore> {
    match cfg.store.backend.as_str() {
        "sqlite" => {
            let path = cfg.sqlite_path();
            Ok(
                AnyStore::open(StoreConfig::Sqlite(SqliteConfig::new(&path)))
                    .await
                    .with_context(|| format!("opening database {}", path.display()))?,
            )
        }
        "postgres" => {
            let Some(url) = cfg.store.url.as_deref() else {
                bail!("store.backend = \"postgres\" needs store.url");
            };
            let mut pg = cmtp_store::PostgresConfig::new(url);
            pg.pool_size = cfg.store.pool_size;
            // The URL may hold a password: name the database without it.
            let shown = pg.redacted_url();
            Ok(AnyStore::open(StoreConfig::Postgres(pg))
                .await
                .with_context(|| format!("opening PostgreSQL database {shown}"))?)
        }
        other => bail!("store backend {other:?} is not available in this build"),
    }
}

/// Writes `cmtpd.toml` into the data directory unless one exists; returns its path.
pub fn write_config_if_missing(cfg: &Config) -> anyhow::Result<(std::path::PathBuf, bool)> {
    let path = cfg.data_dir.join(CONFIG_FILE);
    if path.exists() {
        return Ok((path, false));
    }
    std::fs::create_dir_all(&cfg.data_dir)?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(&path, cfg.to_toml()).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, true))
}

/// The DNS records an administrator should publish for this server.
pub fn dns_records(cfg: &Config, key: &IdentityKey, host: &str) -> String {
    let d = cfg.domain();
    let port = cfg
        .listen
        .first()
        .map_or(cmtp_proto::limits::DEFAULT_PORT, |a| a.port());
    format!(
        "; DNS records for the CMTP service of {d} (see docs/PROTOCOL.md §14)\n\
         _cmtp._tcp.{d}. 3600 IN SRV 10 10 {port} {host}.\n\
         _cmtpkey.{d}.   3600 IN TXT \"v=cmtp1; k=ed25519; fp={fp}\"\n\
         ; and an A/AAAA record for {host} pointing at this machine's public address\n",
        fp = key.public().fingerprint_hex()
    )
}

/// A fresh invite token for `account`; stores its hash with an expiry.
pub async fn invite(
    store: &AnyStore,
    account: &Account,
    validity_secs: u64,
) -> anyhow::Result<(String, u64)> {
    if store.user(account.as_str()).await?.is_some() {
        bail!("the account {account} already exists");
    }
    let mut raw = [0u8; 18];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    let token = format!("inv-{}", hex::encode(raw));
    let expires = now() + validity_secs;
    store
        .create_invite(
            account.as_str(),
            crate::auth::invite_hash(&token),
            expires,
            now(),
        )
        .await?;
    Ok((token, expires))
}

/// Creates a user directly: generates the identity key and runs the same
/// OPAQUE registration a client would, locally. Returns the key fingerprint.
pub async fn add_user(
    cfg: &Config,
    store: &AnyStore,
    account: &Account,
    password: &[u8],
    ksf: KsfParams,
) -> anyhow::Result<String> {
    if password.is_empty() {
        bail!("the password is empty");
    }
    let candidate = ServerSetup::generate(&mut rand_core::OsRng);
    let setup_bytes = store
        .secret_get_or_init(OPAQUE_SETUP_SECRET, candidate.to_bytes().to_vec())
        .await?;
    let setup =
        ServerSetup::from_bytes(&setup_bytes).map_err(|e| anyhow::anyhow!("OPAQUE setup: {e}"))?;
    let address = Address::new(account.clone(), cfg.domain());
    let rng = &mut rand_core::OsRng;
    let identity = IdentityKey::generate(rng);
    let (reg, request) = Registration::start(password, rng)?;
    let response = server_registration_response(&setup, &request, &address.to_string())?;
    let offer = RegistrationOffer {
        response: response.to_vec(),
        floor: cfg.accounts.ksf_floor(),
    };
    let bundle = reg.finish(password, &offer, &address, &identity, ksf, now(), rng)?;
    store
        .create_user(
            NewUser {
                account: account.as_str().to_owned(),
                identity_pk: bundle.identity.to_bytes(),
                credentials: Credentials {
                    opaque_record: bundle.record,
                    ksf: bundle.ksf.to_bytes(),
                    xzibit: bundle.xzibit,
                },
            },
            None,
            now(),
        )
        .await
        .map_err(|e| match e {
            cmtp_store::StoreError::AlreadyExists => {
                anyhow::anyhow!("the account {account} already exists")
            }
            other => other.into(),
        })?;
    Ok(identity.public().fingerprint_hex())
}

/// Every account with its mailbox size.
pub async fn list_users(store: &AnyStore) -> anyhow::Result<Vec<UserSummary>> {
    Ok(store.list_users().await?)
}

/// Deletes an account with its mail and keys.
pub async fn delete_user(store: &AnyStore, account: &Account) -> anyhow::Result<bool> {
    Ok(store.delete_user(account.as_str()).await?)
}

/// The relay queue.
pub async fn queue(store: &AnyStore) -> anyhow::Result<Vec<OutboundEntry>> {
    Ok(store.list_queue().await?)
}

/// Makes every queued message due now; returns how many.
pub async fn queue_retry(store: &AnyStore) -> anyhow::Result<u64> {
    Ok(store.retry_all_now(now()).await?)
}

/// Reads a password from the first line of a file.
pub fn read_password_file(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    Ok(zeroize::Zeroizing::new(
        text.lines().next().unwrap_or("").to_owned(),
    ))
}
