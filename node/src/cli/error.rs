//! Why a client verb failed, and the exit status that tells a script.
//!
//! The exit status is part of the CLI's contract, the same for both transports:
//! - 0: done;
//! - 1: the answer is "no" (a missing key, a failed compare-and-swap), the server refused the
//!   request (bad key, value too large), or anything else went wrong;
//! - 2: usage: the command line is wrong (clap's own errors exit 2 as well);
//! - 3: unavailable: no node could be reached or none could serve the request now (connection
//!   refused, 503, 504, no leader, timeout). Retrying later may succeed.
//! - 4: damaged: `swarmkv start` found the node's stored data damaged or incomplete (a corrupt
//!   record, writes lost from the log) and refuses to run on it; `swarmkv repair
//!   --from-peers` rebuilds the node. Retrying cannot help.
//!
//! A script can then retry on 3, stop on 2 and branch on 1 without parsing messages.

use swarmkv::core::ClientError;

/// A failed client verb. The message is printed after `error: ` on one line of stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The key does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// A compare-and-swap's comparison did not hold; nothing was written (exit 1).
    #[error("compare failed, nothing written: {0}")]
    CasFailed(String),
    /// The server understood the request and refused it: 4xx over HTTP, a rejected operation
    /// over libp2p (exit 1).
    #[error("{0}")]
    Rejected(String),
    /// Nothing reachable could serve the request now (exit 3).
    #[error("{0}")]
    Unavailable(String),
    /// The arguments are invalid, found before anything was sent (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The node's stored data is damaged or incomplete; the node must be rebuilt from its
    /// peers, not started on it (exit 4).
    #[error("{0}")]
    Damaged(String),
    /// Anything else: a server error, an answer that cannot be understood, stdout closed
    /// (exit 1). `{:#}` prints the whole context chain on one line.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Exit status for not found, CAS failed, rejected and other failures.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (as clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the cluster cannot be reached or cannot serve now.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit status when a node's stored data is damaged (start refuses; repair rebuilds it).
pub const EXIT_DAMAGED: u8 = 4;

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotFound(_)
            | CliError::CasFailed(_)
            | CliError::Rejected(_)
            | CliError::Other(_) => EXIT_FAILED,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Unavailable(_) => EXIT_UNAVAILABLE,
            CliError::Damaged(_) => EXIT_DAMAGED,
        }
    }

    /// An error of a command that works with `anyhow` (`start`): a [`CliError`] it carries
    /// keeps its exit status, anything else is [`CliError::Other`].
    pub fn from_anyhow(e: anyhow::Error) -> CliError {
        match e.downcast::<CliError>() {
            Ok(cli) => cli,
            Err(e) => CliError::Other(e),
        }
    }

    /// A client's error (over either transport: the HTTP transport gives the same
    /// [`ClientError`]s), with what was being done (`get "k"`) in front. Everything that means
    /// "no leader / no path to it right now" is 3, including the ambiguous failures (timeout,
    /// leader change, lost connection), which the gateway answers with 503/504; a refusal
    /// (a 4xx over HTTP) is 1.
    pub fn from_client(e: ClientError, doing: impl std::fmt::Display) -> CliError {
        let message = format!("{doing}: {e}");
        match e {
            ClientError::NotLeader { .. }
            | ClientError::Unavailable { .. }
            | ClientError::ProposalDropped
            | ClientError::Timeout
            | ClientError::LeaderChanged
            | ClientError::Disconnected(_)
            | ClientError::Busy { .. } => CliError::Unavailable(message),
            ClientError::LeaseNotFound(_)
            | ClientError::Rejected(swarmkv_store::KvError::LeaseNotFound { .. }) => {
                CliError::NotFound(message)
            }
            ClientError::Rejected(_)
            | ClientError::BadRequest(_)
            | ClientError::NotLeading { .. } => CliError::Rejected(message),
            ClientError::Storage(_) => CliError::Other(anyhow::anyhow!(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmkv_store::KvError;

    #[test]
    fn every_error_has_the_exit_status_of_the_contract() {
        let cases = [
            (CliError::NotFound("k".into()), EXIT_FAILED),
            (CliError::CasFailed("absent".into()), EXIT_FAILED),
            (CliError::Rejected("400".into()), EXIT_FAILED),
            (CliError::Other(anyhow::anyhow!("500")), EXIT_FAILED),
            (CliError::Usage("bad".into()), EXIT_USAGE),
            (CliError::Unavailable("refused".into()), EXIT_UNAVAILABLE),
            (CliError::Damaged("lost writes".into()), EXIT_DAMAGED),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }

    #[test]
    fn client_errors_split_into_unavailable_and_rejected_like_the_gateway() {
        let unavailable = [
            ClientError::NotLeader { leader: Some(3) },
            ClientError::Unavailable { reason: "x".into() },
            ClientError::ProposalDropped,
            ClientError::Timeout,
            ClientError::LeaderChanged,
            ClientError::Disconnected("dialing: refused".into()),
        ];
        for e in unavailable {
            let shown = e.to_string();
            let cli = CliError::from_client(e, "get \"k\"");
            assert_eq!(cli.exit_code(), EXIT_UNAVAILABLE, "{cli:?}");
            assert_eq!(cli.to_string(), format!("get \"k\": {shown}"));
        }
        let failed = [
            ClientError::Rejected(KvError::EmptyKey),
            ClientError::Rejected(KvError::ValueTooLarge { len: 2, max: 1 }),
            ClientError::BadRequest("no such partition".into()),
            ClientError::Storage("disk".into()),
            ClientError::LeaseNotFound(7),
        ];
        for e in failed {
            let cli = CliError::from_client(e, "put");
            assert_eq!(cli.exit_code(), EXIT_FAILED, "{cli:?}");
        }
    }

    #[test]
    fn a_damaged_store_keeps_its_exit_status_through_anyhow() {
        let e = anyhow::Error::new(CliError::Damaged("the store lost writes".into()));
        let cli = CliError::from_anyhow(e);
        assert_eq!(cli.exit_code(), EXIT_DAMAGED);
        assert_eq!(cli.to_string(), "the store lost writes");
        let other = CliError::from_anyhow(anyhow::anyhow!("port taken"));
        assert_eq!(other.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn other_errors_print_their_whole_context_chain() {
        let e =
            CliError::from(anyhow::anyhow!("No such file or directory").context("cannot read /x"));
        assert_eq!(e.to_string(), "cannot read /x: No such file or directory");
    }
}
