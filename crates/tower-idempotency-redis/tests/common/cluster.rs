//! [`PrivateCluster`]: a Redis Cluster of the test's own (primaries and replicas on free
//! loopback ports), for faults the shared cluster must not see: paused nodes, flushed
//! scripts. Every node is killed when it is dropped.

use std::time::Duration;

use super::{DedicatedServer, free_port, wait_for};

/// How long building the cluster may take (nodes meeting, replicas syncing).
const FORMING: Duration = Duration::from_secs(60);

pub(crate) struct PrivateCluster {
    pub(crate) primaries: Vec<DedicatedServer>,
    /// `replicas[i]` replicate `primaries[i]`.
    pub(crate) replicas: Vec<DedicatedServer>,
}

impl PrivateCluster {
    /// `primaries` primaries sharing the slots evenly, each with one replica.
    pub(crate) fn start(primaries: usize) -> Self {
        let node = || {
            let bus = free_port().to_string();
            DedicatedServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "5000",
                // Replicas sync at once, not after the default 5 s of waiting for others.
                "--repl-diskless-sync-delay",
                "0",
            ])
        };
        let cluster = Self {
            primaries: (0..primaries).map(|_| node()).collect(),
            replicas: (0..primaries).map(|_| node()).collect(),
        };
        let first = &cluster.primaries[0];
        for other in cluster.nodes().skip(1) {
            let bus: Vec<String> = other.query(redis::cmd("CONFIG").arg("GET").arg("cluster-port"));
            let () = first.query(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(other.port())
                    .arg(&bus[1]),
            );
        }
        let slots = 16384 / primaries;
        for (i, primary) in cluster.primaries.iter().enumerate() {
            let start = i * slots;
            let end = if i + 1 == primaries {
                16383
            } else {
                start + slots - 1
            };
            let () = primary.query(
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(start)
                    .arg(end),
            );
        }
        let total = cluster.nodes().count();
        for node in cluster.nodes() {
            wait_for("every node to know every other", FORMING, || {
                info_field(node, "CLUSTER", "INFO", "cluster_known_nodes")
                    == Some(total.to_string())
            });
        }
        for (primary, replica) in cluster.primaries.iter().zip(&cluster.replicas) {
            let id: String = primary.query(redis::cmd("CLUSTER").arg("MYID"));
            let () = replica.query(redis::cmd("CLUSTER").arg("REPLICATE").arg(id));
        }
        for replica in &cluster.replicas {
            wait_for("the replicas to sync", FORMING, || {
                info_field(replica, "INFO", "replication", "master_link_status")
                    == Some("up".to_owned())
            });
        }
        for node in cluster.nodes() {
            wait_for("cluster_state:ok on every node", FORMING, || {
                info_field(node, "CLUSTER", "INFO", "cluster_state") == Some("ok".to_owned())
            });
            // Every node's slot map lists each primary with its replica, so that a client
            // that asks any node knows the replicas (and would, before the fix, send them
            // SCRIPT LOAD).
            wait_for("every node to see every replica", FORMING, || {
                let slots: Vec<Vec<redis::Value>> = node.query(redis::cmd("CLUSTER").arg("SLOTS"));
                slots.len() == primaries && slots.iter().all(|range| range.len() == 4)
            });
        }
        cluster
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &DedicatedServer> {
        self.primaries.iter().chain(&self.replicas)
    }

    pub(crate) fn primary_urls(&self) -> Vec<String> {
        self.primaries.iter().map(DedicatedServer::url).collect()
    }
}

/// `field` of the `key: value` lines a command answers (`INFO replication`, `CLUSTER INFO`).
fn info_field(node: &DedicatedServer, command: &str, arg: &str, field: &str) -> Option<String> {
    let text: String = redis::cmd(command)
        .arg(arg)
        .query(&mut node.connection())
        .ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}
