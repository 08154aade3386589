//! `backend`: serve the deployments API, mint API tokens, print the OpenAPI description, and
//! talk to a running API (`backend deploy ...`).

use std::process::ExitCode;

use anyhow::Context as _;
use backend::{
    AppState, Db, Settings, app,
    auth::create_token,
    config::{DatabaseArgs, ServeConfig},
    idempotency::{self, StoreSpec, build_store},
    telemetry,
};
use clap::{Parser, Subcommand};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder as ConnectionBuilder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

/// Deployments API server.
///
/// Without a subcommand, `serve` runs with its defaults on 127.0.0.1:8080: a SQLite file
/// `backend.db`, which also keeps the idempotency records. Every flag also reads an environment
/// variable (shown in brackets).
#[derive(Debug, Parser)]
#[command(name = "backend", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    // `backend --listen ...` is `backend serve --listen ...`.
    #[command(flatten)]
    serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve(ServeConfig),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the OpenAPI description (YAML) of the HTTP API.
    Openapi,
    /// Create, show and list deployments on a running API (its command-line client).
    Deploy(backend::cli::DeployArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint an API token for USER and print it once on stdout. Only its SHA-256 hash is
    /// stored, so it cannot be shown again; mint a new one if it is lost.
    Create {
        /// The user id the token authenticates as.
        user: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version exit 0. A wrong command line exits 1, not clap's 2, which
        // `backend deploy` keeps for "gave up on transient failures: retry later".
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(config)) => serve(config).await,
            Some(Command::Token(TokenCommand::Create { user, database })) => {
                token_create(&user, &database).await
            }
            Some(Command::Openapi) => {
                let yaml = backend::openapi::yaml().map_err(anyhow::Error::msg)?;
                print!("{yaml}");
                Ok(())
            }
            // The client's commands have exit statuses of their own (0, 1, 2).
            Some(Command::Deploy(args)) => return Ok(backend::cli::run(args).await),
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    telemetry::init_logging(config.log_format);
    let db = Db::connect(&config.database.database_url).await?;
    let spec: StoreSpec = config.idempotency_store.parse()?;
    let idempotency = build_store(&config.idempotency_store, &config.store, &db).await?;
    let settings = Settings {
        idempotency_ttl: config.idempotency_ttl,
        idempotency_lease: config.idempotency_lease,
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
    };
    let state = AppState::new(db.clone(), idempotency.records.clone()).with_settings(settings);
    // Refuse a configuration the layer cannot keep its promise with (a memory budget too
    // small for the response limit, say) with a message, before listening.
    idempotency::validate(&state).context("invalid idempotency configuration")?;
    let handler_tasks = state.handler_tasks.clone();
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        database = db.kind(),
        // The kind only: a store URL may carry a password.
        idempotency_store = spec.kind(),
        idempotency_ttl = %humantime::format_duration(config.idempotency_ttl),
        max_body_bytes = config.max_body_bytes,
        request_timeout = %humantime::format_duration(config.request_timeout),
        "listening"
    );
    serve_connections(listener, app(state), config.header_timeout).await;
    // Create handlers whose clients left run on; let them finish and store their responses
    // (or commit their transactions), so their keys are not left to expire by the lease.
    if tokio::time::timeout(SHUTDOWN_GRACE, handler_tasks.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            running = handler_tasks.running(),
            "handlers still running after the shutdown grace period"
        );
    }
    tracing::info!("in-flight requests finished; shutting down");
    // Stop deleting expired records before the pool they are deleted through closes.
    idempotency.shutdown().await;
    db.close().await;
    Ok(())
}

/// Serves HTTP/1.1 and HTTP/2 connections until SIGINT or SIGTERM, then lets the open
/// connections finish their requests. Unlike `axum::serve`, it gives hyper a timer, which
/// hyper needs to close connections whose headers do not arrive within `header_timeout`.
async fn serve_connections(
    listener: TcpListener,
    router: axum::Router,
    header_timeout: std::time::Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// How long shutdown waits for create handlers that outlived their clients.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what orchestrators send); the server then stops
/// accepting connections and lets in-flight requests finish.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down gracefully"),
        () = terminate => tracing::info!("SIGTERM received; shutting down gracefully"),
    }
}

async fn token_create(user: &str, database: &DatabaseArgs) -> anyhow::Result<()> {
    let db = Db::connect(&database.database_url).await?;
    let token = create_token(&db, user).await;
    db.close().await;
    let token = token?;
    // stdout carries the token alone, so `TOKEN=$(backend token create alice)` works.
    println!("{token}");
    eprintln!("Created an API token for user `{user}`. It is shown only once; store it now.");
    Ok(())
}
