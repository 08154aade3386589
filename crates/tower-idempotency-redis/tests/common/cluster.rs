//! [`PrivateCluster`]: a Redis Cluster of the test's own (primaries and replicas on free
//! loopback ports), for faults the shared cluster must not see: paused nodes, flushed
//! scripts, connections gone silent. Every node is killed when it is dropped.
//!
//! [`RelayedCluster`]: primaries each reached through a testkit [`Relay`] of its own.

use std::time::Duration;

use tower_idempotency_testkit::Relay;

use super::{DedicatedServer, free_port, wait_for};

/// How long building the cluster may take (nodes meeting, replicas syncing).
const FORMING: Duration = Duration::from_secs(60);

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

pub(crate) struct PrivateCluster {
    pub(crate) primaries: Vec<DedicatedServer>,
    /// `replicas[i]` replicate `primaries[i]` (none in a [`RelayedCluster`]).
    pub(crate) replicas: Vec<DedicatedServer>,
}

/// `redis-server` arguments of a cluster node (its bus on a free port of its own).
fn node_args(extra: &[&str]) -> Vec<String> {
    let bus = free_port().to_string();
    [
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
    ]
    .iter()
    .chain(extra)
    .map(|&a| a.to_owned())
    .collect()
}

fn start_node(port: u16, extra: &[&str]) -> DedicatedServer {
    let args = node_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    DedicatedServer::start_on(port, &args)
}

impl PrivateCluster {
    /// `primaries` primaries sharing the slots evenly, each with one replica.
    pub(crate) fn start(primaries: usize) -> Self {
        let cluster = Self {
            primaries: (0..primaries)
                .map(|_| start_node(free_port(), &[]))
                .collect(),
            replicas: (0..primaries)
                .map(|_| start_node(free_port(), &[]))
                .collect(),
        };
        cluster.form();
        cluster
    }

    /// Meets the nodes, assigns the slots, attaches the replicas, and waits until every node
    /// agrees.
    fn form(&self) {
        let primaries = self.primaries.len();
        let first = &self.primaries[0];
        for other in self.nodes().skip(1) {
            let bus: Vec<String> = other.query(redis::cmd("CONFIG").arg("GET").arg("cluster-port"));
            let () = first.query(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(other.port())
                    .arg(&bus[1]),
            );
        }
        for (i, primary) in self.primaries.iter().enumerate() {
            let (start, end) = self.slot_range(i);
            let () = primary.query(
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(start)
                    .arg(end),
            );
        }
        let total = self.nodes().count();
        for node in self.nodes() {
            wait_for("every node to know every other", FORMING, || {
                info_field(node, "CLUSTER", "INFO", "cluster_known_nodes")
                    == Some(total.to_string())
            });
        }
        for (primary, replica) in self.primaries.iter().zip(&self.replicas) {
            let id: String = primary.query(redis::cmd("CLUSTER").arg("MYID"));
            let () = replica.query(redis::cmd("CLUSTER").arg("REPLICATE").arg(id));
        }
        for replica in &self.replicas {
            wait_for("the replicas to sync", FORMING, || {
                info_field(replica, "INFO", "replication", "master_link_status")
                    == Some("up".to_owned())
            });
        }
        // A slot range's entry: start, end, the primary, then one entry per replica.
        let entry_len = 3 + self.replicas.len() / primaries;
        for node in self.nodes() {
            wait_for("cluster_state:ok on every node", FORMING, || {
                info_field(node, "CLUSTER", "INFO", "cluster_state") == Some("ok".to_owned())
            });
            // Every node's slot map lists each primary with its replica, so that a client
            // that asks any node knows the replicas (and would, before the fix, send them
            // SCRIPT LOAD).
            wait_for("every node to see every replica", FORMING, || {
                let slots: Vec<Vec<redis::Value>> = node.query(redis::cmd("CLUSTER").arg("SLOTS"));
                slots.len() == primaries && slots.iter().all(|range| range.len() == entry_len)
            });
        }
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &DedicatedServer> {
        self.primaries.iter().chain(&self.replicas)
    }

    pub(crate) fn primary_urls(&self) -> Vec<String> {
        self.primaries.iter().map(DedicatedServer::url).collect()
    }

    /// The slots of primary `i` (inclusive), as `form` assigns them.
    pub(crate) fn slot_range(&self, i: usize) -> (u16, u16) {
        let primaries = u16::try_from(self.primaries.len()).expect("a few primaries");
        let i = u16::try_from(i).expect("a few primaries");
        let share = SLOTS / primaries;
        let start = i * share;
        let end = if i + 1 == primaries {
            SLOTS - 1
        } else {
            start + share - 1
        };
        (start, end)
    }

    /// Which primary holds `key`.
    pub(crate) fn primary_of(&self, key: &str) -> usize {
        let slot = key_slot(key);
        (0..self.primaries.len())
            .find(|&i| {
                let (start, end) = self.slot_range(i);
                (start..=end).contains(&slot)
            })
            .expect("every slot is assigned")
    }
}

/// A cluster of primaries (no replicas), each reached by clients through a [`Relay`] of its
/// own: every node announces its relay's port (`cluster-announce-port`), so the slot map a
/// client reads, and every redirect, lead through the relays, while the nodes talk to each
/// other directly on their bus ports (a fault on a relay never looks like a failed node to
/// the cluster: no failover).
pub(crate) struct RelayedCluster {
    pub(crate) cluster: PrivateCluster,
    /// `relays[i]` leads to `cluster.primaries[i]`.
    pub(crate) relays: Vec<Relay>,
}

impl RelayedCluster {
    /// Needs a multi-threaded runtime (forming the cluster blocks one worker).
    pub(crate) async fn start(primaries: usize) -> Self {
        let mut relays = Vec::with_capacity(primaries);
        let mut ports = Vec::with_capacity(primaries);
        for _ in 0..primaries {
            let port = free_port();
            relays.push(Relay::start(([127, 0, 0, 1], port).into()).await);
            ports.push(port);
        }
        let cluster = tokio::task::block_in_place(|| {
            let cluster = PrivateCluster {
                primaries: ports
                    .iter()
                    .zip(&relays)
                    .map(|(&port, relay)| {
                        start_node(
                            port,
                            &["--cluster-announce-port", &relay.port().to_string()],
                        )
                    })
                    .collect(),
                replicas: Vec::new(),
            };
            cluster.form();
            let announced: Vec<u16> = relays.iter().map(Relay::port).collect();
            for node in cluster.nodes() {
                wait_for("every node to announce its relay", FORMING, || {
                    slot_map_ports(node)
                        .iter()
                        .all(|port| announced.contains(port))
                });
            }
            cluster
        });
        Self { cluster, relays }
    }

    /// The nodes' URLs through their relays: what a client is given.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.relays
            .iter()
            .map(|relay| format!("redis://{}", relay.addr()))
            .collect()
    }
}

/// The client ports of the primaries in `node`'s `CLUSTER SLOTS`.
fn slot_map_ports(node: &DedicatedServer) -> Vec<u16> {
    let slots: Vec<Vec<redis::Value>> = node.query(redis::cmd("CLUSTER").arg("SLOTS"));
    slots
        .iter()
        .filter_map(|range| match range.get(2) {
            Some(redis::Value::Array(primary)) => match primary.get(1) {
                Some(redis::Value::Int(port)) => u16::try_from(*port).ok(),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The hash slot of `key` (CRC16/XMODEM modulo 16384; keys without a `{hash tag}`).
pub(crate) fn key_slot(key: &str) -> u16 {
    assert!(!key.contains('{'), "hash tags are not supported here");
    let mut crc: u16 = 0;
    for &byte in key.as_bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc % SLOTS
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
