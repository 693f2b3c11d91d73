//! How a client verb reaches the cluster: a node's HTTP gateway (`--endpoint`, the default)
//! or a node's libp2p port (`--peer`). Either way the verb gets a [`Client`] (its HTTP or its
//! libp2p transport), which gives the same operations with the same results and the same
//! errors, so each verb is written once.
//!
//! The gateway is the default because it is what a local node always serves
//! (`http://127.0.0.1:7380`) and it needs nothing but TCP; `--peer` dials a node over libp2p
//! with a throwaway identity (and the cluster name and pre-shared key of a private cluster),
//! for a node whose gateway is off or not reachable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use swarmkv::client::{Cursor, Endpoint, HttpOptions, StatusDocument, DEFAULT_ENDPOINT};
use swarmkv::core::{lease_hex, ClientError, Consistency, LeaseInfo, LeaseRequest};
use swarmkv::http::encoding::{b64, text, RecordJson};
use swarmkv::{Client, DecommissionError};
use swarmkv_net::Multiaddr;
use swarmkv_store::{CasAction, Compare, KvRecord};

use super::error::CliError;
use super::{node_hex, show};

/// The transport flags every client verb takes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct TransportArgs {
    /// A node's HTTP gateway. Used unless --peer is given. Several (repeated, or a comma
    /// list): the first that can be reached serves; one that refuses the connection or does
    /// not accept it in time is left for the next.
    #[arg(
        long,
        env = "SWARMKV_ENDPOINT",
        value_name = "http://HOST:PORT",
        default_value = DEFAULT_ENDPOINT,
        value_delimiter = ',',
        conflicts_with = "peer"
    )]
    pub endpoint: Vec<Endpoint>,
    /// A node's libp2p address: talk to it over libp2p instead of HTTP. Several (repeated,
    /// or a comma list): the first that can be dialled serves.
    #[arg(
        long,
        env = "SWARMKV_PEER",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub peer: Vec<Multiaddr>,
    /// With --peer: the cluster name (a node of another name refuses the connection).
    #[arg(long, env = "SWARMKV_CLUSTER", default_value = swarmkv_net::DEFAULT_CLUSTER_NAME)]
    pub cluster: String,
    /// With --peer: the pre-shared key file of a private cluster.
    #[arg(long, env = "SWARMKV_PSK_FILE", value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// Over HTTP: the gateway's bearer token (a node started with --http-token).
    #[arg(
        long,
        env = "SWARMKV_HTTP_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub http_token: Option<String>,
    /// How long to wait for a node that is starting: a refused connection, or a 503 saying
    /// nothing was done (the node is not part of a cluster yet, a partition has no leader),
    /// is retried this long (0: not at all), with one line on stderr when it is a terminal.
    /// Nothing that may have been done is ever sent twice.
    #[arg(
        long,
        visible_alias = "wait-ready",
        env = "SWARMKV_RETRY_FOR",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_wait
    )]
    pub retry_for: Duration,
}

/// A wait: `0`, or a duration as the TTLs take it (10, 10s, 500ms, 2m).
fn parse_wait(text: &str) -> anyhow::Result<Duration> {
    match text {
        "0" | "0s" | "0ms" => Ok(Duration::ZERO),
        _ => super::lease::parse_ttl(text),
    }
}

/// Prints the line of a client that starts to wait, on stderr.
fn print_notice(line: &str) {
    eprintln!("{line}");
}

/// The waiting line is for a person at a terminal; a script that reads stderr gets exactly
/// one `error: ...` line when a verb fails, as always.
fn notice() -> Option<fn(&str)> {
    use std::io::IsTerminal as _;
    std::io::stderr()
        .is_terminal()
        .then_some(print_notice as fn(&str))
}

/// The pause between two dials of a node that is starting.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What a verb needs from the node it talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Keys: the node must be part of a cluster (over libp2p the client waits until it is).
    Keys,
    /// Status and administration: any node, even one that has not joined a cluster yet.
    Admin,
}

/// A client, and the node it talks to (named in messages).
pub struct Target {
    pub client: Arc<Client>,
    /// `http://HOST:PORT` or the libp2p address.
    pub via: String,
}

impl TransportArgs {
    /// The client of the gateways `--endpoint` names.
    pub fn http_client(&self) -> Result<Client, CliError> {
        let options = HttpOptions {
            token: self.http_token.clone(),
            retry_for: self.retry_for,
            notice: notice(),
            ..HttpOptions::default()
        };
        Client::http_failover(self.endpoint.clone(), options)
            .map_err(|e| CliError::Usage(format!("--endpoint: {e}")))
    }

    /// Connects as the flags say. Over HTTP nothing is sent yet (the first request connects);
    /// over libp2p the nodes are dialled now, in order, until one answers.
    pub async fn connect(&self, need: Need) -> Result<Target, CliError> {
        if self.peer.is_empty() {
            let via = self
                .endpoint
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            return Ok(Target {
                client: Arc::new(self.http_client()?),
                via,
            });
        }
        // A missing or malformed key file is a local mistake: usage, not a failure of the
        // cluster. The network error names the file and the cause already.
        let psk = self
            .psk_file
            .as_deref()
            .map(swarmkv_net::load_psk)
            .transpose()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        // A node that is down or starting refuses the dial, or is not part of a cluster yet
        // (the client waits for that a while itself): the next address; after a round of all
        // of them, the first again while the failure says nothing was done, until
        // `retry_for` has passed.
        let until = Instant::now() + self.retry_for;
        let mut noticed = false;
        let mut round = self.peer.iter().cycle().enumerate();
        let (client, addr) = loop {
            let Some((attempt, addr)) = round.next() else {
                return Err(CliError::Usage("--peer: no address".into()));
            };
            let connected = match need {
                Need::Keys => Client::connect(addr.clone(), &self.cluster, psk).await,
                Need::Admin => Client::connect_admin(addr.clone(), &self.cluster, psk).await,
            };
            let round_done = (attempt + 1) % self.peer.len() == 0;
            match connected {
                Ok(client) => break (client, addr),
                // Connecting only dials and asks the node about itself: whatever failed, no
                // write was sent, so the next address may be tried.
                Err(e) if !round_done => {
                    log::debug!("cannot use {addr}, trying the next address: {e}");
                }
                Err(e) if e.is_retryable() && Instant::now() + RETRY_PAUSE < until => {
                    if let Some(print) = notice().filter(|_| !noticed) {
                        noticed = true;
                        print(&format!(
                            "waiting up to {} s for the cluster: {e}",
                            self.retry_for.as_secs_f32()
                        ));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(CliError::from_client(e, format!("cannot use {addr}"))),
            }
        };
        Ok(Target {
            client: Arc::new(client),
            via: addr.to_string(),
        })
    }
}

/// One key's record, whichever transport brought it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_rev: u64,
    pub mod_rev: u64,
    pub version: u64,
}

impl Record {
    pub fn from_kv(key: &[u8], r: &KvRecord) -> Record {
        Record {
            key: key.to_vec(),
            value: r.value.clone(),
            create_rev: r.create_rev,
            mod_rev: r.mod_rev,
            version: r.version,
        }
    }

    /// The record as the gateway writes it, so `--json` output is the same whichever
    /// transport was used: `{key, key_b64, value, value_b64, create_rev, mod_rev, version}`.
    pub fn json(&self) -> RecordJson {
        RecordJson {
            key: text(&self.key),
            key_b64: b64(&self.key),
            value: text(&self.value),
            value_b64: b64(&self.value),
            create_rev: self.create_rev,
            mod_rev: self.mod_rev,
            version: self.version,
        }
    }

    /// One line for a person: where the key is at and its value.
    pub fn describe(&self) -> String {
        format!(
            "mod_rev {}, version {}, value {}",
            self.mod_rev,
            self.version,
            show(&self.value)
        )
    }
}

/// What a compare-and-swap expects of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key was last modified at this revision.
    ModRev(u64),
    /// The key holds exactly these bytes.
    Value(Vec<u8>),
    /// The key does not exist.
    Absent,
}

impl Expect {
    fn compare(&self) -> Compare {
        match self {
            Expect::ModRev(rev) => Compare::ModRevision(*rev),
            Expect::Value(v) => Compare::Value(v.clone()),
            Expect::Absent => Compare::Absent,
        }
    }
}

/// How a compare-and-swap ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The comparison held; the new value is written at this revision.
    Swapped { rev: u64 },
    /// The comparison failed; nothing was written. The key as it is (`None`: absent).
    Failed { current: Option<Record> },
}

/// The keys `[start, end)` of a scan (`end = None`: to the end of the keyspace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl Target {
    /// The key's record, or `None` when it does not exist.
    pub async fn get(&self, key: &[u8], serializable: bool) -> Result<Option<Record>, CliError> {
        let consistency = if serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        self.client
            .get_with(key, consistency)
            .await
            .map(|r| r.map(|r| Record::from_kv(key, &r)))
            .map_err(|e| CliError::from_client(e, format!("get {}", show(key))))
    }

    /// Writes the key; the write's revision.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, CliError> {
        self.client
            .put(key, value)
            .await
            .map_err(|e| CliError::from_client(e, format!("put {}", show(key))))
    }

    /// Writes the key attached to `lease` (deleted when the lease ends); the revision.
    pub async fn put_with_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: u64,
    ) -> Result<u64, CliError> {
        self.client
            .put_with_lease(key, value, lease)
            .await
            .map_err(|e| CliError::from_client(e, format!("put {}", show(key))))
    }

    /// A lease request (grant, keep-alive, revoke, time-to-live); the lease after it.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseInfo, CliError> {
        let client = &self.client;
        let (r, doing): (Result<LeaseInfo, ClientError>, String) = match req {
            LeaseRequest::Grant { ttl_ms } => (
                client
                    .grant(std::time::Duration::from_millis(*ttl_ms))
                    .await,
                "lease grant".into(),
            ),
            LeaseRequest::KeepAlive { id } => (
                client.keep_alive_once(*id).await,
                format!("lease keep-alive {}", lease_hex(*id)),
            ),
            LeaseRequest::Revoke { id } => (
                client.revoke(*id).await.map(|()| LeaseInfo {
                    id: *id,
                    ttl_ms: 0,
                    remaining_ms: 0,
                }),
                format!("lease revoke {}", lease_hex(*id)),
            ),
            LeaseRequest::TimeToLive { id } => (
                client.time_to_live(*id).await,
                format!("lease ttl {}", lease_hex(*id)),
            ),
        };
        r.map_err(|e| CliError::from_client(e, doing))
    }

    /// Deletes the key; whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, CliError> {
        self.client
            .delete(key)
            .await
            .map_err(|e| CliError::from_client(e, format!("del {}", show(key))))
    }

    /// Writes `value` if the key is as `expect` says.
    pub async fn cas(
        &self,
        key: &[u8],
        expect: &Expect,
        value: &[u8],
    ) -> Result<CasOutcome, CliError> {
        let r = self
            .client
            .cas(key, expect.compare(), CasAction::Put(value.to_vec()))
            .await
            .map_err(|e| CliError::from_client(e, format!("cas {}", show(key))))?;
        Ok(if r.succeeded {
            CasOutcome::Swapped { rev: r.revision }
        } else {
            CasOutcome::Failed {
                current: r.current.map(|c| Record::from_kv(key, &c)),
            }
        })
    }

    /// The first `limit` records of `range` (0: all), in key order, read linearizably.
    pub async fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<Record>, CliError> {
        self.client
            .scan(
                &range.start,
                range.end.as_deref(),
                limit,
                Consistency::Linearizable,
            )
            .await
            .map(|records| records.iter().map(|(k, r)| Record::from_kv(k, r)).collect())
            .map_err(|e| CliError::from_client(e, "scan"))
    }

    /// As [`Target::scan`], read in one piece: the records, whether the limit cut them, and
    /// the watch cursor right after the read.
    pub async fn scan_with_cursor(
        &self,
        range: &KeyRange,
        limit: usize,
    ) -> Result<(Vec<Record>, bool, Cursor), CliError> {
        let scan = self
            .client
            .scan_with_cursor(
                &range.start,
                range.end.as_deref(),
                limit,
                Consistency::Linearizable,
            )
            .await
            .map_err(|e| CliError::from_client(e, "scan"))?;
        let records = scan
            .records
            .iter()
            .map(|(k, r)| Record::from_kv(k, r))
            .collect();
        Ok((records, scan.more, scan.cursor()))
    }

    /// The serving node's status: the report the table is drawn from, and the JSON `--json`
    /// prints (the gateway's `/v1/status` body for `--endpoint`, the libp2p report as it is
    /// for `--peer`).
    pub async fn status(&self) -> Result<StatusDocument, CliError> {
        let doing = match self.client.endpoint() {
            Some(endpoint) => format!("status of {endpoint}"),
            None => format!("{} did not report its status", self.via),
        };
        self.client
            .status_document()
            .await
            .map_err(|e| CliError::from_client(e, doing))
    }

    /// Asks the cluster to drain `node`.
    pub async fn decommission(&self, node: u64) -> Result<(), CliError> {
        self.client.decommission(node).await.map_err(|e| {
            let message = format!("decommission {}: {e}", node_hex(node));
            match e {
                DecommissionError::UnknownNode(_) => CliError::Rejected(message),
                DecommissionError::Unavailable(_) => CliError::Unavailable(message),
            }
        })
    }
}
