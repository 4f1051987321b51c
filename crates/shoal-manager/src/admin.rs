//! The dashboard's admin password (issue 21): one Argon2id hash in the replicated store, so any
//! manager can check a login and the password itself is never kept anywhere.

use crate::db::{self, Stored};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use shoal_api::ApiError;
use shoal_store::{Op, Store};

/// Store kind of the one admin record.
pub const KIND: &str = "dashboardadmin";
/// Shortest password accepted: NIST SP 800-63B's minimum for a chosen secret.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted: hashing is the cost, so a 4 MiB body cannot become a 4 MiB hash
/// input on every login.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The admin record: the password's PHC string (`$argon2id$v=19$m=...`), salt included.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredAdmin {
    /// Always "admin": there is one.
    pub id: String,
    /// The Argon2id hash in PHC format.
    pub hash: String,
    /// When it was set (RFC 3339), shown to nobody but kept for the audit of a change.
    pub set_at: String,
}

impl std::fmt::Debug for StoredAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAdmin")
            .field("hash", &"<redacted>")
            .field("set_at", &self.set_at)
            .finish()
    }
}

impl Stored for StoredAdmin {
    const KIND: &'static str = KIND;
    fn id(&self) -> String {
        self.id.clone()
    }
    fn name(&self) -> Option<String> {
        None
    }
    fn set_version(&mut self, _v: u64) {}
}

/// Checks a new password as a user sent it: the error names the field.
pub fn check_password(password: &str) -> Result<(), ApiError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid(format!(
            "Password: at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::invalid(format!(
            "Password: at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// Hashes a password with Argon2id (the crate's defaults: 19 MiB, 2 passes, OWASP's minimum)
/// and a fresh random salt. CPU-bound for tens of milliseconds: call it off the async threads.
pub fn hash(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing the password: {e}")))
}

/// Whether `password` matches the PHC string `phc`; false for a malformed hash too. CPU-bound
/// like [`hash`].
pub fn verify(phc: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Sets (or replaces) the admin password through raft.
pub async fn set_password(store: &Store, password: String) -> Result<(), ApiError> {
    check_password(&password)?;
    let phc = tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| ApiError::internal(format!("hashing the password: {e}")))??;
    let admin = StoredAdmin {
        id: "admin".into(),
        hash: phc,
        set_at: shoal_api::id::now(),
    };
    let op: Op = db::put(&admin, shoal_store::Expect::Any)?;
    store.write(vec![op]).await.map_err(db::store_error)?;
    Ok(())
}

/// The stored hash, if a password was ever set.
pub fn stored_hash(store: &Store) -> Option<String> {
    db::get::<StoredAdmin>(store, "admin").map(|v| v.obj.hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_password_and_never_contains_it() {
        let phc = hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(verify(&phc, "correct horse"));
        assert!(!verify(&phc, "correct horsE"));
        assert!(!verify("not a hash", "correct horse"));
        // Two hashes of one password differ (fresh salt each time).
        assert_ne!(phc, hash("correct horse").unwrap());
    }

    #[test]
    fn passwords_out_of_bounds_are_refused_with_the_field_named() {
        let short = check_password("seven77").unwrap_err();
        assert_eq!(short.status, 400);
        assert!(
            short.message.starts_with("Password: at least 8"),
            "{}",
            short.message
        );
        let long = check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).unwrap_err();
        assert!(
            long.message.starts_with("Password: at most"),
            "{}",
            long.message
        );
        assert!(check_password("eight888").is_ok());
        // Characters, not bytes: eight accented letters are enough.
        assert!(check_password("éééééééé").is_ok());
    }
}
