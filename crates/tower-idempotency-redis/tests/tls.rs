//! `rediss://`: the store over TLS (rustls) to a `redis-server --tls-port` of the test's own,
//! with certificates the test makes itself (`openssl` command-line tool) and trusts through
//! [`RedisStoreBuilder::tls_root_certificates`](tower_idempotency_redis::RedisStoreBuilder).
//! Needs `redis-server` (Redis >= 7.0, built with TLS, as Debian's is) and `openssl` on the
//! `PATH`.

mod common;

use tower_idempotency::{store::StoreErrorKind, testing};
use tower_idempotency_redis::RedisStore;

use common::{DedicatedServer, free_port, tls::Certificates};

/// A server with a plain port (for the test's own checks) and a TLS port.
struct TlsServer {
    server: DedicatedServer,
    tls_port: u16,
    certs: Certificates,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TlsServer {
    fn start(require_client_certificates: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-idempotency-redis-tls-{:016x}",
            getrandom::u64().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let certs = Certificates::generate(&dir.0);
        let tls_port = free_port();
        let path = |name: &str| certs.path(name).to_string_lossy().into_owned();
        let server = DedicatedServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            if require_client_certificates {
                "yes"
            } else {
                "no"
            },
        ]);
        Self {
            server,
            tls_port,
            certs,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// Clients connected to the TLS port.
    fn tls_clients(&self) -> usize {
        let list: String = self.server.query(redis::cmd("CLIENT").arg("LIST"));
        let laddr = format!("laddr=127.0.0.1:{}", self.tls_port);
        list.lines().filter(|line| line.contains(&laddr)).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let tls = TlsServer::start(false);
    let store = RedisStore::builder()
        .tls_root_certificates(tls.certs.pem("ca.crt"))
        .connect(&tls.url())
        .await
        .unwrap_or_else(|error| panic!("connecting over TLS: {error}"))
        .with_prefix(common::random_prefix("tls"));
    assert_eq!(
        tls.tls_clients(),
        1,
        "the store is connected to the TLS port"
    );

    // The store's contract holds over TLS.
    testing::claim_acquires_then_reports_in_flight(store.clone()).await;
    testing::completed_record_replays_exact_bytes(store.clone()).await;
    testing::fencing_rejects_foreign_tokens(store.clone()).await;
    testing::exclusive_claim_under_contention(store.clone()).await;
    testing::release_frees_the_key(store.clone()).await;
    testing::check_reports_reachable(store.clone()).await;
    println!("rediss://: the conformance checks passed over TLS with a private CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_misconfiguration() {
    let tls = TlsServer::start(false);

    // Another CA, and the system's roots: neither issued the server's certificate.
    for (what, builder) in [
        (
            "another CA",
            RedisStore::builder().tls_root_certificates(tls.certs.pem("other-ca.crt")),
        ),
        ("the system roots", RedisStore::builder()),
    ] {
        let error = builder.connect(&tls.url()).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend, "{what}: {error}");
        assert!(error.to_string().contains("TLS"), "{what}: {error}");
    }

    // TLS options for a plain URL, and a PEM that holds no certificate.
    let error = RedisStore::builder()
        .tls_root_certificates(tls.certs.pem("ca.crt"))
        .connect(&tls.server.url())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{error}");
    let error = RedisStore::builder()
        .tls_root_certificates(b"not a certificate".to_vec())
        .connect(&tls.url())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let tls = TlsServer::start(true);
    let trusted = || RedisStore::builder().tls_root_certificates(tls.certs.pem("ca.crt"));

    let store = trusted()
        .tls_client_certificate(tls.certs.pem("client.crt"), tls.certs.pem("client.key"))
        .connect(&tls.url())
        .await
        .unwrap_or_else(|error| panic!("connecting with a client certificate: {error}"))
        .with_prefix(common::random_prefix("mtls"));
    testing::claim_acquires_then_reports_in_flight(store.clone()).await;

    // Without one, the server refuses the handshake: a misconfiguration, not an outage.
    let error = trusted().connect(&tls.url()).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{error}");
    println!(
        "mutual TLS: without a client certificate: {:?}: {error}",
        error.kind()
    );
}
