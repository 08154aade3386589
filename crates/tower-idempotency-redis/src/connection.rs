//! The connection behind a store: one server or a cluster, both reconnecting by themselves.

use std::pin::Pin;

use redis::{
    Cmd, RedisResult, Value,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
};

use crate::{cluster::Cluster, scripts, single::SingleNode};

/// Whether a command may be sent a second time when the connection failed under it, the
/// outcome of the first attempt unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// Sending it twice does what sending it once does (a claim, which recognises its own
    /// record; a renewal; a `PING`).
    Safe,
    /// A second attempt could answer differently although the first one worked.
    Never,
}

#[derive(Clone)]
pub(crate) enum Connection {
    Single(SingleNode),
    Cluster(Cluster),
}

impl Connection {
    /// Sends one command (routed by its key on a cluster: `key`, which is `None` only for
    /// commands without one).
    ///
    /// `resend` is what this crate's own recovery may do; the cluster client also re-sends
    /// commands by itself after timeouts and lost connections, on the same connection.
    /// A server's error reply is an `Err`.
    ///
    /// Boxed: the client's futures (the cluster's above all) take kilobytes, and unboxed they
    /// would be part of every store call's future and of the layer's future of every request
    /// (16 KB per request, measured), where one small allocation per command costs less.
    pub(crate) fn query<'a>(
        &'a self,
        cmd: &'a Cmd,
        key: Option<&'a str>,
        resend: Resend,
    ) -> Pin<Box<dyn Future<Output = RedisResult<Value>> + Send + 'a>> {
        Box::pin(async move {
            match self {
                Self::Single(node) => node.query(cmd, resend).await,
                Self::Cluster(cluster) => cluster.query(cmd, key, resend).await,
            }
            .and_then(Value::extract_error)
        })
    }

    /// Loads every script where records live: the server, or every primary of a cluster
    /// (never the replicas: scripts run on primaries only, and a replica that does not answer
    /// must not hold anything up).
    pub(crate) async fn load_scripts(&self) -> RedisResult<()> {
        for script in scripts::all() {
            match self {
                Self::Single(node) => {
                    node.query(&script.load_cmd(), Resend::Safe)
                        .await?
                        .extract_error()?;
                }
                Self::Cluster(cluster) => {
                    cluster
                        .route_command(
                            script.load_cmd(),
                            RoutingInfo::MultiNode((
                                MultipleNodeRoutingInfo::AllMasters,
                                Some(ResponsePolicy::AllSucceeded),
                            )),
                        )
                        .await?
                        .extract_error()?;
                }
            }
        }
        Ok(())
    }

    /// `PING`: the server, or every primary of a cluster.
    pub(crate) async fn ping(&self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        self.query(&ping, None, Resend::Safe).await.map(drop)
    }

    pub(crate) fn mode(&self) -> &'static str {
        match self {
            Self::Single(_) => "single node",
            Self::Cluster(_) => "cluster",
        }
    }
}
