//! `ota-server`: the signing server of the ota update system.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ota_server::auth::{Role, Tokens};
use ota_server::config::ServerConfig;
use ota_server::pki::DevPki;

#[derive(Parser)]
#[command(
    name = "ota-server",
    version,
    about = "Secure OTA update server: TUF repository, device API, fleet operations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTPS. With --dev, makes a development PKI, TUF keys and an admin token on first start.
    Serve {
        /// Development mode (CAUTION: the server holds the targets key).
        #[arg(long)]
        dev: bool,
        /// Data directory (development mode; a config file sets its own).
        #[arg(long, default_value = "./ota-data")]
        data_dir: PathBuf,
        /// TOML configuration file (production).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding the configuration (use 127.0.0.1:0 for any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Manage API tokens while the server is stopped (the store is locked while it runs;
    /// use the API's /api/v1/tokens then).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Device identities from the development device CA.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret once.
    Create {
        /// Data directory.
        #[arg(long, default_value = "./ota-data")]
        data_dir: PathBuf,
        /// A name for the token.
        #[arg(long)]
        name: String,
        /// admin, publisher, operator or viewer.
        #[arg(long)]
        role: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Data directory.
        #[arg(long, default_value = "./ota-data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by its id.
    Revoke {
        /// Data directory.
        #[arg(long, default_value = "./ota-data")]
        data_dir: PathBuf,
        /// The token's id (from `list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Issue a device key and certificate, as at a factory (development device CA).
    Issue {
        /// Data directory.
        #[arg(long, default_value = "./ota-data")]
        data_dir: PathBuf,
        /// Device id (becomes the certificate's CN).
        id: String,
        /// Where to write `<id>.crt`, `<id>.key` and `ca.crt`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Certificate lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ota_server::tls::install_crypto_provider();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Serve {
            dev,
            data_dir,
            config,
            listen,
        } => {
            let mut cfg = match config {
                Some(path) => ServerConfig::from_file(&path)?,
                None if dev => ServerConfig::dev(&data_dir),
                None => {
                    return Err(
                        "give --config FILE for production, or --dev for a development server"
                            .into(),
                    )
                }
            };
            if let Some(addr) = listen {
                cfg.listen = addr;
            }
            cfg.validate()?;
            serve(cfg)
        }
        Command::Token { command } => token(command),
        Command::Device {
            command:
                DeviceCommand::Issue {
                    data_dir,
                    id,
                    out,
                    days,
                },
        } => {
            ota_server::identity::validate_device_id(&id)?;
            let pki = DevPki::load_or_create(&data_dir.join("pki"))?;
            let (cert, key) = pki.issue_device_cert(&id, days)?;
            std::fs::create_dir_all(&out)?;
            ota_server::devsetup::write_secret(&out.join(format!("{id}.key")), key.as_bytes())?;
            ota_server::fsutil::write_atomic(&out.join(format!("{id}.crt")), cert.as_bytes())?;
            ota_server::fsutil::write_atomic(&out.join("ca.crt"), pki.ca_cert_pem().as_bytes())?;
            println!(
                "wrote {0}/{id}.crt, {0}/{id}.key (0600) and {0}/ca.crt",
                out.display()
            );
            Ok(())
        }
    }
}

fn serve(cfg: ServerConfig) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let prepared = tokio::task::block_in_place(|| ota_server::run::prepare(&cfg))?;
        let listener = ota_server::run::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        print_welcome(&cfg, &prepared, addr);
        let limits = cfg.limits.clone();
        ota_server::run::run(
            prepared,
            listener,
            limits,
            cfg.devices.last_seen_flush_secs,
            shutdown_signal(),
        )
        .await?;
        tracing::info!("shut down cleanly");
        Ok(())
    })
}

fn print_welcome(cfg: &ServerConfig, p: &ota_server::run::Prepared, addr: std::net::SocketAddr) {
    // The line tests and scripts wait for; keep its form.
    println!("ota-server listening on https://{addr}");
    if !cfg.dev {
        return;
    }
    let data = cfg.data_dir.display();
    let ca = p.ca_file.as_deref().map(Path::display);
    let ca = ca.map(|c| c.to_string()).unwrap_or_default();
    let token_file = p
        .admin_token_file
        .as_deref()
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    if let Some(tok) = &p.new_admin_token {
        println!("admin token (also in {token_file}): {tok}");
    } else {
        println!("admin token: in {token_file}");
    }
    println!(
        "\nDevelopment server ready (CAUTION: it holds the targets key; not for production).\n\
         - CA certificate for agents and clients: {ca}\n\
         - Issue a device identity:  ota-server device issue --data-dir {data} my-device-1 --out ./device\n\
         - Upload an image:          curl --cacert {ca} -H \"Authorization: Bearer $(cat {token_file})\" -T image.bin https://{addr}/api/v1/blobs\n\
         - Publish it as a release:  curl --cacert {ca} -H \"Authorization: Bearer $(cat {token_file})\" -H 'content-type: application/json' \\\n\
         \x20                          -d '{{\"name\":\"image-1.0.0.bin\",\"sha256\":\"<from upload>\",\"version\":\"1.0.0\",\"hardware_ids\":[\"my-board\"]}}' https://{addr}/api/v1/releases\n\
         - TUF repository:           https://{addr}/metadata/1.root.json (trusted root), /metadata/timestamp.json, /targets/...\n\
         - Health and metrics:       https://{addr}/healthz, https://{addr}/metrics"
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

fn token(command: TokenCommand) -> Result<(), BoxError> {
    type Opened = (Tokens, ota_server::audit::AuditLog);
    let open = |dir: &Path| -> Result<Opened, BoxError> {
        let store: std::sync::Arc<dyn ota_server::store::Store> = std::sync::Arc::new(
            ota_server::store::sled::SledStore::open(&dir.join("store")).map_err(|e| {
                format!(
                    "opening the store in {} (stop the server first, or use the API): {e}",
                    dir.display()
                )
            })?,
        );
        Ok((
            Tokens::new(store.clone()),
            ota_server::audit::AuditLog::new(store),
        ))
    };
    match command {
        TokenCommand::Create {
            data_dir,
            name,
            role,
        } => {
            let role =
                Role::parse(&role).ok_or("role must be admin, publisher, operator or viewer")?;
            let (tokens, audit) = open(&data_dir)?;
            let now = chrono::Utc::now();
            let (secret, rec) = tokens.create(&name, role, now)?;
            audit.append(
                "cli",
                "token_create",
                &rec.id,
                serde_json::json!({"name": rec.name, "role": rec.role}),
                now,
            )?;
            println!("{secret}");
            eprintln!(
                "created token {} ({:?}, id {}); the secret above is shown once",
                rec.name, rec.role, rec.id
            );
        }
        TokenCommand::List { data_dir } => {
            for t in open(&data_dir)?.0.list()? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{}\t{:?}\t{}", t.id, t.name, t.role, state);
            }
        }
        TokenCommand::Revoke { data_dir, id } => {
            let (tokens, audit) = open(&data_dir)?;
            let now = chrono::Utc::now();
            if !tokens.revoke(&id, now)? {
                return Err(format!("no active token with id {id}").into());
            }
            audit.append("cli", "token_revoke", &id, serde_json::json!({}), now)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
