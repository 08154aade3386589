//! `backend`: serve the deployments API, manage API tokens, print the OpenAPI description, and
//! talk to a running API (`backend deploy ...`).

use std::process::ExitCode;

use anyhow::Context as _;
use backend::{
    AppState, Db, Settings, app,
    cli::tokens,
    config::{DatabaseArgs, ServeConfig},
    idempotency::{self, StoreSpec, build_store},
    ratelimit::RateLimitConfig,
    server::{ConnectionLimits, Readiness, serve_connections, shutdown_sequence},
    telemetry,
};
use clap::{Parser, Subcommand};
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
    /// Mint an API token for USER and print it once on stdout (its id on stderr). Only its
    /// SHA-256 hash is stored, so it cannot be shown again; mint a new one if it is lost.
    Create {
        /// The user id the token authenticates as.
        user: String,
        /// A label for the listing (what the token is for).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `30d`, `12h`; after it the token gets 401. Default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires_in: Option<std::time::Duration>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List the tokens (of USER, if given): id, user, name, created, last used (to the
    /// minute), expires, status. Never the token nor its hash.
    List {
        /// Only this user's tokens.
        user: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke the token ID (from `token list`): it gets 401 from now on.
    Revoke {
        /// The token's id (`tok_...`).
        id: String,
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
            // clap quotes a rejected value, which may be a URL with a password.
            if error.use_stderr() {
                eprint!("{}", backend::redact::text(&error.render().to_string()));
            } else {
                let _ = error.print();
            }
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
            Some(Command::Token(command)) => token(command).await,
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
            eprintln!("error: {}", backend::redact::text(&format!("{error:#}")));
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
    let state = AppState::new(db.clone(), idempotency.records.clone())
        .with_settings(settings)
        .with_require_idempotency_key(config.require_idempotency_key)
        .with_rate_limits(RateLimitConfig {
            auth_failures_per_minute: config.auth_failure_limit,
            requests_per_token_per_minute: config.token_rate_limit,
        });
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
        // Which file or server, never a password (a relative SQLite path is resolved against
        // the working directory, which is what this shows).
        database_location = %db.describe(),
        idempotency_store = spec.kind(),
        idempotency_store_url = %backend::redact::spec(&config.idempotency_store),
        max_connections = config.max_connections,
        auth_failure_limit = config.auth_failure_limit,
        token_rate_limit = config.token_rate_limit,
        header_timeout = %humantime::format_duration(config.header_timeout),
        idempotency_ttl = %humantime::format_duration(config.idempotency_ttl),
        max_body_bytes = config.max_body_bytes,
        request_timeout = %humantime::format_duration(config.request_timeout),
        "listening"
    );
    let limits = ConnectionLimits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    // The shutdown's order: readiness fails, connections drain, detached handlers finish,
    // all within --shutdown-grace of the signal (see `shutdown_sequence`).
    let readiness = Readiness::default();
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel();
    let shutdown = async {
        let deadline = shutdown_sequence(
            readiness.clone(),
            config.shutdown_readiness_delay,
            config.shutdown_grace,
        )
        .await;
        let _ = deadline_tx.send(deadline);
        deadline
    };
    serve_connections(listener, readiness.guard(app(state)), limits, shutdown).await;
    let deadline = deadline_rx
        .await
        .unwrap_or_else(|_| std::time::Instant::now() + config.shutdown_grace);
    // Create handlers whose clients left run on; let them finish and store their responses
    // (or commit their transactions), so their keys are not left to expire by the lease.
    if tokio::time::timeout_at(deadline.into(), handler_tasks.wait_idle())
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

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let database = match &command {
        TokenCommand::Create { database, .. }
        | TokenCommand::List { database, .. }
        | TokenCommand::Revoke { database, .. } => database,
    };
    let db = Db::connect(&database.database_url).await?;
    let result = match &command {
        TokenCommand::Create {
            user,
            name,
            expires_in,
            ..
        } => tokens::create(&db, user, name.as_deref(), *expires_in).await,
        TokenCommand::List { user, .. } => tokens::list(&db, user.as_deref()).await,
        TokenCommand::Revoke { id, .. } => tokens::revoke(&db, id).await,
    };
    db.close().await;
    result
}
