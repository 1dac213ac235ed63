//! Starting the server: open the store, load or make keys and PKI, initialise the
//! repository, then serve until shut down, with the re-signing task alongside.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ota_keys::keyfile::EncryptedKey;
use ota_keys::passphrase::Passphrase;
use tokio::net::TcpListener;

use crate::app::{routes, AppParts, AppState};
use crate::audit::AuditLog;
use crate::auth::{Role, Tokens};
use crate::blobs::BlobStore;
use crate::config::ServerConfig;
use crate::deployments::Fleet;
use crate::devices::{DeviceConfig, Devices};
use crate::metrics::{inc, Metrics};
use crate::pki::DevPki;
use crate::repo::{OnlineKeys, Repository};
use crate::serve::{serve_with_metrics, TransportMetrics};
use crate::store::sealed::{SealedStore, SEALED_TREES};
use crate::store::sled::SledStore;
use crate::store::Store;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct StartError {
    context: &'static str,
    message: String,
}

fn fail(context: &'static str) -> impl FnOnce(String) -> StartError {
    move |message| StartError { context, message }
}

/// What a start produced, for printing and for tests.
pub struct Prepared {
    /// Shared state.
    pub state: AppState,
    /// TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA file clients should trust (development mode).
    pub ca_file: Option<PathBuf>,
    /// The admin token, when made on this start (first development start).
    pub new_admin_token: Option<String>,
    /// Where the admin token file is (development mode).
    pub admin_token_file: Option<PathBuf>,
}

/// Opens or creates everything the configuration names. Blocking (disk I/O).
pub fn prepare(cfg: &ServerConfig) -> Result<Prepared, StartError> {
    crate::tls::install_crypto_provider();
    let now = chrono::Utc::now();
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| fail("creating the data directory")(e.to_string()))?;
    let raw: Arc<dyn Store> =
        Arc::new(SledStore::open(&cfg.data_dir.join("store")).map_err(|e| {
            fail("opening the store (is another ota-server using this data directory?)")(
                e.to_string(),
            )
        })?);
    // Device data is encrypted at rest; everything below sees plaintext.
    let store: Arc<dyn Store> = Arc::new(
        SealedStore::open(raw, &cfg.store_key_file(), SEALED_TREES)
            .map_err(|e| fail("opening the encrypted store")(e.to_string()))?,
    );
    let blobs = BlobStore::open(&cfg.data_dir.join("blobs"))
        .map_err(|e| fail("opening the blob store")(e.to_string()))?;

    let (tls_settings, keys, device_ca, ca_file) = if cfg.dev {
        let pki = DevPki::load_or_create(&cfg.data_dir.join("pki"))
            .map_err(|e| fail("development PKI")(e.to_string()))?;
        let keys = crate::devsetup::load_or_create_keys(&cfg.data_dir.join("keys"))
            .map_err(|e| fail("development keys")(e.to_string()))?;
        if !Repository::exists(store.as_ref())
            .map_err(|e| fail("reading the repository")(e.to_string()))?
        {
            let root = crate::devsetup::dev_root(&keys, now)
                .map_err(|e| fail("development root")(e.to_string()))?;
            Repository::initialize(
                store.as_ref(),
                &[root],
                None,
                &keys.online,
                &cfg.repo_policy,
                now,
            )
            .map_err(|e| fail("initialising the repository")(e.to_string()))?;
        }
        let ca = pki.ca_cert_path();
        (
            ServerConfig::dev_tls(&pki),
            keys.online,
            Some(Arc::new(pki)),
            Some(ca),
        )
    } else {
        let (tls, tuf) = match (&cfg.tls, &cfg.tuf) {
            (Some(t), Some(u)) => (t.clone(), u.clone()),
            _ => {
                return Err(fail("configuration")(
                    "production mode needs [tls] and [tuf]".into(),
                ))
            }
        };
        let pass = Passphrase::from_file(&tuf.passphrase_file)
            .map_err(|e| fail("online key passphrase")(e.to_string()))?;
        let load = |p: &PathBuf| {
            EncryptedKey::read(p)
                .and_then(|k| k.decrypt(&pass))
                .map_err(|e| fail("online key")(format!("{}: {e}", p.display())))
        };
        let keys = OnlineKeys {
            snapshot: load(&tuf.snapshot_key)?,
            timestamp: load(&tuf.timestamp_key)?,
            targets: None,
        };
        if !Repository::exists(store.as_ref())
            .map_err(|e| fail("reading the repository")(e.to_string()))?
        {
            let (roots, targets) = import_repository(&tuf.repository_dir)?;
            Repository::initialize(
                store.as_ref(),
                &roots,
                Some(targets),
                &keys,
                &cfg.repo_policy,
                now,
            )
            .map_err(|e| fail("importing the repository")(e.to_string()))?;
        }
        (tls, keys, None, None)
    };
    let tls = crate::tls::server_config(&tls_settings)
        .map_err(|e| fail("TLS configuration")(e.to_string()))?;
    let repo = Repository::open(Arc::clone(&store), keys, cfg.repo_policy.clone())
        .map_err(|e| fail("opening the repository")(e.to_string()))?;
    let tokens = Tokens::new(Arc::clone(&store));
    let audit = Arc::new(AuditLog::new(Arc::clone(&store)));

    let (mut new_admin_token, mut admin_token_file) = (None, None);
    if cfg.dev {
        let path = cfg.data_dir.join("admin.token");
        let existing = tokens
            .list()
            .map_err(|e| fail("reading tokens")(e.to_string()))?;
        if existing.is_empty() || !path.exists() {
            let (secret, rec) = tokens
                .create("dev-admin", Role::Admin, now)
                .map_err(|e| fail("creating the admin token")(e.to_string()))?;
            crate::devsetup::write_secret(&path, format!("{secret}\n").as_bytes())
                .map_err(|e| fail("writing the admin token")(e.to_string()))?;
            audit
                .append(
                    "server",
                    "token_create",
                    &rec.id,
                    serde_json::json!({"name": rec.name, "role": "admin"}),
                    now,
                )
                .map_err(|e| fail("audit")(e.to_string()))?;
            new_admin_token = Some(secret);
        }
        admin_token_file = Some(path);
    }
    let device_config = DeviceConfig {
        poll_interval_secs: cfg.devices.poll_interval_secs,
        directed_updates: cfg.rollout_mode() == crate::config::RolloutMode::Deployments,
        keep_status_reports: cfg.devices.keep_status_reports,
        keep_oplog_records: cfg.devices.keep_oplog_records,
        ..DeviceConfig::default()
    };
    let devices = Arc::new(
        Devices::open(Arc::clone(&store), device_config)
            .map_err(|e| fail("opening the device registry")(e.to_string()))?,
    );
    // Loads every device record into the registry's cache and counts the fleet once.
    let fleet = Fleet::open(
        Arc::clone(&store),
        Arc::clone(&audit),
        Arc::clone(&devices),
        cfg.fleet.clone(),
        now,
    )
    .map_err(|e| fail("opening groups and deployments")(e.to_string()))?;
    let state = AppState::new(AppParts {
        devices,
        fleet: Arc::new(fleet),
        repo: Arc::new(repo),
        blobs,
        store,
        audit,
        tokens,
        metrics: Arc::new(Metrics::default()),
        transport: Arc::new(TransportMetrics::new()),
        device_ca,
        limits: cfg.limits.clone(),
        dev_mode: cfg.dev,
    });
    Ok(Prepared {
        state,
        tls,
        ca_file,
        new_admin_token,
        admin_token_file,
    })
}

/// Reads the root chain and the latest targets of a repository made by `ota-keys init`.
fn import_repository(dir: &std::path::Path) -> Result<(Vec<Vec<u8>>, Vec<u8>), StartError> {
    let meta = dir.join("metadata");
    let mut roots = Vec::new();
    for v in 1.. {
        match std::fs::read(meta.join(format!("{v}.root.json"))) {
            Ok(b) => roots.push(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(fail("importing the repository")(e.to_string())),
        }
    }
    if roots.is_empty() {
        return Err(fail("importing the repository")(format!(
            "no 1.root.json in {}",
            meta.display()
        )));
    }
    let mut latest: Option<(u64, PathBuf)> = None;
    let entries =
        std::fs::read_dir(&meta).map_err(|e| fail("importing the repository")(e.to_string()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(v) = name
            .strip_suffix(".targets.json")
            .and_then(|v| v.parse::<u64>().ok())
        {
            if latest.as_ref().is_none_or(|(lv, _)| v > *lv) {
                latest = Some((v, entry.path()));
            }
        }
    }
    let (_, path) = latest.ok_or_else(|| {
        fail("importing the repository")(format!("no N.targets.json in {}", meta.display()))
    })?;
    let targets =
        std::fs::read(&path).map_err(|e| fail("importing the repository")(e.to_string()))?;
    Ok((roots, targets))
}

/// Serves until `shutdown` completes, re-signing metadata in the background.
pub async fn run(
    prepared: Prepared,
    listener: TcpListener,
    limits: crate::limits::Limits,
    last_seen_flush_secs: u64,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = prepared.state.clone();
    // Uploads cut by a crash leave temp files; they were never visible, so drop them.
    match state.blobs.sweep_temp().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed unfinished uploads left by an earlier stop"
        ),
        Err(e) => tracing::warn!(error = %e, "could not sweep unfinished uploads"),
    }
    let resign = tokio::spawn(resign_loop(state.clone()));
    // Last-seen times are kept in memory on the poll path and written in batches.
    let (flush_stop, flush_rx) = tokio::sync::oneshot::channel::<()>();
    let flusher = state.devices.spawn_last_seen_flusher(
        std::time::Duration::from_secs(last_seen_flush_secs.max(1)),
        async {
            let _ = flush_rx.await;
        },
    );
    // Phase ticks and the silent-device detector.
    let (fleet_stop, fleet_rx) = tokio::sync::oneshot::channel::<()>();
    let fleet_task = state.fleet.spawn_background(async {
        let _ = fleet_rx.await;
    });
    let app = routes(state.clone());
    let result = serve_with_metrics(
        listener,
        prepared.tls,
        limits,
        app,
        Arc::clone(&state.transport),
        shutdown,
    )
    .await;
    resign.abort();
    let _ = flush_stop.send(());
    let _ = fleet_stop.send(());
    let _ = fleet_task.await;
    // The flusher writes once more on its way out.
    let _ = flusher.await;
    let _ = state.store.flush();
    result
}

/// Re-signs timestamp (and snapshot, and in development targets) before they expire.
async fn resign_loop(state: AppState) {
    loop {
        let due = state.repo.next_resign_due();
        let wait = (due - chrono::Utc::now())
            .to_std()
            .unwrap_or(std::time::Duration::ZERO)
            .min(std::time::Duration::from_secs(60));
        tokio::time::sleep(wait.max(std::time::Duration::from_millis(50))).await;
        let repo = Arc::clone(&state.repo);
        let now = chrono::Utc::now();
        match tokio::task::spawn_blocking(move || repo.resign_if_due(now)).await {
            Ok(Ok(true)) => {
                inc(&state.metrics.resignings);
                let v = state.repo.view();
                tracing::info!(
                    timestamp = v.timestamp_signed.version,
                    snapshot = v.snapshot_signed.version,
                    "re-signed metadata before expiry"
                );
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "re-signing failed; will retry");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(e) => tracing::error!(error = %e, "re-signing task failed"),
        }
    }
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| fail("binding the listen address")(format!("{addr}: {e}")))
}
