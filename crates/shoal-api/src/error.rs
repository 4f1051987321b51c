//! Docker's error format: an HTTP status and `{"message": "..."}`.

use serde::Serialize;

/// An error answered to an API client, carrying the status Docker would use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Human-readable message, shown by the CLI after "Error response from daemon:".
    pub message: String,
}

/// The JSON body Docker sends with every error.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    /// The message.
    pub message: &'a str,
}

impl ApiError {
    /// A custom status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400: the request is invalid (swarmkit's InvalidArgument).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    /// 400 for a bad spec, worded as swarmkit's gRPC error the CLI users know.
    pub fn invalid_arg(message: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            format!("rpc error: code = InvalidArgument desc = {message}"),
        )
    }
    /// 400 for a request the cluster's state refuses, worded as swarmkit's gRPC error
    /// (`codes.FailedPrecondition`, which dockerd answers 400).
    pub fn failed_precondition(message: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            format!("rpc error: code = FailedPrecondition desc = {message}"),
        )
    }
    /// 404: no such object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    /// 409: the name is taken.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    /// 409 with Docker's words for a stale `version`. Docker answers it as 500 (swarmkit's
    /// `codes.Unknown`); it is the client's conflict, not a server fault, and clients read the
    /// message, so shoal keeps the words and answers 409 (issue 17: no input yields a 500).
    pub fn out_of_sequence() -> Self {
        Self::new(
            409,
            "rpc error: code = Unknown desc = update out of sequence",
        )
    }
    /// 500: an internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
    /// 503: the node cannot answer this (not in a swarm, not a manager).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
    /// 503 with Docker's text for a node outside any swarm.
    pub fn not_a_manager() -> Self {
        Self::unavailable("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.")
    }
    /// 503 with Docker's text for a worker asked what only managers answer.
    pub fn worker_not_a_manager() -> Self {
        Self::unavailable("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.")
    }
    /// The body Docker would send.
    pub fn body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            message: &self.message,
        })
        .unwrap_or_else(|_| "{\"message\":\"internal error\"}".to_string())
    }
}
