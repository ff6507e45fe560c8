//! What the `cmtpd` subcommands do: prepare a data directory, manage users
//! (invites, quotas, aliases, unlocks, reset tokens), inspect and steer the
//! relay queue, back up and restore, print the DNS records to publish.

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

use crate::config::{CONFIG_FILE, Config, StoreBackend};
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

/// For `cmtpd run` and `cmtpd init`: creates the data directory (mode
/// 0700), the server key (0600) and the database if they do not exist, and
/// opens them. A database without its server key is refused rather than
/// given a new key (peers that pinned the old one would refuse this server).
pub async fn prepare(cfg: &Config) -> anyhow::Result<Prepared> {
    let dir = &cfg.data_dir;
    if !dir.exists() {
        create_private_dir(dir)?;
        tracing::info!(dir = %dir.display(), "created data directory");
    }
    let key_path = cfg.key_path();
    if !key_path.exists() && cfg.store.backend == StoreBackend::Sqlite && cfg.sqlite_path().exists()
    {
        bail!(
            "the server key {} is missing but the database {} exists: restore the key \
             (a new key would make every peer that pinned the old one refuse this server)",
            key_path.display(),
            cfg.sqlite_path().display()
        );
    }
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

/// For every administration command but `init` and `run`: opens what
/// exists, and creates nothing. A data directory, server key or SQLite
/// database that is missing is an error naming it (never a silent new
/// server).
pub async fn open_existing(cfg: &Config) -> anyhow::Result<AnyStore> {
    check_data_dir(cfg)?;
    let key_path = cfg.key_path();
    if !key_path.exists() {
        bail!(
            "the server key {} does not exist: this data directory was never initialised \
             (run `cmtpd init`), or the key must be restored",
            key_path.display()
        );
    }
    if cfg.store.backend == StoreBackend::Sqlite && !cfg.sqlite_path().exists() {
        bail!(
            "the database {} does not exist (run `cmtpd init`, or restore a backup with `cmtpd restore`)",
            cfg.sqlite_path().display()
        );
    }
    open_store_with(cfg, false).await
}

/// Fails unless the configured data directory exists.
pub fn check_data_dir(cfg: &Config) -> anyhow::Result<()> {
    if !cfg.data_dir.is_dir() {
        bail!(
            "the data directory {} does not exist: run `cmtpd init` to create it, or fix data_dir \
             in the configuration (relative paths are relative to the configuration file)",
            cfg.data_dir.display()
        );
    }
    Ok(())
}

/// Opens the configured store for a serving node (creating the SQLite file
/// if needed, clearing uploads a previous run abandoned).
pub async fn open_store(cfg: &Config) -> anyhow::Result<AnyStore> {
    open_store_with(cfg, true).await
}

async fn open_store_with(cfg: &Config, serving: bool) -> anyhow::Result<AnyStore> {
    match cfg.store.backend {
        StoreBackend::Sqlite => {
            let path = cfg.sqlite_path();
            let mut sqlite = SqliteConfig::new(&path);
            // An administration command runs beside the server: uploads in
            // progress are the server's, not abandoned.
            sqlite.clear_abandoned_uploads = serving;
            Ok(AnyStore::open(StoreConfig::Sqlite(sqlite))
                .await
                .with_context(|| format!("opening database {}", path.display()))?)
        }
        StoreBackend::Postgres => {
            let Some(url) = cfg.store.url.as_deref() else {
                bail!("store.backend = \"postgres\" needs store.url");
            };
            let mut pg = cmtp_store::PostgresConfig::new(url);
            pg.pool_size = if serving { cfg.store.pool_size } else { 2 };
            // The URL may hold a password: name the database without it.
            let shown = pg.redacted_url();
            Ok(AnyStore::open(StoreConfig::Postgres(pg))
                .await
                .with_context(|| format!("opening PostgreSQL database {shown}"))?)
        }
    }
}

/// Creates a directory (and its parents) and makes it mode 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    Ok(())
}

/// Writes `cmtpd.toml` into the data directory unless one exists; returns its path.
pub fn write_config_if_missing(cfg: &Config) -> anyhow::Result<(std::path::PathBuf, bool)> {
    let path = cfg.data_dir.join(CONFIG_FILE);
    if path.exists() {
        return Ok((path, false));
    }
    write_new_config(&path, cfg)?;
    Ok((path, true))
}

/// Writes a new configuration file at `path` (refusing to replace one),
/// mode 0600 whatever the umask: it may hold a database password. A file
/// inside the data directory names it `"."` (the file's own directory), so
/// that the directory can be moved; elsewhere, by its absolute path.
pub fn write_new_config(path: &Path, cfg: &Config) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = crate::config::absolute(path.parent().unwrap_or(Path::new(".")));
    if !dir.exists() {
        if dir == cfg.data_dir {
            create_private_dir(&dir)?;
        } else {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    let mut written = cfg.clone();
    if dir == cfg.data_dir {
        written.data_dir = ".".into();
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // The mode given to open() is reduced by the umask, never widened;
    // set it explicitly all the same.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(written.to_toml().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
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
    match store.resolve_account(account.as_str()).await? {
        Some(a) if a == account.as_str() => bail!("the account {account} already exists"),
        Some(a) => bail!("{account} is an alias of {a}"),
        None => {}
    }
    let token = new_token("inv");
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

/// A fresh one-time token: `prefix-` and 144 random bits in hex.
fn new_token(prefix: &str) -> String {
    let mut raw = [0u8; 18];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    format!("{prefix}-{}", hex::encode(raw))
}

/// A reset token for `account` (PROTOCOL.md §12.6), valid `validity_secs`;
/// its hash is stored. The user runs `cmtp reset` with it to choose a new
/// password and get a new identity key.
pub async fn reset_token(
    store: &AnyStore,
    account: &Account,
    validity_secs: u64,
) -> anyhow::Result<(String, u64)> {
    let token = new_token("rst");
    let expires = now() + validity_secs;
    match store
        .create_reset(
            account.as_str(),
            crate::auth::invite_hash(&token),
            expires,
            now(),
        )
        .await
    {
        Ok(()) => Ok((token, expires)),
        Err(cmtp_store::StoreError::UnknownAccount) => bail!("no account {account}"),
        Err(e) => Err(e.into()),
    }
}

/// Sets or removes (`None`) the mailbox quota of `account`.
pub async fn set_quota(
    store: &AnyStore,
    account: &Account,
    quota: Option<u64>,
) -> anyhow::Result<()> {
    if !store.set_quota(account.as_str(), quota).await? {
        bail!("no account {account}");
    }
    Ok(())
}

/// Makes `alias` another name of `account`.
pub async fn add_alias(store: &AnyStore, alias: &Account, account: &Account) -> anyhow::Result<()> {
    match store
        .add_alias(alias.as_str(), account.as_str(), now())
        .await
    {
        Ok(()) => Ok(()),
        Err(cmtp_store::StoreError::AlreadyExists) => {
            bail!("{alias} is already the name of an account or an alias")
        }
        Err(cmtp_store::StoreError::UnknownAccount) => {
            bail!("no account {account} (an alias names an account, not another alias)")
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes an alias; `false` if there was none.
pub async fn remove_alias(store: &AnyStore, alias: &Account) -> anyhow::Result<bool> {
    Ok(store.remove_alias(alias.as_str()).await?)
}

/// Every alias.
pub async fn list_aliases(store: &AnyStore) -> anyhow::Result<Vec<cmtp_store::Alias>> {
    Ok(store.list_aliases().await?)
}

/// Records an unlock of `account`: every running node forgets its failed
/// logins within [`crate::housekeeping::UNLOCK_POLL`].
pub async fn unlock(store: &AnyStore, account: &Account) -> anyhow::Result<()> {
    if !store.unlock_user(account.as_str(), now()).await? {
        bail!("no account {account}");
    }
    Ok(())
}

/// One queue entry.
pub async fn queue_entry(store: &AnyStore, id: u64) -> anyhow::Result<OutboundEntry> {
    store
        .queue_entry(id)
        .await?
        .with_context(|| format!("no queue entry {id}"))
}

/// Deletes a queue entry (no notice to the sender).
pub async fn queue_delete(store: &AnyStore, id: u64) -> anyhow::Result<()> {
    if !store.delete_queued(id).await? {
        bail!("no queue entry {id}");
    }
    Ok(())
}

/// Holds or releases a queue entry.
pub async fn queue_hold(store: &AnyStore, id: u64, held: bool) -> anyhow::Result<()> {
    if !store.set_held(id, held).await? {
        bail!("no queue entry {id}");
    }
    Ok(())
}

/// Makes one queue entry due now.
pub async fn queue_retry_one(store: &AnyStore, id: u64) -> anyhow::Result<()> {
    if store.retry_now(id, now()).await? {
        return Ok(());
    }
    match store.queue_entry(id).await? {
        None => bail!("no queue entry {id}"),
        Some(e) if e.held => bail!("queue entry {id} is held: `cmtpd queue release {id}` first"),
        Some(e) => bail!(
            "queue entry {id} is being delivered right now (by {})",
            e.lease_owner.as_deref().unwrap_or("a node")
        ),
    }
}

/// Queue figures now.
pub async fn queue_stats(store: &AnyStore) -> anyhow::Result<cmtp_store::QueueStats> {
    Ok(store.queue_stats(now()).await?)
}

/// What [`backup`] wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The backup file.
    pub file: std::path::PathBuf,
    /// What it holds.
    pub summary: cmtp_store::sqlite_backup::BackupSummary,
    /// The server key's fingerprint.
    pub fingerprint: String,
}

/// Names of the files a backup carries beside the database.
const BACKUP_KEY: &str = "server.key";
const BACKUP_ROTATIONS: &str = "server.key.rotations";
const BACKUP_CONFIG: &str = "cmtpd.toml";

/// Takes a consistent copy of a (possibly running) server's SQLite
/// database, with its server key, the key's rotations and its
/// configuration, into one file (mode 0600: it holds the server's
/// secrets). PostgreSQL is backed up with PostgreSQL's tools.
pub async fn backup(cfg: &Config, dest: &Path) -> anyhow::Result<BackupReport> {
    if cfg.store.backend == StoreBackend::Postgres {
        bail!(
            "this server keeps its data in PostgreSQL: back it up with PostgreSQL's tools \
             (pg_dump -Fc, or continuous archiving), and keep a copy of the server key {} \
             and {} beside it",
            cfg.key_path().display(),
            keyfile::rotations_path(&cfg.key_path()).display()
        );
    }
    check_data_dir(cfg)?;
    let key_path = cfg.key_path();
    let key = keyfile::load(&key_path)?;
    let key_bytes = zeroize::Zeroizing::new(
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?,
    );
    let rotations = match std::fs::read(keyfile::rotations_path(&key_path)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading the key rotations"),
    };
    // The configuration as it applies inside a restored data directory:
    // everything in it, at the default places.
    let mut portable = cfg.clone();
    portable.data_dir = ".".into();
    portable.key_file = None;
    portable.store.path = None;
    let config = portable.to_toml();
    let db = cfg.sqlite_path();
    let dest = dest.to_owned();
    let dest2 = dest.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let mut files: Vec<(&str, &[u8])> = vec![
            (BACKUP_KEY, key_bytes.as_slice()),
            (BACKUP_CONFIG, config.as_bytes()),
        ];
        if let Some(r) = &rotations {
            files.push((BACKUP_ROTATIONS, r.as_slice()));
        }
        cmtp_store::sqlite_backup::backup(&db, &dest2, &files)
    })
    .await
    .context("the backup task failed")?
    .with_context(|| format!("backing up to {}", dest.display()))?;
    Ok(BackupReport {
        file: dest,
        summary,
        fingerprint: key.public().fingerprint_hex(),
    })
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// What the backup held.
    pub summary: cmtp_store::sqlite_backup::BackupSummary,
    /// The restored server key's fingerprint.
    pub fingerprint: String,
    /// Whether the backup's configuration was written (none existed).
    pub wrote_config: Option<std::path::PathBuf>,
}

/// Restores a backup made by [`backup`] into the data directory of `cfg`
/// (which must not exist, or be empty but for the configuration file
/// `config_path`): database, server key (0600) and its rotations; the
/// backup's configuration too when `config_path` does not exist yet.
/// `cfg` is the configuration to restore under: the existing one, or the
/// backup's (see [`backup_config`]).
pub async fn restore(
    cfg: &Config,
    backup_file: &Path,
    config_path: &Path,
) -> anyhow::Result<RestoreReport> {
    if cfg.store.backend == StoreBackend::Postgres {
        bail!(
            "this server keeps its data in PostgreSQL: restore it with PostgreSQL's tools (pg_restore)"
        );
    }
    let dir = &cfg.data_dir;
    if dir.exists() {
        let config_abs = crate::config::absolute(config_path);
        let mut others = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = entry?.path();
            if crate::config::absolute(&p) != config_abs {
                others.push(
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        if !others.is_empty() {
            others.sort();
            bail!(
                "the data directory {} is not empty ({}): restore into a new or empty directory",
                dir.display(),
                others.join(", ")
            );
        }
    } else {
        create_private_dir(dir)?;
    }
    let key_path = cfg.key_path();
    if key_path.exists() {
        bail!(
            "the server key {} exists: restore into a new or empty data directory",
            key_path.display()
        );
    }
    let db = cfg.sqlite_path();
    let backup_file = backup_file.to_owned();
    let db2 = db.clone();
    let (files, summary) =
        tokio::task::spawn_blocking(move || cmtp_store::sqlite_backup::restore(&backup_file, &db2))
            .await
            .context("the restore task failed")??;
    let file = |name: &str| {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    };
    let Some(key_bytes) = file(BACKUP_KEY) else {
        cmtp_store::sqlite_backup::remove_restored(&db);
        bail!("the backup holds no server key");
    };
    write_private(&key_path, key_bytes)?;
    let key = keyfile::load(&key_path)?;
    if let Some(r) = file(BACKUP_ROTATIONS) {
        write_private(&keyfile::rotations_path(&key_path), r)?;
        keyfile::load_rotations(&key_path)?;
    }
    let mut wrote_config = None;
    if !config_path.exists() {
        let text = file(BACKUP_CONFIG).context("the backup holds no configuration")?;
        write_private(config_path, text)?;
        wrote_config = Some(config_path.to_owned());
    }
    // Opening migrates an older schema and checks the result.
    drop(open_store(cfg).await?);
    Ok(RestoreReport {
        summary,
        fingerprint: key.public().fingerprint_hex(),
        wrote_config,
    })
}

/// The configuration stored in a backup file, as it applies to a data
/// directory at `data_dir` (for `cmtpd restore` without a configuration).
pub fn backup_config(backup_file: &Path, data_dir: &Path) -> anyhow::Result<Config> {
    let text = cmtp_store::sqlite_backup::read_file(backup_file, BACKUP_CONFIG)
        .with_context(|| format!("reading {}", backup_file.display()))?
        .context("the backup holds no configuration")?;
    let text = String::from_utf8(text).context("the backup's configuration is not UTF-8")?;
    let mut cfg: Config = toml::from_str(&text).context("the backup's configuration")?;
    cfg.resolve_paths(data_dir);
    cfg.data_dir = crate::config::absolute(data_dir);
    cfg.validate()?;
    Ok(cfg)
}

/// Writes a new file readable by its owner only, and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
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
    // Made here and stored directly: no connection to bind the proof to.
    let bundle = reg.finish(
        password,
        &offer,
        &address,
        &identity,
        ksf,
        now(),
        &[0; 32],
        rng,
    )?;
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
