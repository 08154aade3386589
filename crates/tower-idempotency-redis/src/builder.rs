//! [`RedisStoreBuilder`]: timeouts, prefix, TLS, and connecting.

use std::time::Duration;

use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    TlsCertificates,
    cluster::ClusterClient,
    io::tcp::{TcpSettings, socket2::TcpKeepalive},
};
use tower_idempotency::store::{StoreError, StoreErrorKind};

use crate::{
    DEFAULT_PREFIX, RedisStore,
    cluster::Cluster,
    connection::Connection,
    error::{config_error, within},
    single::SingleNode,
};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// TCP keepalive: the first probe after this long idle, then one every
/// [`KEEPALIVE_INTERVAL`], so that a peer that vanished while the connection was idle is
/// noticed before the next command needs it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
#[cfg(any(target_os = "android", target_os = "linux"))]
const KEEPALIVE_PROBES: u32 = 3;

/// Configures and connects a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    root_certificates: Option<Vec<u8>>,
    client_identity: Option<ClientTlsConfig>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            root_certificates: None,
            client_identity: None,
        }
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key the store writes (default `"idempotency:"`). Give each
    /// application sharing a Redis its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to connect to a server may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the reply to a command (default 1 s).
    ///
    /// An operation as a whole, reconnecting included, fails with
    /// [`StoreErrorKind::Unavailable`] after the connect timeout plus this. A connection on
    /// which a command waited this long without any reply arriving is given up and replaced;
    /// on a cluster, the whole cluster connection is rebuilt when the node of a command that
    /// waited this long does not answer for half as long again (see the
    /// [crate docs](crate#failures)).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM certificates) for
    /// `rediss://` connections, **instead of** the system's trust store: for a Redis whose
    /// certificate a private CA issued.
    ///
    /// Without it, `rediss://` URLs verify the server against the operating system's trusted
    /// roots. Either way the certificate must be valid for the host name in the URL. Setting
    /// any TLS option makes a plain `redis://` URL an error.
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents a client certificate (mutual TLS, `tls-auth-clients yes` on the server):
    /// the certificate chain and its private key, both PEM.
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_identity = Some(ClientTlsConfig {
            client_cert: certificate_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    fn deadline(&self) -> Duration {
        self.connect_timeout.saturating_add(self.response_timeout)
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        if self.root_certificates.is_none() && self.client_identity.is_none() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self.client_identity.clone(),
            root_cert: self.root_certificates.clone(),
        })
    }

    /// Keepalive probes for idle connections, and (Linux) `TCP_USER_TIMEOUT`: the kernel
    /// drops a connection whose sent bytes stay unacknowledged for twice the deadline, so a
    /// peer that vanished closes the connection instead of leaving it hanging.
    fn tcp_settings(&self) -> TcpSettings {
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        #[cfg(any(target_os = "android", target_os = "linux"))]
        let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
        let settings = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive);
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        let settings = settings.set_user_timeout(
            self.deadline()
                .saturating_mul(2)
                .max(Duration::from_secs(1)),
        );
        settings
    }

    /// Connects to a single Redis server, e.g. `redis://127.0.0.1:6379`,
    /// `redis://:password@host:6379/2`, or over TLS `rediss://host:6380` (see
    /// [`tls_root_certificates`](Self::tls_root_certificates) for a private CA).
    ///
    /// The connection is multiplexed (all clones and concurrent requests share it) and
    /// replaced by itself when it fails or goes silent.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Unavailable`] if the server cannot be reached in time,
    /// [`StoreErrorKind::Backend`] if the URL is invalid, the server refuses the credentials,
    /// its TLS certificate is not trusted, or it refuses the scripts (Redis < 7).
    pub async fn connect(self, url: &str) -> Result<RedisStore, StoreError> {
        let info = self.connection_info(url)?;
        let tls = is_tls(&info);
        let client = match self.certificates() {
            Some(certificates) if tls => redis::Client::build_with_tls(info, certificates),
            Some(_) => return Err(tls_needs_rediss()),
            None => redis::Client::open(info),
        }
        .map_err(|e| config_error("Redis URL or TLS configuration", e))?;
        if tls {
            install_crypto_provider();
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let node = within(self.deadline(), SingleNode::connect(client, config)).await?;
        self.finish(Connection::Single(node)).await
    }

    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, StoreError> {
        Ok(url
            .into_connection_info()
            .map_err(|e| config_error("Redis URL", e))?
            .set_tcp_settings(self.tcp_settings()))
    }

    /// Connects to a Redis Cluster through any of its nodes, e.g.
    /// `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]` (`rediss://` for TLS). The rest
    /// of the cluster is discovered from them.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Unavailable`] if the cluster cannot be reached in time,
    /// [`StoreErrorKind::Backend`] if no or an invalid URL was given, or as
    /// [`connect`](Self::connect).
    pub async fn connect_cluster<I, S>(self, urls: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|url| self.connection_info(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = nodes.first() else {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "connect_cluster needs the URL of at least one cluster node",
            ));
        };
        let tls = is_tls(first);
        let deadline = self.deadline();
        let mut builder = ClusterClient::builder(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .overall_response_timeout(Some(deadline))
            .tcp_settings(self.tcp_settings())
            // Redirects and retries after a refused connection wait 20 ms and up: the default
            // (1.28 s at least) would outlast the deadline.
            .min_retry_wait(20)
            .max_retry_wait(500);
        match self.certificates() {
            Some(certificates) if tls => builder = builder.certs(certificates),
            Some(_) => return Err(tls_needs_rediss()),
            None => {}
        }
        let client = builder
            .build()
            .map_err(|e| config_error("Redis Cluster URLs or TLS configuration", e))?;
        if tls {
            install_crypto_provider();
        }
        let cluster = within(
            deadline,
            Cluster::connect(client, self.response_timeout, deadline),
        )
        .await?;
        self.finish(Connection::Cluster(cluster)).await
    }

    async fn finish(self, connection: Connection) -> Result<RedisStore, StoreError> {
        let deadline = self.deadline();
        let store = RedisStore::new(connection, self.prefix.into(), deadline);
        match within(deadline, store.connection().load_scripts()).await {
            Ok(()) => {}
            // On a cluster the scripts are loaded up front only to save a round trip: a
            // primary that cannot be reached now gets them on first use (see `scripts`).
            Err(error)
                if matches!(store.connection(), Connection::Cluster(_))
                    && error.kind() == StoreErrorKind::Unavailable =>
            {
                tracing::warn!(%error, "could not load the scripts on every primary up front");
            }
            Err(error) => return Err(error),
        }
        Ok(store)
    }
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

fn tls_needs_rediss() -> StoreError {
    StoreError::new(
        StoreErrorKind::Backend,
        "TLS options were given for a plain redis:// URL; use rediss://",
    )
}

/// rustls needs a process-wide crypto provider. This crate builds rustls with `ring` only, so
/// one is found by itself, unless the application enables another provider too (then neither
/// is chosen for it): install `ring` if nothing is installed yet. An application that
/// installed its own keeps it.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
