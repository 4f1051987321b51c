//! The error type of the floating-address module.

/// What went wrong, naming the operation and the address or link concerned.
#[derive(Debug, thiserror::Error)]
pub enum FloatingError {
    /// A netlink request (links, addresses) failed.
    #[error("netlink: {op} for {object}: {source}")]
    Netlink {
        /// The operation, e.g. "add floating address".
        op: &'static str,
        /// The address or link concerned.
        object: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// `nft` rejected the gate's transaction or could not be run.
    #[error("nftables: {op} {object}: {detail}")]
    Nft {
        /// The operation, e.g. "hold".
        op: &'static str,
        /// The address concerned, or the gate's tables.
        object: String,
        /// nft's message (stderr) or why it could not run.
        detail: String,
    },
    /// A local I/O operation (socket, send) failed.
    #[error("{op} {object}: {source}")]
    Io {
        /// The operation, e.g. "send gratuitous ARP".
        op: &'static str,
        /// The address or link concerned.
        object: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The request does not make sense (an address family the link cannot carry, a bad prefix).
    #[error("invalid {object}: {reason}")]
    Invalid {
        /// The address or link concerned.
        object: String,
        /// Why it was refused.
        reason: String,
    },
}

impl FloatingError {
    pub(crate) fn netlink(
        op: &'static str,
        object: impl std::fmt::Display,
        source: rtnetlink::Error,
    ) -> Self {
        FloatingError::Netlink {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn nft(
        op: &'static str,
        object: impl std::fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        FloatingError::Nft {
            op,
            object: object.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        object: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        FloatingError::Io {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn invalid(object: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        FloatingError::Invalid {
            object: object.to_string(),
            reason: reason.into(),
        }
    }
}
