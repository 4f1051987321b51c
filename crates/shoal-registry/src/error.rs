//! Errors as the distribution spec writes them: `{"errors":[{"code","message","detail"}]}`
//! with the spec's codes and the statuses its endpoints name.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// The spec's error codes (its table "Error Codes"), plus `UNKNOWN` for 5xx answers, which the
/// spec leaves free and clients treat as `UNKNOWN` anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The blob is neither on this node nor known to the cluster.
    BlobUnknown,
    /// The upload failed and cannot proceed (a chunk out of order, the disk full).
    BlobUploadInvalid,
    /// No upload session of that ID for that repository.
    BlobUploadUnknown,
    /// A digest that is malformed, of an unsupported algorithm, or does not match the content.
    DigestInvalid,
    /// A manifest references a blob or manifest the registry does not know.
    ManifestBlobUnknown,
    /// A manifest that is not valid JSON of a supported type, or too large.
    ManifestInvalid,
    /// No manifest for that tag or digest.
    ManifestUnknown,
    /// A repository name outside the spec's grammar.
    NameInvalid,
    /// A repository with no manifests.
    NameUnknown,
    /// A chunk whose length does not match its `Content-Range`.
    SizeInvalid,
    /// An endpoint, method or parameter this registry does not serve.
    Unsupported,
    /// A failure of the registry itself (5xx).
    Unknown,
}

impl ErrorCode {
    /// The code as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

/// One entry of the `errors` array.
#[derive(Debug, Clone, Serialize)]
struct Entry {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

/// An error answer: a status, one or more spec errors, and any headers the spec asks for
/// alongside (`Range` on a 416).
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    errors: Vec<Entry>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with one entry.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![Entry {
                code: code.as_str(),
                message: message.into(),
                detail: None,
            }],
            headers: Vec::new(),
        }
    }

    /// Adds `detail` to the last entry.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        if let Some(e) = self.errors.last_mut() {
            e.detail = Some(detail);
        }
        self
    }

    /// Adds another entry (several unknown blobs of one manifest).
    pub fn and(
        mut self,
        code: ErrorCode,
        message: impl Into<String>,
        detail: serde_json::Value,
    ) -> Self {
        self.errors.push(Entry {
            code: code.as_str(),
            message: message.into(),
            detail: Some(detail),
        });
        self
    }

    /// Adds a header to the answer.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The codes it carries, first first.
    pub fn codes(&self) -> Vec<&'static str> {
        self.errors.iter().map(|e| e.code).collect()
    }

    /// A 5xx for a failure of the registry itself; the cause is logged, not sent.
    pub fn internal(what: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::warn!("registry: {what}: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unknown,
            format!("{what}: {err}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            errors: &'a [Entry],
        }
        let body = serde_json::to_vec(&Body {
            errors: &self.errors,
        })
        .unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in self.headers {
            h.insert(k, v);
        }
        resp
    }
}
